"""PARALLEL_SLOTS: one replica decoding several answers together (continuous batching), on the real model."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from engine.types import Done, Failed, GenParams, Job, Started, TextPiece
from tests.conftest import EngineFactory
from tests.integration.answers import GREEDY, LONG, QUESTIONS, first_text


async def test_slots_answer_together(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(PARALLEL_SLOTS=4)
    assert engine.model_info is not None and "slots=4" in engine.model_info.detail
    order: list[tuple[int, str]] = []

    async def run(i: int) -> Done | Failed:
        async for event in engine.submit_nowait(Job.ask(QUESTIONS[i], params=GREEDY)):
            if isinstance(event, Started | Done):
                order.append((i, type(event).__name__))
            if isinstance(event, Done | Failed):
                return event
        raise AssertionError

    results = await asyncio.gather(*(run(i) for i in range(6)))
    assert all(isinstance(r, Done) and r.text.strip() and r.completion_tokens > 0 for r in results), results
    # four started before the first finished: they shared the replica
    first_done = next(n for n, (_, kind) in enumerate(order) if kind == "Done")
    assert sum(kind == "Started" for _, kind in order[:first_done]) == 4
    assert len({r.text for r in results}) >= 5  # type: ignore[union-attr]
    # an answer alone in the batch and the same answer next to others are both sensible text
    alone = await engine.submit_nowait(Job.ask(QUESTIONS[0], params=GREEDY)).result()
    assert isinstance(alone, Done) and alone.text.strip()


async def test_cancel_and_timeout_of_one_slot_leave_the_others(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(PARALLEL_SLOTS=3, GENERATION_TIMEOUT_S=6)
    victim = engine.submit_nowait(Job.ask("Write a very long essay about the sea.", params=LONG))
    others = [engine.submit_nowait(Job.ask(q, params=GenParams(max_new_tokens=48, temperature=0.0)))
              for q in QUESTIONS[:2]]
    await first_text(victim)
    cancelled_at = time.monotonic()
    victim.cancel()
    result = await victim.result()
    assert isinstance(result, Failed) and result.kind == "cancelled"
    assert time.monotonic() - cancelled_at < 2.0
    for handle in others:
        assert isinstance(await handle.result(), Done)
    slow = await engine.submit_nowait(Job.ask("Write a very long essay about mountains.", params=LONG)).result()
    assert isinstance(slow, Failed) and slow.kind == "timeout" and slow.partial


async def test_killed_batched_replica_fails_all_its_jobs_and_heals(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(PARALLEL_SLOTS=2)
    handles = [engine.submit_nowait(Job.ask(f"Write a long story number {i}.", params=LONG)) for i in range(2)]
    for handle in handles:
        async for event in handle:
            if isinstance(event, TextPiece):
                break
    pid = engine.replicas[0].pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    for handle in handles:
        result = await asyncio.wait_for(handle.result(), 10)
        assert isinstance(result, Failed) and result.kind == "crashed"
    assert engine.metrics.restarts._value.get() == 1  # one death, however many jobs it took down
    after = await asyncio.wait_for(engine.submit_nowait(Job.ask(QUESTIONS[0], params=GREEDY)).result(), 60)
    assert isinstance(after, Done) and after.text


async def test_a_full_kv_cache_slows_answers_down_but_fails_none(engine_factory: EngineFactory) -> None:
    # four slots share the smallest cache allowed (one conversation's worth): the answers cannot all fit at once
    engine = await engine_factory(PARALLEL_SLOTS=4, CONTEXT_LENGTH=256, KV_CACHE_TOKENS=256, MAX_NEW_TOKENS=150)
    assert engine.model_info is not None and "kv_tokens=256" in engine.model_info.detail
    params = GenParams(max_new_tokens=150, temperature=0.0, ignore_eos=True)
    handles = [engine.submit_nowait(Job.ask(f"Tell me a story about the number {i}.", params=params)) for i in range(4)]
    results = await asyncio.gather(*(h.result() for h in handles))
    assert all(isinstance(r, Done) and r.completion_tokens == 150 and r.text.strip() for r in results), results
    # two long prompts that do not fit together: one waits for the other, then both answer
    long_params = GenParams(max_new_tokens=40, temperature=0.0, ignore_eos=True)
    prompts = [("Summarise this: " + f"apple {i} pear " * 40).strip() for i in range(2)]
    handles = [engine.submit_nowait(Job.ask(p, params=long_params)) for p in prompts]
    results = await asyncio.gather(*(h.result() for h in handles))
    assert all(isinstance(r, Done) and r.completion_tokens == 40 for r in results), results
