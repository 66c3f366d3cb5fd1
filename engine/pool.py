"""Parent-side handles of the replica processes: start, feed one job, watch for death, stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import time
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from typing import Any

from engine.backends.base import ModelInfo
from engine.config import EngineSettings
from engine.errors import ModelFileError
from engine.replica import replica_main
from engine.types import GenParams, Turn

log = logging.getLogger("engbot.pool")

KILL_GRACE_S = 10.0  # a replica that overruns its own timeout by this much is killed (stuck in native code)
CANCEL_GRACE_S = 5.0  # a replica that ignores a cancel this long is killed
_SPAWN = mp.get_context("spawn")


class Replica:
    """One model process. At most one job at a time; the caller (a worker task) guarantees that."""

    def __init__(self, index: int, settings: EngineSettings) -> None:
        self.index = index
        self.settings = settings
        self.process: Any = None
        self.conn: Connection | None = None
        self.info: ModelInfo | None = None
        self.started_at = 0.0
        self.exitcode: int | None = None  # of the last process, once it ended
        self._cancel: Any = _SPAWN.RawValue("q", 0)
        self._cancel_requested_at: float | None = None
        self._inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def __repr__(self) -> str:
        pid = self.process.pid if self.process else None
        return f"<Replica {self.index} pid={pid} alive={self.alive}>"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive() and self.conn is not None

    @property
    def pid(self) -> int | None:
        return int(self.process.pid) if self.process is not None else None

    async def start(self) -> ModelInfo:
        """Spawn the process and wait until its model is loaded. Raises ``ModelFileError`` if loading fails."""
        parent, child = _SPAWN.Pipe(duplex=True)
        self._inbox = asyncio.Queue()
        self.process = _SPAWN.Process(
            target=replica_main, args=(self.index, self.settings, child, self._cancel),
            name=f"engbot-replica-{self.index}", daemon=True,
        )
        self.process.start()
        child.close()  # so that the child's death shows as EOF on our end
        self.conn = parent
        self.started_at = time.monotonic()
        asyncio.get_running_loop().add_reader(parent.fileno(), self._readable)
        msg = await self._inbox.get()
        if msg[0] == "ready":
            self.info = msg[1]
            log.info("replica %d ready (pid %d, %.2f s)", self.index, self.pid, time.monotonic() - self.started_at)
            return msg[1]  # type: ignore[no-any-return]
        await self._reap()
        if msg[0] == "load_failed":
            raise ModelFileError(msg[1])
        raise ModelFileError(f"the model process exited while loading {self.settings.model_path} "
                             f"({_describe_exit(self.exitcode)})")

    def _readable(self) -> None:
        assert self.conn is not None
        try:
            while self.conn.poll():
                self._inbox.put_nowait(self.conn.recv())
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(self.conn.fileno())
            self._inbox.put_nowait(("exit",))

    async def run(self, seq: int, turns: tuple[Turn, ...], system_prompt: str, params: GenParams,
                  timeout_s: float) -> AsyncIterator[tuple[Any, ...]]:
        """Send one job and yield the replica's messages until the final one ("done"/"failed").

        A replica that dies yields ("failed", seq, "crashed", ...); one that overruns its timeout or ignores a
        cancel is killed and yields a "timeout" or "cancelled" failure. Either way the process is gone after.
        """
        assert self.conn is not None
        self._cancel_requested_at = None
        self.conn.send(("job", seq, turns, system_prompt, params, timeout_s))
        hard_deadline = time.monotonic() + timeout_s + KILL_GRACE_S
        while True:
            now = time.monotonic()
            deadline = hard_deadline
            if self._cancel_requested_at is not None:
                deadline = min(deadline, self._cancel_requested_at + CANCEL_GRACE_S)
            try:
                msg = await asyncio.wait_for(self._inbox.get(), max(0.0, deadline - now))
            except TimeoutError:
                if self._cancel_requested_at is not None and now < hard_deadline:
                    log.warning("replica %d ignored a cancel for %.0f s: killing it", self.index, CANCEL_GRACE_S)
                    kind, reason = "cancelled", "cancelled"
                else:
                    log.warning("replica %d is stuck past its timeout: killing it", self.index)
                    kind, reason = "timeout", f"the answer took longer than {timeout_s:g} s"
                self.kill()
                await self._reap()
                yield ("failed", seq, kind, reason, "")
                return
            if msg[0] == "exit":
                await self._reap()
                code = self.exitcode
                log.error("replica %d died during a job (%s)", self.index, _describe_exit(code))
                yield ("failed", seq, "crashed",
                       f"the model process crashed ({_describe_exit(code)}); it is being restarted", "")
                return
            if msg[1] != seq:
                continue  # a late message of an earlier, abandoned job
            yield msg
            if msg[0] in ("done", "failed"):
                return

    def cancel(self, seq: int) -> None:
        """Ask the running generation to stop after its current token."""
        self._cancel.value = seq
        if self._cancel_requested_at is None:
            self._cancel_requested_at = time.monotonic()

    def kill(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.kill()

    async def stop(self, timeout: float = 5.0) -> None:
        """Ask the process to exit (it frees its model), and kill it if it does not within ``timeout``."""
        if self.process is None:
            return
        if self.conn is not None and self.process.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send(("stop",))
            deadline = time.monotonic() + timeout
            while self.process.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        self.kill()
        await self._reap()

    async def _reap(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.conn.fileno())
            self.conn.close()
            self.conn = None
        if self.process is not None:
            for _ in range(250):  # the pipe closes a moment before the process can be joined
                if not self.process.is_alive():
                    break
                await asyncio.sleep(0.02)
            self.exitcode = self.process.exitcode
            if self.exitcode is not None:
                self.process.close()
                self.process = None
        self.info = None


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
