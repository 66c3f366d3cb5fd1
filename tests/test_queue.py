"""The bounded queue on its own: order, bound, direct hand-over, timeouts, cancellation safety."""

from __future__ import annotations

import asyncio

import pytest

from engine.errors import QueueFull
from engine.queue import JobQueue


async def test_fifo_bound_and_positions() -> None:
    moved: list[tuple[str, int]] = []
    q: JobQueue[str] = JobQueue(2, on_moved=lambda item, pos: moved.append((item, pos)))
    assert q.put("a") == 1 and q.put("b") == 2
    with pytest.raises(QueueFull):
        q.put("c")
    assert await q.get() == "a"
    assert moved == [("b", 1)]
    assert q.remove("b") and not q.remove("b") and len(q) == 0


async def test_waiting_worker_gets_item_directly_and_timeout_returns_none() -> None:
    q: JobQueue[str] = JobQueue(1)
    assert await q.get(timeout=0.01) is None
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    assert q.idle_workers == 1
    assert q.put("x") == 0  # handed over, never queued
    assert await getter == "x" and len(q) == 0 and q.idle_workers == 0


async def test_cancelled_worker_loses_no_item_and_close_wakes_workers() -> None:
    q: JobQueue[str] = JobQueue(3)
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.put("x")  # resolves the getter's future ...
    getter.cancel()  # ... but the getter is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await getter
    assert len(q) == 1 and await q.get() == "x"
    idle = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.close()
    assert await idle is None and await q.get() is None
