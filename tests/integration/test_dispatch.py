"""Dispatch on the real model: load balance, conversations kept on their replica, waiting limits, replicas that
cannot start, and LOAD_ON_FLY with several slots."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections import Counter
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from engbot.http import make_app
from engine.api import JobHandle
from engine.errors import EngineClosed
from engine.local import Engine
from engine.types import Done, Failed, GenParams, Job, Queued, Started, Turn
from tests.conftest import EngineFactory, make_settings
from tests.integration.answers import GREEDY, LONG, QUESTIONS, first_text

SHORT = GenParams(max_new_tokens=24, temperature=0.0, ignore_eos=True)


async def started(handle: object) -> Started:
    async for event in handle:  # type: ignore[attr-defined]
        if isinstance(event, Started):
            return event
        assert not isinstance(event, Done | Failed), event
    raise AssertionError("no Started event")


@pytest.mark.parametrize("slots", [1, 2])
async def test_jobs_go_to_the_least_loaded_replica(engine_factory: EngineFactory, slots: int) -> None:
    engine = await engine_factory(NUM_WORKERS=2, PARALLEL_SLOTS=slots)
    for burst in (2, 2 * slots):
        handles = [engine.submit_nowait(Job.ask(QUESTIONS[i], params=SHORT)) for i in range(burst)]
        replicas = Counter([(await started(h)).replica for h in handles])
        assert replicas == {0: burst // 2, 1: burst // 2}, replicas
        for handle in handles:
            assert isinstance(await handle.result(), Done)


@pytest.mark.parametrize("slots", [1, 2])
async def test_a_follow_up_goes_to_the_replica_that_holds_its_conversation(engine_factory: EngineFactory,
                                                                           slots: int) -> None:
    engine = await engine_factory(NUM_WORKERS=2, PARALLEL_SLOTS=slots)
    threads: list[tuple[Turn, ...]] = []
    where: list[int] = []
    for question in ("Tell me about cats.", "Tell me about the sea."):
        handle = engine.submit_nowait(Job(turns=(Turn("user", question),), params=GREEDY))
        where.append((await started(handle)).replica)
        done = await handle.result()
        assert isinstance(done, Done)
        threads.append((Turn("user", question), Turn("assistant", done.text)))
    assert sorted(where) == [0, 1]  # idle replicas share the work
    for i in (1, 0):  # the second conversation first: round robin alone would send it elsewhere
        follow_up = (*threads[i], Turn("user", "Tell me more."))
        handle = engine.submit_nowait(Job(turns=follow_up, params=GREEDY))
        event = await started(handle)
        assert event.replica == where[i]
        assert event.cached_tokens > 20  # the earlier turns were not read again
        assert isinstance(await handle.result(), Done)
    # a new conversation shares only the system prompt with the cache: its question is read
    fresh = await started(engine.submit_nowait(Job.ask("Name three birds.", params=GREEDY)))
    assert fresh.prompt_tokens - fresh.cached_tokens >= 5 and fresh.cached_tokens < event.cached_tokens


@pytest.mark.parametrize("slots", [1, 2])
async def test_a_job_that_waits_too_long_is_told_busy(engine_factory: EngineFactory, slots: int) -> None:
    engine = await engine_factory(PARALLEL_SLOTS=slots, QUEUE_TIMEOUT_S=0.5)
    running = [engine.submit_nowait(Job.ask(f"Write a long story number {i}.", params=LONG)) for i in range(slots)]
    waiting = engine.submit_nowait(Job.ask(QUESTIONS[0], params=GREEDY))
    result = await asyncio.wait_for(waiting.result(), 30)
    assert isinstance(result, Failed) and result.kind == "busy", result
    assert engine.queued == 0
    for handle in running:
        assert not handle.done
        handle.cancel()
        assert isinstance(await handle.result(), Failed)


async def test_when_no_replica_can_start_queued_jobs_fail_and_health_says_so(
        engine_factory: EngineFactory, model_path: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    shutil.copyfile(model_path, model)
    engine = await engine_factory(MODEL_PATH=model)
    running = engine.submit_nowait(Job.ask("Write a long essay about rivers.", params=LONG))
    queued = engine.submit_nowait(Job.ask(QUESTIONS[0], params=GREEDY))
    await first_text(running)
    # the model file turns bad under the running replica (which keeps its mapping of the old file), which dies
    broken = tmp_path / "broken.gguf"
    with open(model_path, "rb") as good:  # noqa: ASYNC230 (a megabyte, once)
        broken.write_bytes(good.read(1 << 20))
    os.replace(model, tmp_path / "good.gguf")
    os.replace(broken, model)
    pid = engine.replicas[0].pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    crashed = await asyncio.wait_for(running.result(), 30)
    assert isinstance(crashed, Failed) and crashed.kind == "crashed"
    failed = await asyncio.wait_for(queued.result(), 30)  # not left waiting for a replica that cannot start
    assert isinstance(failed, Failed) and failed.kind == "load_failed" and "model.gguf" in failed.reason
    async with TestClient(TestServer(make_app(engine, lambda: []), host="127.0.0.1")) as client:
        response = await client.get("/healthz")
        assert response.status == 503
        body = await response.json()
        assert body["status"] == "down" and "model.gguf" in body["error"]
        with pytest.raises(EngineClosed, match="no replica can run"):
            engine.submit_nowait(Job.ask(QUESTIONS[1], params=GREEDY))
        # the file is mended: the next start attempt succeeds on its own
        os.replace(tmp_path / "good.gguf", model)
        for _ in range(600):
            if (await client.get("/healthz")).status == 200:
                break
            await asyncio.sleep(0.1)
        assert (await client.get("/healthz")).status == 200
    assert isinstance(await engine.submit_nowait(Job.ask(QUESTIONS[1], params=GREEDY)).result(), Done)


async def test_load_on_fly_with_several_slots_never_unloads_under_a_job(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(LOAD_ON_FLY="true", KEEP_ALIVE_S=0.2, PARALLEL_SLOTS=2)
    params = GenParams(max_new_tokens=2, temperature=0.0, ignore_eos=True)
    # each question arrives around the moment the idle replica is being unloaded
    for i in range(12):
        result = await engine.submit_nowait(Job.ask(QUESTIONS[i % len(QUESTIONS)], params=params)).result()
        assert isinstance(result, Done), result
        await asyncio.sleep(0.17 + 0.01 * (i % 6))
    # and answers that end while others start, with no keep-alive at all
    engine = await engine_factory(LOAD_ON_FLY="true", KEEP_ALIVE_S=0, PARALLEL_SLOTS=2)

    async def ask(i: int, delay: float) -> Done | Failed:
        await asyncio.sleep(delay)
        params = GenParams(max_new_tokens=1 + i % 4, temperature=0.0, ignore_eos=True)
        return await engine.submit_nowait(Job.ask(QUESTIONS[i % len(QUESTIONS)], params=params)).result()

    for wave in range(4):
        results = await asyncio.gather(*(ask(wave + i, 0.02 * ((wave * i) % 5)) for i in range(3)))
        assert [type(r).__name__ for r in results] == ["Done"] * 3, results


async def test_a_replica_that_dies_while_the_others_load_is_restarted() -> None:
    engine = Engine(make_settings(NUM_WORKERS=2, NUM_THREADS=1, PARALLEL_SLOTS=1, TEMPERATURE=0))
    try:
        starting = asyncio.create_task(engine.start())
        fast, slow = engine.replicas
        while slow.pid is None:  # (spawned at once, loaded in a moment)
            await asyncio.sleep(0)
        os.kill(slow.pid, signal.SIGSTOP)  # replica 1 loads slowly ...
        try:
            for _ in range(600):
                if fast.info is not None:
                    break
                await asyncio.sleep(0.05)
            assert fast.info is not None and fast.pid is not None
            os.kill(fast.pid, signal.SIGKILL)  # ... and replica 0, loaded already, dies meanwhile
            await asyncio.sleep(0.5)
        finally:
            os.kill(slow.pid, signal.SIGCONT)
        await asyncio.wait_for(starting, 60)
        # every question is answered: none is sent to the dead process
        handles = [engine.submit_nowait(Job.ask(QUESTIONS[i], params=SHORT)) for i in range(4)]
        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 120)
        assert [type(r).__name__ for r in results] == ["Done"] * 4, results
    finally:
        await engine.stop(grace_s=0)


async def test_a_job_waiting_for_a_replica_to_load_is_told_busy_in_time(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(LOAD_ON_FLY="true", QUEUE_TIMEOUT_S=1)
    replica = engine.replicas[0]
    waiting = engine.submit_nowait(Job.ask(QUESTIONS[0], params=SHORT))  # starts the replica
    while replica.pid is None:
        await asyncio.sleep(0)
    os.kill(replica.pid, signal.SIGSTOP)  # its load hangs (a stalled disk, say)
    try:
        result = await asyncio.wait_for(waiting.result(), 30)
        assert isinstance(result, Failed) and result.kind == "busy", result
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    # the replica loads after all, and answers
    final = await asyncio.wait_for(engine.submit_nowait(Job.ask(QUESTIONS[1], params=SHORT)).result(), 60)
    assert isinstance(final, Done)


async def test_a_flood_from_one_user_does_not_hold_up_the_others(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(QUEUE_MAX_SIZE=8)  # one replica, one slot
    busy = engine.submit_nowait(Job.ask("Tell me a long story.", params=LONG, user="slack:U0"))
    await first_text(busy)
    flood = [engine.submit_nowait(Job.ask(QUESTIONS[i], params=SHORT, user="slack:U1")) for i in range(4)]
    single = engine.submit_nowait(Job.ask(QUESTIONS[4], params=SHORT, user="discord:42"))
    assert [h.position for h in flood] == [1, 3, 4, 5] and single.position == 2  # the others' turn comes next
    started: list[str] = []

    async def follow(name: str, handle: JobHandle) -> None:
        async for event in handle:
            if isinstance(event, Started):
                started.append(name)

    followers = [asyncio.create_task(follow(f"flood {i}", h)) for i, h in enumerate(flood)]
    followers.append(asyncio.create_task(follow("single", single)))
    engine.cancel(busy.job.id)
    await asyncio.wait_for(asyncio.gather(*followers), 120)
    assert started == ["flood 0", "single", "flood 1", "flood 2", "flood 3"]


async def test_a_waiting_job_is_told_about_how_long_it_waits(engine_factory: EngineFactory) -> None:
    engine = await engine_factory()
    first = engine.submit_nowait(Job.ask(QUESTIONS[0], params=SHORT))
    assert first.position == 0 and isinstance(await first.result(), Done)  # (no estimate before an answer)
    running = engine.submit_nowait(Job.ask("Tell me a long story.", params=LONG))
    waiting = engine.submit_nowait(Job.ask(QUESTIONS[1], params=SHORT))
    assert waiting.position == 1 and waiting.eta_s is not None and waiting.eta_s > 0  # (from the first answer)
    engine.cancel(running.job.id)
    events = [e async for e in waiting]
    assert isinstance(events[0], Queued) and events[0].eta_s is not None and isinstance(events[-1], Done)
