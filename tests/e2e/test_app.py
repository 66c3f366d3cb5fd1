"""``engbot run``: HTTP endpoints while it runs, and a graceful shutdown with an answer being generated.

The real engine on the default model; the chat platform is tests/fakes/platform.py (no network). The last test
runs the real command in a subprocess and sends it a real SIGTERM, as `docker stop` does.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from engbot.run import serve_until_signal
from engbot.settings import AppSettings
from engine.api import SHUTDOWN_REASON
from engine.errors import EngineClosed
from engine.local import Engine
from engine.types import Done, Failed, Job
from tests.conftest import make_settings
from tests.fakes.platform import FakePlatform

ROOT = Path(__file__).resolve().parents[2]
# A question whose greedy answer on SmolLM2 runs past 1500 tokens (in the plain portable build and in the image's
# CPU-variant build alike; greedy text differs between builds), so it is still generating when the stop comes.
LONG_QUESTION = "Write a long essay about the history of Rome, with many details."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def app_settings(port: int) -> AppSettings:
    return AppSettings(http_host="127.0.0.1", http_port=port, log_level="info", log_format="text")


async def get(http: aiohttp.ClientSession, port: int, path: str) -> tuple[int, str]:
    async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
        return resp.status, await resp.text()


async def test_stop_ends_a_running_answer_with_shutdown_after_the_grace() -> None:
    engine = Engine(make_settings(NUM_WORKERS=1, NUM_THREADS=1, TEMPERATURE=0, MAX_NEW_TOKENS=1500,
                                  SHUTDOWN_GRACE_S=0.5))
    adapter = FakePlatform(engine, LONG_QUESTION)
    port, stop = free_port(), asyncio.Event()
    app = asyncio.create_task(serve_until_signal(engine, [adapter], app_settings(port), stop))
    await asyncio.wait_for(adapter.answering.wait(), 60)

    async with aiohttp.ClientSession() as http:
        status, body = await get(http, port, "/healthz")
        assert status == 200 and '"ok"' in body
        async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
            ready = await resp.json()
            assert resp.status == 200
        assert ready["checks"] == {"engine": True, "model": True, "fake": True} and ready["running"] == 1
        status, metrics = await get(http, port, "/metrics")
        assert status == 200 and "engbot_workers_busy 1.0" in metrics

        assert adapter.handle is not None and not adapter.handle.done
        stop.set()
        started = time.monotonic()
        assert await asyncio.wait_for(app, 30) == 0
        elapsed = time.monotonic() - started

        final = adapter.final
        assert isinstance(final, Failed) and final.kind == "shutdown", final
        assert final.reason == SHUTDOWN_REASON and final.partial.strip()
        assert 0.5 <= elapsed < 10, elapsed
        assert adapter.calls == ["start", "stop_intake", "close"]
        assert not any(r.alive for r in engine.replicas)
        with pytest.raises(aiohttp.ClientConnectionError):  # the endpoints are gone with the process' work
            await get(http, port, "/healthz")


async def test_stop_lets_a_running_answer_finish_within_the_grace() -> None:
    engine = Engine(make_settings(NUM_WORKERS=1, NUM_THREADS=1, TEMPERATURE=0, MAX_NEW_TOKENS=200,
                                  SHUTDOWN_GRACE_S=30))
    adapter = FakePlatform(engine, LONG_QUESTION)
    port, stop = free_port(), asyncio.Event()
    app = asyncio.create_task(serve_until_signal(engine, [adapter], app_settings(port), stop))
    await asyncio.wait_for(adapter.answering.wait(), 60)
    async with aiohttp.ClientSession() as http:
        stop.set()
        # draining: still alive, no longer ready, no new jobs; the running answer goes on
        for _ in range(100):
            if not engine.accepting:
                break
            await asyncio.sleep(0.01)
        assert adapter.handle is not None and not adapter.handle.done
        assert (await get(http, port, "/healthz"))[0] == 200
        status, body = await get(http, port, "/readyz")
        assert status == 503 and '"engine": false' in body
        with pytest.raises(EngineClosed):
            engine.submit_nowait(Job.ask("Hi"))
        assert await asyncio.wait_for(app, 60) == 0
    final = adapter.final
    assert isinstance(final, Done) and final.completion_tokens > 0, final
    assert adapter.calls == ["start", "stop_intake", "close"]


def test_engbot_run_exits_0_on_sigterm_with_an_answer_running(tmp_path: Path) -> None:
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
           "HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(port), "NUM_WORKERS": "1", "NUM_THREADS": "1",
           "TEMPERATURE": "0", "MAX_NEW_TOKENS": "1500", "SHUTDOWN_GRACE_S": "1", "LOG_LEVEL": "INFO",
           "FAKE_PLATFORM_QUESTION": LONG_QUESTION}
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.platform", "run"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        busy = False
        while time.monotonic() < deadline and proc.poll() is None and not busy:
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
                    assert resp.status == 200
                with urllib.request.urlopen(f"{url}/metrics", timeout=2) as resp:
                    busy = "engbot_workers_busy 1.0" in resp.read().decode()
            except (urllib.error.URLError, ConnectionError):
                pass
            if not busy:
                time.sleep(0.05)
        assert busy, "the answer never started"
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
            assert resp.status == 200

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "answer ended: Failed(shutdown)" in stderr, stderr
    assert "shutting down" in stderr and stderr.rstrip().endswith("stopped"), stderr
    assert elapsed < 1 + 10, elapsed
