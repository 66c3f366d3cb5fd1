"""The bounded queue of waiting jobs: hands jobs to idle workers in order, knows every job's position."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from engine.errors import QueueFull

T = TypeVar("T")


class JobQueue(Generic[T]):
    """FIFO of at most ``max_size`` waiting items. ``put`` never blocks: it raises ``QueueFull``.

    An item put while a worker waits goes straight to that worker without ever counting as queued.
    ``on_moved`` is called with every item whose position changed after one left the queue.
    """

    def __init__(self, max_size: int, on_moved: Callable[[T, int], None] | None = None) -> None:
        self.max_size = max_size
        self._items: deque[T] = deque()
        self._waiters: deque[asyncio.Future[T | None]] = deque()
        self._on_moved = on_moved
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def idle_workers(self) -> int:
        return len(self._waiters)

    def put(self, item: T) -> int:
        """Queue ``item``; returns its 1-based position, or 0 if a waiting worker took it at once."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(item)
                return 0
        if len(self._items) >= self.max_size:
            raise QueueFull(self.max_size)
        self._items.append(item)
        return len(self._items)

    async def get(self, timeout: float | None = None) -> T | None:
        """The next item; None after ``timeout`` seconds with nothing to do, or once the queue is closed."""
        if self._items:
            item = self._items.popleft()
            self._moved()
            return item
        if self._closed:
            return None
        waiter: asyncio.Future[T | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            # asyncio.wait never cancels the future, so an item handed over at the last moment is not lost
            await asyncio.wait({waiter}, timeout=timeout)
        except asyncio.CancelledError:
            handed = waiter.result() if waiter.done() else None
            if handed is not None:
                self._items.appendleft(handed)  # handed over just as the worker was cancelled: keep it
            else:
                waiter.cancel()
                self._waiters.remove(waiter)
            raise
        if not waiter.done():  # timed out
            waiter.cancel()
            self._waiters.remove(waiter)
            return None
        return waiter.result()

    def remove(self, item: T) -> bool:
        """Take a waiting item out (a cancelled job). False if it is no longer queued."""
        try:
            self._items.remove(item)
        except ValueError:
            return False
        self._moved()
        return True

    def drain(self) -> list[T]:
        """Take out every waiting item."""
        items = list(self._items)
        self._items.clear()
        return items

    def close(self) -> None:
        """Wake every idle worker with None; later ``get`` calls return None once the queue is empty."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _moved(self) -> None:
        if self._on_moved:
            for position, item in enumerate(self._items, start=1):
                self._on_moved(item, position)
