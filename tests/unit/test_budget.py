"""Slack's workspace edit budget (``bots/slack/budget.py``): never more than its calls in any window, final
edits first, a 429 pauses everyone. Checked on the order and the times the budget itself lets calls through."""

from __future__ import annotations

import asyncio
import time

import pytest

from bots.slack.budget import EditBudget


def most_in_any_window(times: list[float], window: float) -> int:
    return max(sum(1 for t in times if start <= t < start + window) for start in times)


async def test_never_more_than_its_calls_in_any_window() -> None:
    budget = EditBudget(3, 0.2)
    granted: list[float] = []

    async def edit() -> None:
        await budget.acquire()
        granted.append(time.monotonic())

    await asyncio.gather(*(edit() for _ in range(10)))
    assert len(granted) == 10 and budget.granted == 10 and budget.waited == 7
    assert most_in_any_window(sorted(granted), 0.2 - 1e-3) <= 3


async def test_final_edits_go_first_and_interim_ones_keep_their_order() -> None:
    budget = EditBudget(1, 0.05)
    order: list[str] = []
    await budget.acquire()  # the window is full

    async def edit(name: str, final: bool) -> None:
        await budget.acquire(final=final)
        order.append(name)

    tasks = [asyncio.create_task(edit(name, final)) for name, final in
             (("a interim", False), ("b interim", False), ("c final", True), ("d final", True))]
    await asyncio.gather(*tasks)
    assert order == ["c final", "d final", "a interim", "b interim"]


async def test_a_429_pauses_every_edit_and_a_cancelled_wait_gives_its_turn_away() -> None:
    budget = EditBudget(5, 0.05)
    await budget.acquire()
    budget.pause(0.2)
    paused_at = time.monotonic()
    waiting = asyncio.create_task(budget.acquire())
    given_up = asyncio.create_task(budget.acquire())
    await asyncio.sleep(0.01)
    given_up.cancel()
    await asyncio.gather(given_up, return_exceptions=True)
    await waiting
    assert time.monotonic() - paused_at >= 0.2 - 1e-3 and budget.waiting == 0
    assert budget.granted == 2  # the one before the pause and the one that waited it out


def test_a_budget_needs_a_call() -> None:
    with pytest.raises(ValueError):
        EditBudget(0, 6.0)


async def test_a_call_counts_from_its_answer_and_try_acquire_never_waits() -> None:
    now = [0.0]
    budget = EditBudget(2, 1.0, clock=lambda: now[0])
    first = budget.try_acquire()
    assert first is not None and budget.try_acquire() is not None
    assert budget.try_acquire() is None  # the window is full: no waiting, no turn
    now[0] = 0.3
    budget.finished(first)  # answered at 0.3: it counts from then (Slack may have counted it that late)
    now[0] = 1.0
    assert budget.try_acquire() is not None  # the second one's second is over...
    assert budget.try_acquire() is None  # ...the first one's is not, counted from its answer
    now[0] = 1.3
    assert budget.try_acquire() is not None
