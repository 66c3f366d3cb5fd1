"""``engbot doctor``: say what engbot sees and whether it works, before anyone mentions the bot."""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from bots.registry import PLATFORMS
from engbot.doctor_channel import describe_channels
from engbot.run import web_access
from engbot.settings import RunSettings, check_settings, is_setting
from engine.config import EngineSettings, mask
from engine.errors import ConfigError, ModelFileError
from engine.local import Engine
from engine.modelfile import inspect_model
from engine.models.fleet import FleetSettings, env_prefix
from engine.types import Done, GenParams, Job


def _line(label: str, value: object) -> None:
    print(f"  {label:<26} {value}")


def doctor(environ: Mapping[str, str]) -> int:
    """Print the checks; 0 when the model answers, 2 for bad settings or model files, 1 for other failures."""
    from engine.cpu import cpu_flags, pick_llm_lib

    print(f"engbot doctor (Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs)")
    print("settings from the environment and .env:")
    for name in sorted(k for k in environ if is_setting(k)):
        _line(name, mask(name, environ[name]))
    flags = cpu_flags()
    print("CPU:")
    _line("instruction sets", " ".join(f for f in ("avx", "avx2", "avx512f", "fma", "f16c") if f in flags) or "none")
    checked, errors = check_settings(environ, check_model=False)  # what `engbot run` checks, every part of it
    if checked is None:
        for error in errors:
            print(f"FAIL: {error}", file=sys.stderr)
        return 2
    settings = checked.engine
    _platforms(checked)
    _line("channels", describe_channels(checked.channels))
    if settings.model_backend == "openai":  # the model is a server's: its URL, key and model, and a test answer
        from engbot.doctor_remote import doctor_remote

        return doctor_remote(environ, settings)
    _line("LLM_LIB", f"{settings.llm_lib} -> {pick_llm_lib(settings.llm_lib)} (ctransformers variant)")
    if checked.fleet is not None:  # several models (MODELS): each one checked as a single model is
        return _models(environ)
    return _model(settings, lambda: EngineSettings.from_environ(environ))


def _models(environ: Mapping[str, str]) -> int:
    try:
        fleet = FleetSettings.from_environ(environ)  # with each model file read now
    except ConfigError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 2
    assert fleet is not None
    print(f"{len(fleet.models)} models (MODELS):")
    _line("MAX_LOADED_MODELS", f"{fleet.max_loaded}: the least recently used idle model makes room" if fleet.limited
          else "every model stays loaded")
    codes = []
    for spec in fleet.models:
        default = " (DEFAULT_MODEL)" if spec.name == fleet.default else ""
        print(f"model {spec.name}{default}; its own settings: {env_prefix(spec.name)}<SETTING>")
        codes.append(_model(spec.settings, lambda spec=spec: spec.settings))  # type: ignore[misc]
    return max(codes)


def _model(settings: EngineSettings, checked: Callable[[], EngineSettings]) -> int:
    """The model file, the engine's layout (``checked``: the settings checked against the file), and a test
    answer: 0, 2 for a file or setting that cannot be used, 1 if it does not answer."""
    try:
        info = inspect_model(settings.model_path)
        settings = checked()
    except (ConfigError, ModelFileError) as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 2
    print("model file:")
    _line("path", info.path)
    _line("format", f"{info.format} ({info.detail})" if info.detail else info.format)
    _line("size", f"{info.size / 2**20:.1f} MiB")
    _line("architecture", info.architecture or "unknown")
    _line("trained context", info.context_length or "unknown")
    first = (info.chat_template or "").strip().splitlines()
    _line("chat template", f"in the file ({len(info.chat_template or '')} chars): {first[0][:60]}..."
          if first else "none in the file")
    print("engine:")
    _line("backend", settings.model_backend)
    _line("layout", settings.layout)
    _line("context", settings.context_length or "the model's own")
    _line("system prompt", repr(settings.system_prompt))
    return asyncio.run(_generate(replace(settings, num_workers=1, load_on_fly=False)))


def _platforms(settings: RunSettings) -> None:
    """Where `engbot run` would answer: each chat platform, the playground, and the queue."""
    print("where `engbot run` answers:")
    configured = {chat.name for chat, _ in settings.platforms}
    for chat in PLATFORMS:
        _line(chat.name, "configured" if chat.name in configured else f"not configured ({chat.setup})")
    access = web_access(settings, playground=not configured)
    url = settings.app.local_url
    if settings.web.token is not None:
        _line("playground", f"{url} for whoever gives PLAYGROUND_TOKEN ({url}#token=<PLAYGROUND_TOKEN>)")
    elif access.open_without_token:
        _line("playground", f"{url}: no chat platform is configured, so the bot answers there (this machine only)")
    else:
        _line("playground", f"status page only at {url}: {access.locked}")
    queue = settings.queue
    _line("queue", "in this process" if queue.backend == "memory" else
          f"Redis at {queue.redis_url_masked} (this process loads no model; `engbot worker` hosts answer)")


async def _generate(settings: EngineSettings) -> int:
    started = time.monotonic()
    try:
        async with Engine(settings) as engine:
            loaded = time.monotonic() - started
            assert engine.model_info is not None
            _line("loaded", f"in {loaded:.2f} s, context {engine.model_info.n_ctx}, {engine.model_info.detail}")
            params = GenParams(max_new_tokens=16, temperature=0.0)
            result = await engine.submit_nowait(Job.ask("What is the capital of France?", params=params)).result()
    except ModelFileError as exc:
        print(f"FAIL: the model could not be loaded: {exc}", file=sys.stderr)
        return 2
    if not isinstance(result, Done):
        print(f"FAIL: generation failed: {result.reason}", file=sys.stderr)
        return 1
    speed = result.completion_tokens / max(1e-9, result.duration_s - result.time_to_first_token_s)
    _line("test answer", repr(result.text[:120]))
    _line("speed", f"{result.completion_tokens} tokens, first after {result.time_to_first_token_s:.2f} s, "
          f"then {speed:.0f} tok/s")
    if not result.text.strip():
        print("FAIL: the model answered with empty text", file=sys.stderr)
        return 1
    print("OK")
    return 0
