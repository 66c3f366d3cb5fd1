"""A real redis-server on 127.0.0.1 (random free port, temporary directory, append-only file), real
``engbot worker`` processes, and a TCP proxy that makes the network to Redis fail, for the Redis queue tests and
the Redis benchmark."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """redis-server with ``appendonly yes`` and ``appendfsync always``, so a kill -9 loses no acknowledged write
    and a restart on the same port and directory brings every stream back."""

    def __init__(self, directory: Path, port: int | None = None, password: str | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
                "--logfile", str(self.directory / "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._answers():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start: {(self.directory / 'redis.log').read_text()[-2000:]}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                if self.password:
                    s.sendall(f"AUTH {self.password}\r\n".encode())
                    s.recv(64)
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """kill -9, like a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class WorkerProcess:
    """``engbot worker`` in its own session (so a kill -9 takes its replica process with it, like a host dying)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT),
                   "HOME": str(log_path.parent), "HTTP_PORT": "0", "LOG_LEVEL": "info", **env}
        self._log = log_path.open("w")
        self.process = subprocess.Popen([sys.executable, "-m", "engbot", "worker"], env=environ,
                                        cwd=log_path.parent, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "engine ready" in self.log:
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"engbot worker exited with {self.process.returncode}:\n{self.log[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"engbot worker not ready after {timeout} s:\n{self.log[-3000:]}")

    def kill_host(self) -> None:
        """kill -9 of the worker and its replica processes."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        return self.process.returncode


class FaultyRedisProxy:
    """A TCP proxy on 127.0.0.1 in front of a redis-server, to make the network between a client and Redis fail
    for real.

    - Lost replies: for a command holding ``trigger`` (a script's SHA, say), while ``drops`` remain, the proxy lets
      Redis run the command, waits for its reply, then closes the client's connection instead of forwarding it: the
      client cannot tell whether the command ran. A NOSCRIPT reply (the command did not run) passes through. With
      ``hold``, the lost reply's connection stays open, unanswered, until ``hold`` is set.
    - A partition: ``pause()`` stops forwarding in both directions (connections stay open, commands wait unsent);
      ``resume()`` forwards what waited.
    """

    def __init__(self, upstream_port: int, trigger: bytes = b"", drops: int = 0,
                 hold: asyncio.Event | None = None) -> None:
        self.upstream_port = upstream_port
        self.trigger = trigger
        self.drops = drops
        self.hold = hold
        self.dropped = 0  # replies lost so far
        self.port = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Close the listening socket and every connection (closing, not cancelling, the connection tasks: asyncio
        reports a cancelled client_connected_cb task as an error)."""
        if self._server is not None:
            self._server.close()
        self._flowing.set()
        for writer in list(self._writers):
            writer.close()
        if self._connections:
            await asyncio.wait(self._connections, timeout=5)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._relay(client_r, client_w)
        finally:
            self._connections.discard(task)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self._writers.add(client_w)
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()
            self._writers.discard(client_w)
            return
        self._writers.add(up_w)
        drop_reply = False

        async def commands() -> None:
            nonlocal drop_reply
            while data := await client_r.read(65536):
                await self._flowing.wait()
                if self.trigger and self.trigger in data and self.drops > 0:
                    self.drops -= 1
                    drop_reply = True  # set before Redis can answer: the next reply on this connection is its
                up_w.write(data)
                await up_w.drain()

        async def replies() -> None:
            nonlocal drop_reply
            while data := await up_r.read(65536):
                await self._flowing.wait()
                if drop_reply and data.startswith(b"-NOSCRIPT"):
                    drop_reply = False
                    self.drops += 1
                elif drop_reply:  # Redis ran the command: lose its reply, and the connection with it
                    if self.hold is not None:
                        await self.hold.wait()
                    self.dropped += 1
                    return
                client_w.write(data)
                await client_w.drain()

        pumps = [asyncio.create_task(commands()), asyncio.create_task(replies())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for writer in (client_w, up_w):
                self._writers.discard(writer)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
