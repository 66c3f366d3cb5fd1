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


def test_users_take_turns_so_a_flood_from_one_does_not_hold_up_the_others() -> None:
    moved: list[tuple[str, int]] = []
    q: JobQueue[str] = JobQueue(10, on_moved=lambda item, pos: moved.append((item, pos)), key=lambda item: item[0])
    for job in ("a1", "a2", "a3", "a4", "a5"):  # one person asks five questions at once
        q.put(job)
    assert q.put("b1") == 2  # the next person waits for one of them, not five
    assert q.put("c1") == 3
    assert q.order() == ["a1", "b1", "c1", "a2", "a3", "a4", "a5"]
    assert ("a2", 4) in moved and ("a5", 7) in moved  # they heard they moved back; newcomers hear nothing
    assert not any(item in ("b1", "c1") for item, _ in moved)
    assert [q.pop() for _ in range(3)] == ["a1", "b1", "c1"]
    assert q.put("b2") == 2  # a's turn again, then b's
    assert [q.pop() for _ in range(len(q))] == ["a2", "b2", "a3", "a4", "a5"]


def test_positions_follow_the_turns_as_jobs_leave() -> None:
    q: JobQueue[str] = JobQueue(10, key=lambda item: item[0])
    for job in ("a1", "a2", "b1", "b2"):
        q.put(job)
    assert q.order() == ["a1", "b1", "a2", "b2"]
    assert q.remove("b1") and q.order() == ["a1", "b2", "a2"]
    q.put_front(["z9"])
    assert q.peek() == "z9" and q.position("a2") == 4
