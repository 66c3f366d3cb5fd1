"""One ``chat.update`` budget for a whole Slack workspace.

``chat.update`` is rate tier 3: about 50 calls a minute per app and workspace, shared by every answer streaming
there. Each answer edits its message about once a second on its own, so eight answers at once would ask for eight
times the budget and meet Slack's 429s. Here every edit waits for its turn instead: at most ``calls`` in any
``period_s`` (a sliding window: 5 in any 6 s is 50 a minute, in bursts of 5), final edits (an answer's last text,
which must arrive) before interim ones, interim ones in the order they asked (an answer has at most one edit
waiting, so the turns go round the answers), and a 429's Retry-After pauses them all.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable


class EditBudget:
    """At most ``calls`` calls in any ``period_s`` seconds. Not thread-safe: one event loop."""

    def __init__(self, calls: int = 5, period_s: float = 6.0, clock: Callable[[], float] = time.monotonic) -> None:
        if calls < 1 or period_s <= 0:
            raise ValueError("a budget needs at least one call per period")
        self.calls, self.period_s, self._clock = calls, period_s, clock
        self._recent: deque[float] = deque()  # when the calls of the last period_s were let through
        self._paused_until = 0.0
        self._final: deque[asyncio.Future[None]] = deque()
        self._other: deque[asyncio.Future[None]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.granted = 0  # calls let through (for tests and logs)
        self.waited = 0  # of those, how many had to wait

    def __repr__(self) -> str:
        return (f"<EditBudget {self.calls} per {self.period_s:g} s, {len(self._recent)} lately, "
                f"waiting={len(self._final) + len(self._other)}>")

    @property
    def waiting(self) -> int:
        return len(self._final) + len(self._other)

    async def acquire(self, *, final: bool = False) -> None:
        """Wait for the turn of one call. ``final``: an answer's last edit, which goes before every interim one."""
        if not self._final and not self._other and self._take():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (self._final if final else self._other).append(future)
        self.waited += 1
        self._schedule()
        try:
            await future
        except asyncio.CancelledError:
            if not future.done() or future.cancelled():
                self._forget(future)
            else:  # its turn came as it was cancelled: give the call back
                if self._recent:
                    self._recent.pop()
                self.granted -= 1
                self._grant()
            raise

    def pause(self, seconds: float) -> None:
        """Slack said "slow down" (429, Retry-After): no call for ``seconds``."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)
        if self._timer is not None:  # (it may be due sooner than the pause ends)
            self._timer.cancel()
            self._timer = None
        self._schedule()

    def _take(self) -> bool:
        now = self._clock()
        while self._recent and now - self._recent[0] >= self.period_s:
            self._recent.popleft()
        if now < self._paused_until or len(self._recent) >= self.calls:
            return False
        self._recent.append(now)
        self.granted += 1
        return True

    def _forget(self, future: asyncio.Future[None]) -> None:
        for queue in (self._final, self._other):
            if future in queue:
                queue.remove(future)

    def _grant(self) -> None:
        self._timer = None
        while self._final or self._other:
            queue = self._final if self._final else self._other
            if queue[0].done():  # (cancelled while waiting)
                queue.popleft()
                continue
            if not self._take():
                break
            queue.popleft().set_result(None)
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None or not (self._final or self._other):
            return
        now = self._clock()
        free_at = self._recent[0] + self.period_s if len(self._recent) >= self.calls else now
        delay = max(self._paused_until - now, free_at - now, 0.0)
        self._timer = asyncio.get_running_loop().call_later(delay, self._grant)
