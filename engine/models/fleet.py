"""Several models in one engine: which ones (MODELS), which answers by default (DEFAULT_MODEL), how many may be in
memory at once (MAX_LOADED_MODELS), and each model's own engine settings.

    MODELS=fast=smollm2-135m-instruct.q4_1,code=Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF:q4_k_m
    DEFAULT_MODEL=fast                  # (default: the first listed)
    MODELS_CODE_NUM_WORKERS=1           # any engine setting, for one model: MODELS_<NAME>_<SETTING>
    MODELS_CODE_PARALLEL_SLOTS=4
    MAX_LOADED_MODELS=1                 # 0: all of them, loaded at start

Each model is a path, a short name or a pulled reference, as MODEL_PATH takes (``engbot models``). A model's
settings are the global ones with its ``MODELS_<NAME>_...`` overrides, read and checked by the same code as a
single model's, so a bad value is refused naming the variable that holds it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from engine.config import EngineSettings, Env
from engine.errors import ConfigError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
PREFIX = "MODELS_"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One named model and the settings of its engine (its own replicas and slots)."""

    name: str
    settings: EngineSettings


@dataclass(frozen=True, slots=True)
class FleetSettings:
    """MODELS, DEFAULT_MODEL, MAX_LOADED_MODELS. ``max_loaded`` 0: no limit (every model loads at start)."""

    models: tuple[ModelSpec, ...]
    default: str
    max_loaded: int = 0

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    @property
    def limited(self) -> bool:
        """Fewer models may be in memory than there are: they load when asked for, the least recently used
        idle one making room."""
        return 0 < self.max_loaded < len(self.models)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], *, check_model: bool = True) -> FleetSettings | None:
        """None when MODELS is not set (one model: MODEL_PATH). Raises ``ConfigError`` naming the variable;
        ``check_model``: read each model file too (its format, architecture, template)."""
        env = Env(environ)
        raw = env.raw("MODELS")
        if not raw:
            return None
        if env.raw("MODEL_PATH"):
            raise ConfigError("MODEL_PATH", env.raw("MODEL_PATH"), "set MODEL_PATH or MODELS, not both (with MODELS, "
                              "name every model there, e.g. MODELS=fast=<model>,code=<model>)")
        entries = parse_models(raw)
        models = tuple(ModelSpec(name, _settings(environ, name, ref, check_model)) for name, ref in entries)
        names = tuple(name for name, _ in entries)
        default = env.raw("DEFAULT_MODEL") or names[0]
        if default not in names:
            raise ConfigError("DEFAULT_MODEL", default, f"expected one of the names in MODELS: {', '.join(names)}")
        max_loaded = env.int("MAX_LOADED_MODELS", 0, lo=0, hi=64)
        return cls(models, default, max_loaded)


def parse_models(raw: str) -> list[tuple[str, str]]:
    """``fast=<model>,code=<model>`` to (name, model) pairs. Raises ``ConfigError`` naming MODELS."""
    out: list[tuple[str, str]] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        name, sep, ref = item.partition("=")
        name, ref = name.strip().lower(), ref.strip()
        if not sep or not ref:
            raise ConfigError("MODELS", raw, f"expected name=model pairs separated by commas, e.g. "
                              f"fast=smollm2-135m-instruct.q4_1,code=/models/coder.gguf; {item!r} has no model")
        if not NAME_RE.match(name):
            raise ConfigError("MODELS", raw, f"{name!r} is not a model name: lower-case letters, digits, - and _ "
                              "(at most 32)")
        if any(name == n for n, _ in out):
            raise ConfigError("MODELS", raw, f"the name {name!r} is given twice")
        out.append((name, ref))
    if not out:
        raise ConfigError("MODELS", raw, "names no model")
    return out


def env_prefix(name: str) -> str:
    """``MODELS_CODE_`` for ``code``: where a model's own settings are (``-`` becomes ``_``)."""
    return f"{PREFIX}{name.upper().replace('-', '_')}_"


def model_environ(environ: Mapping[str, str], name: str, ref: str) -> dict[str, str]:
    """The environment one model's engine reads: the global settings, MODEL_PATH = its model, then its own
    ``MODELS_<NAME>_<SETTING>`` values over them."""
    prefix = env_prefix(name)
    out = {k: v for k, v in environ.items() if k != "MODELS"}
    out["MODEL_PATH"] = ref
    for key, value in environ.items():
        if key.startswith(prefix) and key[len(prefix):]:
            out[key[len(prefix):]] = value
    return out


def _settings(environ: Mapping[str, str], name: str, ref: str, check_model: bool) -> EngineSettings:
    own = model_environ(environ, name, ref)
    try:
        return EngineSettings.from_environ(own, check_model=check_model)
    except ConfigError as exc:
        prefix = env_prefix(name)
        if exc.name == "MODEL_PATH":  # the model named in MODELS
            raise ConfigError("MODELS", f"{name}={ref}", exc.allowed) from None
        if prefix + exc.name in environ:
            raise ConfigError(prefix + exc.name, exc.value, exc.allowed) from None
        raise ConfigError(exc.name, exc.value, f"{exc.allowed} (for the model {name!r} of MODELS; "
                          f"{prefix}{exc.name} sets it for that model alone)") from None
