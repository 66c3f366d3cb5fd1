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


class Turn:
    """One call let through: when it counts from."""

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at


class EditBudget:
    """At most ``calls`` calls in any ``period_s`` seconds. Not thread-safe: one event loop."""

    def __init__(self, calls: int = 5, period_s: float = 6.0, clock: Callable[[], float] = time.monotonic) -> None:
        if calls < 1 or period_s <= 0:
            raise ValueError("a budget needs at least one call per period")
        self.calls, self.period_s, self._clock = calls, period_s, clock
        # when the calls of the last period_s were let through (or, once they ``finished``, answered), oldest first
        self._recent: deque[Turn] = deque()
        self._paused_until = 0.0
        self._final: deque[asyncio.Future[Turn]] = deque()
        self._other: deque[asyncio.Future[Turn]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.granted = 0  # calls let through (for tests and logs)
        self.waited = 0  # of those, how many had to wait

    def __repr__(self) -> str:
        return (f"<EditBudget {self.calls} per {self.period_s:g} s, {len(self._recent)} lately, "
                f"waiting={len(self._final) + len(self._other)}>")

    @property
    def waiting(self) -> int:
        return len(self._final) + len(self._other)

    async def acquire(self, *, final: bool = False) -> Turn:
        """Wait for the turn of one call. ``final``: an answer's last edit, which goes before every interim one.
        Hand the turn to ``finished`` once the call was answered."""
        if not self._final and not self._other and (turn := self._take()) is not None:
            return turn
        future: asyncio.Future[Turn] = asyncio.get_running_loop().create_future()
        (self._final if final else self._other).append(future)
        self.waited += 1
        self._schedule()
        try:
            return await future
        except asyncio.CancelledError:
            if not future.done() or future.cancelled():
                self._forget(future)
            else:  # its turn came as it was cancelled: give the call back
                self._drop(future.result())
                self.granted -= 1
                self._grant()
            raise

    def try_acquire(self) -> Turn | None:
        """A call now, if the budget has one and nobody is waiting for a turn; never waits. (For calls that can
        as well be made later with more in them, such as appending a stream's text.)"""
        return self._take() if not self._final and not self._other else None

    def finished(self, turn: Turn) -> None:
        """The call of ``turn`` was answered: it counts from now. (Slack counts a call when it arrives, which may
        be later than when it was let through; counted from its answer, the window never opens early.)"""
        if self._drop(turn):
            turn.at = self._clock()
            self._recent.append(turn)  # (the newest: every other one counts from earlier)

    def _drop(self, turn: Turn) -> bool:
        for i, recent in enumerate(self._recent):
            if recent is turn:
                del self._recent[i]
                return True
        return False

    def pause(self, seconds: float) -> None:
        """Slack said "slow down" (429, Retry-After): no call for ``seconds``."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)
        if self._timer is not None:  # (it may be due sooner than the pause ends)
            self._timer.cancel()
            self._timer = None
        self._schedule()

    def _take(self) -> Turn | None:
        now = self._clock()
        while self._recent and now - self._recent[0].at >= self.period_s:
            self._recent.popleft()
        if now < self._paused_until or len(self._recent) >= self.calls:
            return None
        turn = Turn(now)
        self._recent.append(turn)
        self.granted += 1
        return turn

    def _forget(self, future: asyncio.Future[Turn]) -> None:
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
            if (turn := self._take()) is None:
                break
            queue.popleft().set_result(turn)
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None or not (self._final or self._other):
            return
        now = self._clock()
        free_at = self._recent[0].at + self.period_s if len(self._recent) >= self.calls else now
        delay = max(self._paused_until - now, free_at - now, 0.0)
        self._timer = asyncio.get_running_loop().call_later(delay, self._grant)
