"""The bounded queue of waiting jobs: fair between users, and every job knows its place.

Jobs wait in one lane per user (``key``); the queue takes the oldest job of each lane in turn, so one person's
five questions do not make everyone else wait behind them. With no key (or one lane) it is first in, first out.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from engine.errors import QueueFull

T = TypeVar("T")


class JobQueue(Generic[T]):
    """At most ``max_size`` waiting items, taken round-robin by ``key``. ``put`` never blocks: it raises
    ``QueueFull``.

    The engine's dispatcher takes items from the front when a replica has room. ``on_moved`` is called with every
    item whose position changed after the queue changed.
    """

    def __init__(self, max_size: int, on_moved: Callable[[T, int], None] | None = None,
                 key: Callable[[T], Hashable] | None = None) -> None:
        self.max_size = max_size
        self._key = key or (lambda item: None)
        self._front: deque[T] = deque()  # put back after their replica failed: before everyone else
        self._lanes: OrderedDict[Hashable, deque[T]] = OrderedDict()  # the lane whose turn it is first
        self._size = 0
        self._on_moved = on_moved
        self._positions: dict[int, int] = {}  # id(item) -> the position last reported

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def order(self) -> list[T]:
        """The waiting items in the order they will be taken (if nothing else arrives)."""
        items = list(self._front)
        lanes = [list(lane) for lane in self._lanes.values()]
        for turn in range(max((len(lane) for lane in lanes), default=0)):
            items.extend(lane[turn] for lane in lanes if turn < len(lane))
        return items

    def put(self, item: T) -> int:
        """Queue ``item`` at the back of its lane; returns its 1-based position."""
        if self._size >= self.max_size:
            raise QueueFull(self.max_size)
        self._lanes.setdefault(self._key(item), deque()).append(item)
        self._size += 1
        self._moved(quiet=item)  # (a newcomer can go before others' later jobs: they hear they moved)
        return self.position(item)

    def put_front(self, items: list[T]) -> None:
        """Put items back at the front, in their order (jobs whose replica could not start). Ignores the bound:
        they were accepted already."""
        self._front.extendleft(reversed(items))
        self._size += len(items)
        self._moved()

    def peek(self) -> T:
        """The next item (``IndexError`` when empty)."""
        if self._front:
            return self._front[0]
        if not self._lanes:
            raise IndexError("the queue is empty")
        return next(iter(self._lanes.values()))[0]

    def pop(self) -> T:
        """Take the next item out (``IndexError`` when empty); its lane's turn passes to the next lane."""
        if self._front:
            item = self._front.popleft()
        elif not self._lanes:
            raise IndexError("the queue is empty")
        else:
            key, lane = next(iter(self._lanes.items()))
            item = lane.popleft()
            del self._lanes[key]
            if lane:
                self._lanes[key] = lane  # (to the end: the others' turn first)
        self._size -= 1
        self._positions.pop(id(item), None)
        self._moved()
        return item

    def position(self, item: T) -> int:
        """1-based place of a waiting item, 0 if it is not queued."""
        for position, waiting in enumerate(self.order(), start=1):
            if waiting is item:
                return position
        return 0

    def remove(self, item: T) -> bool:
        """Take a waiting item out (a cancelled job). False if it is no longer queued."""
        if item in self._front:
            self._front.remove(item)
        else:
            key = self._key(item)
            lane = self._lanes.get(key)
            if lane is None or item not in lane:
                return False
            lane.remove(item)
            if not lane:
                del self._lanes[key]
        self._size -= 1
        self._positions.pop(id(item), None)
        self._moved()
        return True

    def drain(self) -> list[T]:
        """Take out every waiting item."""
        items = self.order()
        self._front.clear()
        self._lanes.clear()
        self._size = 0
        self._positions.clear()
        return items

    def _moved(self, quiet: T | None = None) -> None:
        for position, item in enumerate(self.order(), start=1):
            if self._positions.get(id(item)) != position:
                self._positions[id(item)] = position
                if self._on_moved and item is not quiet:
                    self._on_moved(item, position)
