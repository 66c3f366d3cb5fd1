"""llama-cpp-python's own OpenAI-compatible server (``python -m llama_cpp.server``, its ``server`` extra) on
127.0.0.1 in a process of its own: a real server for the remote backend's tests and benchmark, with the bundled
model and no extra native build.

    async with LlamaCppServer(model_path, api_key="sk-test") as server:   # OPENAI_BASE_URL=server.url
        ...
        await server.kill()          # a crash mid-answer
        await server.start()         # back on the same port

It answers one request at a time (the rest wait inside it; started with ``--interrupt_requests False``, since by
default a new request cuts off the answer being streamed), ignores the request's model name, prints
"Disconnected from client" when a client closes a stream (``log``), and reports a prompt longer than its context
as 400 ``context_length_exceeded``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ALIAS = "smollm2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaCppServer:
    """See the module docstring."""

    def __init__(self, model: Path, *, api_key: str | None = None, alias: str = ALIAS, n_ctx: int = 2048,
                 threads: int = 1, port: int | None = None) -> None:
        self.model, self.api_key, self.alias, self.n_ctx, self.threads = model, api_key, alias, n_ctx, threads
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="llama-cpp-server-", suffix=".log")[1])

    def __repr__(self) -> str:
        return f"<LlamaCppServer {self.url} pid={self.proc.pid if self.proc else None}>"

    @property
    def url(self) -> str:
        """OPENAI_BASE_URL."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def __aenter__(self) -> LlamaCppServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        self.log_path.unlink(missing_ok=True)

    async def start(self, timeout_s: float = 90.0) -> None:
        await asyncio.to_thread(self.start_sync, timeout_s)

    def start_sync(self, timeout_s: float = 90.0) -> None:
        """Start the process and wait until it lists its model (also usable outside an event loop)."""
        args = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--model_alias", self.alias,
                "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
                "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads), "--verbose", "False",
                # by default a new request ends the answer being streamed: here they wait their turn
                "--interrupt_requests", "False"]
        if self.api_key:
            args += ["--api_key", self.api_key]
        with self.log_path.open("ab") as sink:
            self.proc = subprocess.Popen(args, stdout=sink, stderr=sink, stdin=subprocess.DEVNULL,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}:\n{self.log[-2000:]}")
            if self._ready():
                self._warm_up()
                return
            time.sleep(0.2)
        self.stop_sync()
        raise RuntimeError(f"llama_cpp.server did not answer in {timeout_s:.0f} s:\n{self.log[-2000:]}")

    def _warm_up(self) -> None:
        """One short answer: the first one after a load can differ from all later ones in a near tie (greedy
        answers are compared across requests in the tests)."""
        body = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}).encode()
        request = urllib.request.Request(f"{self.url}/chat/completions", data=body, headers={
            "Authorization": f"Bearer {self.api_key or 'x'}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()

    def _ready(self) -> bool:
        request = urllib.request.Request(f"{self.url}/models",
                                         headers={"Authorization": f"Bearer {self.api_key or 'x'}"})
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    async def kill(self) -> None:
        """SIGKILL: the server dies as in a crash, connections cut mid-answer."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(self.proc.wait)

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_sync)

    def stop_sync(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
