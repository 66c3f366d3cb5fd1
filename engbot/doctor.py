"""``engbot doctor``: say what engbot sees and whether it works, before anyone mentions the bot."""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import time
from collections.abc import Mapping
from dataclasses import replace

from bots.registry import PLATFORMS
from engbot.doctor_channel import describe_channels
from engbot.run import web_access
from engbot.settings import RunSettings, check_settings, is_setting
from engine.config import EngineSettings, mask
from engine.errors import ConfigError, ModelFileError
from engine.local import Engine
from engine.modelfile import inspect_model
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
    _line("LLM_LIB", f"{settings.llm_lib} -> {pick_llm_lib(settings.llm_lib)} (ctransformers variant)")
    _platforms(checked)
    try:
        info = inspect_model(settings.model_path)
        settings = EngineSettings.from_environ(environ)
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
    _line("channels", describe_channels(checked.channels))
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
