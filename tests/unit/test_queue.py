"""The bounded queue on its own: order, bound, positions, putting jobs back at the front."""

from __future__ import annotations

import pytest

from engine.errors import QueueFull
from engine.local.queue import JobQueue


def test_fifo_bound_and_positions() -> None:
    moved: list[tuple[str, int]] = []
    q: JobQueue[str] = JobQueue(2, on_moved=lambda item, pos: moved.append((item, pos)))
    assert not q
    assert q.put("a") == 1 and q.put("b") == 2
    with pytest.raises(QueueFull):
        q.put("c")
    assert q.peek() == "a" and q.position("b") == 2 and q.position("z") == 0
    assert q.pop() == "a"
    assert moved == [("b", 1)]
    assert q.remove("b") and not q.remove("b") and len(q) == 0
    with pytest.raises(IndexError):
        q.pop()


def test_put_front_keeps_order_and_ignores_the_bound() -> None:
    moved: list[tuple[str, int]] = []
    q: JobQueue[str] = JobQueue(2, on_moved=lambda item, pos: moved.append((item, pos)))
    q.put("c")
    q.put("d")
    q.put_front(["a", "b"])  # accepted jobs whose replica could not start: they go first, in order
    assert q.drain() == ["a", "b", "c", "d"] and not q
    assert ("c", 3) in moved and ("a", 1) in moved
