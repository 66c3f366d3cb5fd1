"""``engbot doctor`` with MODEL_BACKEND=openai: the model server's URL, key and model, then a test answer."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping

from engine.config import EngineSettings, mask
from engine.errors import ConfigError, ModelServerUnavailable
from engine.remote import RemoteSettings, RemoteSubmitter
from engine.types import Done, GenParams, Job


def _line(label: str, value: object) -> None:
    print(f"  {label:<22} {value}")


def doctor_remote(environ: Mapping[str, str], settings: EngineSettings) -> int:
    """0 when the server answers the test question; 2 for a setting to fix (named); 1 when the server is not
    reachable or fails."""
    try:
        remote = RemoteSettings.from_environ(environ)
    except ConfigError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 2
    print("model server (MODEL_BACKEND=openai):")
    _line("OPENAI_BASE_URL", remote.base_url_masked)
    _line("OPENAI_API_KEY", mask("OPENAI_API_KEY", remote.api_key) if remote.api_key else "(none)")
    _line("REMOTE_MAX_INFLIGHT", remote.max_inflight)
    return asyncio.run(_answer(settings, remote))


async def _answer(settings: EngineSettings, remote: RemoteSettings) -> int:
    submitter = RemoteSubmitter(settings, remote)
    try:
        await submitter.start()
    except ConfigError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 2
    except ModelServerUnavailable as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    try:
        server = submitter.server
        assert server is not None
        _line("serves", ", ".join(server.served) or "(no list: GET /models answered 404)")
        _line("model", server.model)
        if server.note:
            _line("note", server.note)
        params = GenParams(max_new_tokens=16, temperature=0.0)
        result = await submitter.submit_nowait(Job.ask("What is the capital of France?", params=params)).result()
    finally:
        await submitter.stop(grace_s=0)
    if not isinstance(result, Done):
        print(f"FAIL: the test question failed: {result.kind}: the model server {result.reason}", file=sys.stderr)
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
