"""The bounded queue of waiting jobs: first in, first out, and every job knows its place."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from engine.errors import QueueFull

T = TypeVar("T")


class JobQueue(Generic[T]):
    """FIFO of at most ``max_size`` waiting items. ``put`` never blocks: it raises ``QueueFull``.

    The engine's dispatcher takes items from the front when a replica has room. ``on_moved`` is called with
    every item whose position changed after one left the queue.
    """

    def __init__(self, max_size: int, on_moved: Callable[[T, int], None] | None = None) -> None:
        self.max_size = max_size
        self._items: deque[T] = deque()
        self._on_moved = on_moved

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def put(self, item: T) -> int:
        """Queue ``item`` at the back; returns its 1-based position."""
        if len(self._items) >= self.max_size:
            raise QueueFull(self.max_size)
        self._items.append(item)
        return len(self._items)

    def put_front(self, items: list[T]) -> None:
        """Put items back at the front, in their order (jobs whose replica could not start). Ignores the bound:
        they were accepted already."""
        self._items.extendleft(reversed(items))
        self._moved()

    def peek(self) -> T:
        """The next item (``IndexError`` when empty)."""
        return self._items[0]

    def pop(self) -> T:
        """Take the next item out (``IndexError`` when empty)."""
        item = self._items.popleft()
        self._moved()
        return item

    def position(self, item: T) -> int:
        """1-based place of a waiting item, 0 if it is not queued."""
        try:
            return self._items.index(item) + 1
        except ValueError:
            return 0

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

    def _moved(self) -> None:
        if self._on_moved:
            for position, item in enumerate(self._items, start=1):
                self._on_moved(item, position)
