"""``cancel(job_id)``: any part of the bot can stop an answer by its job id (a Stop button, a shutdown), whoever
holds the handle. Through the real replica processes, with one slot and with batched slots."""

from __future__ import annotations

import asyncio

import pytest

from engine.types import Done, Failed, FailureKind, GenParams, Job, Queued, Started, TextPiece
from tests.conftest import EngineFactory
from tests.integration.answers import LONG

SHORT = GenParams(max_new_tokens=8, temperature=0.0)


@pytest.mark.parametrize("parallel_slots", [1, 2])
async def test_a_running_job_cancelled_by_id_frees_its_slot_for_the_next(engine_factory: EngineFactory,
                                                                         parallel_slots: int) -> None:
    engine = await engine_factory()
    running = [engine.submit_nowait(Job.ask(f"Tell me a long story number {i}.", params=LONG))
               for i in range(parallel_slots)]  # every slot of the one replica
    waiting = engine.submit_nowait(Job.ask("What is 2 + 2?", params=SHORT))
    assert waiting.position == 1
    victim = running[0]
    async for event in victim:  # someone else holds the handle; we only know the id
        if isinstance(event, TextPiece):
            break
    assert engine.cancel(victim.job.id)
    order: list[str] = []

    async def follow_waiting() -> Done | Failed:
        async for event in waiting:
            if isinstance(event, Started):
                order.append("next started")
            elif isinstance(event, Done | Failed):
                return event
        raise AssertionError("no final event")

    next_answer = asyncio.create_task(follow_waiting())
    final = await victim.result()
    assert isinstance(final, Failed) and final.kind is FailureKind.CANCELLED and final.partial
    assert isinstance(await next_answer, Done)
    # the freed slot answered the waiting job while the other long answers still ran
    assert order == ["next started"] and not any(h.done for h in running[1:])
    assert not engine.cancel(victim.job.id)  # it ended: nothing to stop
    for handle in running[1:]:
        assert engine.cancel(handle.job.id)
        assert (await handle.result()).kind is FailureKind.CANCELLED  # type: ignore[union-attr]


async def test_a_queued_job_cancelled_by_id_ends_at_once(engine_factory: EngineFactory) -> None:
    engine = await engine_factory()
    running = engine.submit_nowait(Job.ask("Tell me a long story.", params=LONG))
    queued = engine.submit_nowait(Job.ask("What is 2 + 2?", params=SHORT))
    assert engine.queued == 1 and engine.cancel(queued.job.id)
    events = [event async for event in queued]
    assert isinstance(events[0], Queued) and events[-1] == Failed(FailureKind.CANCELLED, "cancelled")
    assert engine.queued == 0
    assert not engine.cancel("no-such-job")
    engine.cancel(running.job.id)
    assert isinstance(await running.result(), Failed)
