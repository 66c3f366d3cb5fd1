"""Bounded memory and per-user limits shared by the adapters."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Mapping
from typing import Generic, TypeVar

from engine.config import Env


class RateLimiter:
    """At most ``limit`` requests per user in a sliding window of ``period_s`` seconds; 0 disables it.

    Not a throttler that makes callers wait for a slot: a chat user over the limit must get a
    notice at once instead of a delayed answer.
    """

    def __init__(self, limit: int, period_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.period_s, self._clock = limit, period_s, clock
        self._hits: dict[str, deque[float]] = {}

    def check(self, user: str) -> float:
        """Record a request; 0 if allowed, else the seconds until the user may ask again."""
        if self.limit <= 0:
            return 0.0
        now = self._clock()
        hits = self._hits.setdefault(user, deque())
        while hits and now - hits[0] >= self.period_s:
            hits.popleft()
        if len(hits) >= self.limit:
            return max(0.1, self.period_s - (now - hits[0]))
        hits.append(now)
        if len(self._hits) > 10_000:  # forget idle users
            self._hits = {u: h for u, h in self._hits.items() if h and now - h[-1] < self.period_s}
        return 0.0


def rate_limit_from_environ(environ: Mapping[str, str]) -> RateLimiter:
    """The per-user limit shared by every adapter: RATE_LIMIT_PER_USER (default 5, 0 = off) requests per
    RATE_LIMIT_PERIOD_S (default 60) seconds. Raises ``ConfigError`` naming the variable on a bad value."""
    env = Env(environ)
    return RateLimiter(env.int("RATE_LIMIT_PER_USER", 5, lo=0, hi=100_000),
                       env.float("RATE_LIMIT_PERIOD_S", 60.0, lo=0.0, lo_open=True))


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Recent(Generic[K, V]):
    """A bounded map whose entries expire ``ttl_s`` seconds after they were written (oldest dropped first)."""

    def __init__(self, ttl_s: float, max_size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self.max_size, self._clock = ttl_s, max_size, clock
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def _expire(self) -> None:
        now = self._clock()
        while self._items and (len(self._items) > self.max_size or next(iter(self._items.values()))[0] <= now):
            self._items.popitem(last=False)

    def get(self, key: K) -> V | None:
        self._expire()
        item = self._items.get(key)
        return None if item is None else item[1]

    def values(self) -> list[V]:
        """What is kept (not expired), oldest first."""
        self._expire()
        return [value for _, value in self._items.values()]

    def put(self, key: K, value: V) -> None:
        self._items.pop(key, None)
        self._items[key] = (self._clock() + self.ttl_s, value)
        self._expire()

    def first_time(self, key: K, value: V) -> bool:
        """Record ``key``; False if it was recorded already (and not expired)."""
        if self.get(key) is not None:
            return False
        self.put(key, value)
        return True
