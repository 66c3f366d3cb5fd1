"""The engine end to end on the real default model (SmolLM2 GGUF through llama-cpp-python)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from engine.api import JobHandle
from engine.config import EngineSettings
from engine.errors import DuplicateJob, EngineClosed, QueueFull
from engine.local import Engine
from engine.types import Done, Failed, GenParams, Job, Queued, Started, TextPiece, Turn
from tests.conftest import EngineFactory
from tests.integration.answers import GREEDY, LONG, QUESTIONS, first_text


def library_answer(model_path: Path, question: str, params: GenParams) -> str:
    """The same question through llama-cpp-python's own chat completion, in this process."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(model_path), n_ctx=2048, n_threads=1, flash_attn=True, verbose=False)  # as FLASH_ATTN
    try:
        out = llm.create_chat_completion(
            [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": question}],
            max_tokens=params.max_new_tokens, temperature=0.0, repeat_penalty=params.repeat_penalty,
        )
        return str(out["choices"][0]["message"]["content"])
    finally:
        llm.close()


@pytest.fixture(params=[1, 2], ids=["1slot", "2slots"])
def parallel_slots(request: pytest.FixtureRequest) -> int:
    """Every engine test runs on the single-sequence replica and on the batched one."""
    return int(request.param)


def assert_own_answers(results: list[Done | Failed], expected: list[Done | Failed], exact: bool) -> None:
    """Every job got its own answer. One slot: token for token the answer it gets alone. Batched: the numbers
    depend on what else is in the batch and where in the shared cache (so greedy text may part at a near tie), so
    each answer must start like its own solo answer, and further than like any other question's."""
    texts = [r.text for r in results if isinstance(r, Done)]
    solo = [e.text for e in expected if isinstance(e, Done)]
    assert len(texts) == len(solo) == len(results)
    if exact:
        assert texts == solo
        return
    def shared(a: str, b: str) -> int:
        return next((n for n, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))

    for i, text in enumerate(texts):
        own = shared(text, solo[i])
        assert own >= 20 or text == solo[i], (text, solo[i])
        assert all(own > shared(text, other) for j, other in enumerate(solo) if j != i), text


@pytest.mark.parametrize("parallel_slots", [1])  # the batched path's numbers differ slightly from the library's
async def test_answers_like_the_library_itself(engine_factory: EngineFactory, model_path: Path) -> None:
    engine = await engine_factory()
    events = [e async for e in engine.submit_nowait(Job.ask(QUESTIONS[0], params=GREEDY))]
    assert isinstance(events[0], Started) and events[0].prompt_tokens > 10
    assert any(isinstance(e, TextPiece) for e in events)
    done = events[-1]
    assert isinstance(done, Done), done
    assert done.text == "".join(e.text for e in events if isinstance(e, TextPiece))
    assert 0 < done.completion_tokens <= GREEDY.max_new_tokens
    assert "<|im_end|>" not in done.text
    assert done.text == library_answer(model_path, QUESTIONS[0], GREEDY)


async def test_ignore_eos_answers_run_to_the_token_limit(engine_factory: EngineFactory) -> None:
    engine = await engine_factory()
    natural = await engine.submit_nowait(Job.ask(QUESTIONS[0], params=GenParams(max_new_tokens=64,
                                                                                temperature=0.0))).result()
    for temperature in (0.0, 0.8):
        params = GenParams(max_new_tokens=200, temperature=temperature, seed=3, ignore_eos=True)
        forced = await engine.submit_nowait(Job.ask(QUESTIONS[0], params=params)).result()
        assert isinstance(forced, Done) and forced.finish_reason == "length", forced
        assert forced.completion_tokens == 200
        assert "<|im_end|>" not in forced.text and "<|im_start|>" not in forced.text
        if temperature == 0.0 and isinstance(natural, Done) and natural.finish_reason == "stop":
            # greedy: the same answer up to where it would have ended, then more
            assert forced.text.startswith(natural.text) and len(forced.text) > len(natural.text)


async def test_many_jobs_through_two_workers_get_their_own_answers(engine_factory: EngineFactory,
                                                                    parallel_slots: int) -> None:
    solo = await engine_factory()
    expected = [(await solo.submit_nowait(Job.ask(q, params=GREEDY)).result()) for q in QUESTIONS]
    await solo.stop(grace_s=0)
    engine = await engine_factory(NUM_WORKERS=2)
    handles = [engine.submit_nowait(Job.ask(q, params=GREEDY)) for q in QUESTIONS]
    results = await asyncio.gather(*(h.result() for h in handles))
    assert [type(r) for r in results] == [Done] * len(QUESTIONS)
    assert_own_answers(results, expected, exact=parallel_slots == 1)
    assert len({r.text for r in results}) == len(QUESTIONS)  # type: ignore[union-attr]


def fill_slots(engine: Engine, n: int) -> list[JobHandle]:
    """Long answers that take every slot of a one-replica engine."""
    return [engine.submit_nowait(Job.ask(f"Tell me a long story number {i}.", params=LONG)) for i in range(n)]


async def test_adaptive_threads_give_the_same_answers(engine_factory: EngineFactory, parallel_slots: int) -> None:
    fixed = await engine_factory(NUM_WORKERS=2)
    expected = [(await fixed.submit_nowait(Job.ask(q, params=GREEDY)).result()) for q in QUESTIONS[:4]]
    await fixed.stop(grace_s=0)
    adaptive = await engine_factory(NUM_WORKERS=2, NUM_THREADS="auto")
    assert adaptive.settings.adaptive_threads
    # alone (one replica uses every CPU), then together (the shares change in the middle of answers)
    results = [await adaptive.submit_nowait(Job.ask(QUESTIONS[0], params=GREEDY)).result()]
    results += await asyncio.gather(*(adaptive.submit_nowait(Job.ask(q, params=GREEDY)).result()
                                      for q in QUESTIONS[1:4]))
    # (the thread count itself changes no number: one slot answers token for token as with one thread)
    assert_own_answers(results, expected, exact=parallel_slots == 1)


async def test_queue_full_is_raised_at_once_and_positions_move(engine_factory: EngineFactory,
                                                               parallel_slots: int) -> None:
    engine = await engine_factory(QUEUE_MAX_SIZE=2)
    running, *others = fill_slots(engine, parallel_slots)
    await first_text(running)
    second = engine.submit_nowait(Job.ask(QUESTIONS[1], params=GREEDY))
    third = engine.submit_nowait(Job.ask(QUESTIONS[2], params=GREEDY))
    started = time.monotonic()
    with pytest.raises(QueueFull):
        engine.submit_nowait(Job.ask(QUESTIONS[3], params=GREEDY))
    assert time.monotonic() - started < 0.1
    assert engine.queued == 2
    running.cancel()
    assert isinstance(await running.result(), Failed)
    third_events = [e async for e in third]
    assert [e.position for e in third_events if isinstance(e, Queued)] == [2, 1]
    assert isinstance(third_events[-1], Done)
    assert isinstance(await second.result(), Done)
    for handle in others:
        handle.cancel()


async def test_cancel_stops_generation_and_frees_the_replica(engine_factory: EngineFactory) -> None:
    engine = await engine_factory()
    handle = engine.submit_nowait(Job.ask("Write a very long essay about the sea.", params=LONG))
    await first_text(handle)
    cancelled_at = time.monotonic()
    handle.cancel()
    result = await handle.result()
    assert isinstance(result, Failed) and result.kind == "cancelled"
    assert time.monotonic() - cancelled_at < 2.0  # within a token or two, with room for a busy machine
    assert len(result.partial) > 0
    after = await engine.submit_nowait(Job.ask(QUESTIONS[0], params=GREEDY)).result()
    assert isinstance(after, Done) and after.text


async def test_cancel_of_a_queued_job_removes_it(engine_factory: EngineFactory, parallel_slots: int) -> None:
    engine = await engine_factory()
    running = fill_slots(engine, parallel_slots)
    queued = engine.submit_nowait(Job.ask(QUESTIONS[0], params=GREEDY))
    assert engine.queued == 1
    queued.cancel()
    result = await queued.result()
    assert isinstance(result, Failed) and result.kind == "cancelled"
    assert engine.queued == 0
    for handle in running:
        handle.cancel()
        await handle.result()


async def test_generation_timeout_is_reported_with_the_partial_text(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(GENERATION_TIMEOUT_S=2)
    result = await engine.submit_nowait(Job.ask("Write a very long essay about mountains.", params=LONG)).result()
    assert isinstance(result, Failed) and result.kind == "timeout", result
    assert "2 s" in result.reason
    assert result.partial
    assert isinstance(await engine.submit_nowait(Job.ask(QUESTIONS[0], params=GREEDY)).result(), Done)


async def test_killed_replica_fails_its_job_and_the_pool_heals(engine_factory: EngineFactory) -> None:
    engine = await engine_factory()
    handle = engine.submit_nowait(Job.ask("Write a very long essay about rivers.", params=LONG))
    await first_text(handle)
    pid = engine.replicas[0].pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    result = await asyncio.wait_for(handle.result(), 10)
    assert isinstance(result, Failed) and result.kind == "crashed", result
    assert "SIGKILL" in result.reason
    after = await asyncio.wait_for(engine.submit_nowait(Job.ask(QUESTIONS[0], params=GREEDY)).result(), 60)
    assert isinstance(after, Done) and after.text
    assert engine.replicas[0].pid not in (None, pid)
    assert engine.metrics.restarts._value.get() == 1


async def test_a_replica_killed_for_ignoring_a_cancel_is_replaced(engine_factory: EngineFactory,
                                                                  parallel_slots: int) -> None:
    # one slot: killed 5 s after the cancel, not at the job's own timeout (GENERATION_TIMEOUT_S + 10 s); a batched
    # replica (whose neighbours die with it) only at that timeout
    engine = await engine_factory(GENERATION_TIMEOUT_S=120 if parallel_slots == 1 else 2)
    handles = fill_slots(engine, parallel_slots)
    for handle in handles:
        await first_text(handle)
    pid = engine.replicas[0].pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # stuck (in native code, say): it sends nothing and cannot see the cancel
    handles[0].cancel()
    result = await asyncio.wait_for(handles[0].result(), 30)
    assert isinstance(result, Failed) and result.kind == "cancelled", result
    for other in handles[1:]:  # its neighbours in the batch die with it (or reach the same timeout first)
        ended = await asyncio.wait_for(other.result(), 10)
        assert isinstance(ended, Failed) and ended.kind in ("crashed", "timeout"), ended
    after = await asyncio.wait_for(engine.submit_nowait(Job.ask(QUESTIONS[0], params=GREEDY)).result(), 60)
    assert isinstance(after, Done) and after.text, after
    assert engine.replicas[0].pid not in (None, pid)
    assert engine.metrics.restarts._value.get() == 1


@pytest.mark.parametrize("parallel_slots", [1])
async def test_a_replica_killed_past_its_timeout_is_replaced(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(GENERATION_TIMEOUT_S=1)
    handle = engine.submit_nowait(Job.ask("Write a very long essay about the sea.", params=LONG))
    await first_text(handle)
    pid = engine.replicas[0].pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # stuck in native code: it cannot stop itself at its timeout
    result = await asyncio.wait_for(handle.result(), 30)
    assert isinstance(result, Failed) and result.kind == "timeout", result
    # the next question gets a new process, not "the model process is not running" for ever
    after = await asyncio.wait_for(engine.submit_nowait(Job.ask(QUESTIONS[0], params=GREEDY)).result(), 60)
    assert isinstance(after, Done) and after.text, after
    assert engine.replicas[0].pid not in (None, pid)


async def test_load_on_fly_keeps_no_model_while_idle(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(LOAD_ON_FLY="true", KEEP_ALIVE_S=0)
    assert not engine.replicas[0].alive
    result = await engine.submit_nowait(Job.ask(QUESTIONS[0], params=GREEDY)).result()
    assert isinstance(result, Done) and result.text
    await _until(lambda: not engine.replicas[0].alive)

    kept = await engine_factory(LOAD_ON_FLY="true", KEEP_ALIVE_S=1)
    assert isinstance(await kept.submit_nowait(Job.ask(QUESTIONS[1], params=GREEDY)).result(), Done)
    assert kept.replicas[0].alive  # kept for KEEP_ALIVE_S ...
    await _until(lambda: not kept.replicas[0].alive)  # ... then unloaded
    assert isinstance(await kept.submit_nowait(Job.ask(QUESTIONS[1], params=GREEDY)).result(), Done)


async def _until(condition: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_same_seed_gives_same_text(engine_factory: EngineFactory) -> None:
    engine = await engine_factory()
    sampled = GenParams(max_new_tokens=24, temperature=0.9, seed=1234)
    texts = [(await engine.submit_nowait(Job.ask("Tell me about cats.", params=p)).result()) for p in
             (GREEDY, GREEDY, sampled, sampled)]
    assert all(isinstance(t, Done) for t in texts)
    a, b, c, d = (t.text for t in texts)  # type: ignore[union-attr]
    assert a == b and c == d


async def test_history_is_trimmed_oldest_first_and_overlong_prompts_fail(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(CONTEXT_LENGTH=256, MAX_NEW_TOKENS=16)
    filler = "This is an old message about nothing in particular. " * 6
    history = [Turn("user" if i % 2 == 0 else "assistant", f"{i}: {filler}") for i in range(10)]
    events = [e async for e in engine.submit_nowait(Job(turns=(*history, Turn("user", "What is 2 + 2?"))))]
    started = next(e for e in events if isinstance(e, Started))
    assert started.dropped_turns >= 8 and started.prompt_tokens <= 256 - 16
    assert isinstance(events[-1], Done)
    result = await engine.submit_nowait(Job.ask("word " * 400)).result()
    assert isinstance(result, Failed) and result.kind == "prompt_too_long"
    assert "too long" in result.reason


async def test_duplicates_closed_engine_and_draining_shutdown(engine_factory: EngineFactory) -> None:
    engine = await engine_factory()
    engine.submit_nowait(Job.ask(QUESTIONS[0], params=GREEDY, dedup_key="evt-1"))
    with pytest.raises(DuplicateJob):
        engine.submit_nowait(Job.ask(QUESTIONS[0], params=GREEDY, dedup_key="evt-1"))
    running = engine.submit_nowait(Job.ask(QUESTIONS[1], params=GREEDY))
    await engine.stop(grace_s=30)  # drains: both finish
    assert isinstance(await running.result(), Done)
    with pytest.raises(EngineClosed):
        engine.submit_nowait(Job.ask(QUESTIONS[2]))
    assert not any(r.alive for r in engine.replicas)


async def test_shutdown_past_its_grace_fails_running_jobs(engine_factory: EngineFactory,
                                                          parallel_slots: int) -> None:
    engine = await engine_factory()
    running = fill_slots(engine, parallel_slots)
    queued = engine.submit_nowait(Job.ask(QUESTIONS[0], params=GREEDY))
    await first_text(running[0])
    await engine.stop(grace_s=0.2)
    for handle in (*running, queued):
        result = await handle.result()
        assert isinstance(result, Failed) and result.kind == "shutdown", result


async def test_a_model_that_cannot_load_fails_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 16)  # a valid header with no tensors at all
    # start-up checks would refuse this file; skip them to see the replica's own failure
    engine = Engine(EngineSettings.from_environ({"MODEL_PATH": str(bad), "NUM_WORKERS": "1"}, check_model=False))
    with pytest.raises(Exception, match=r"bad\.gguf"):
        await engine.start()
    assert not engine.replicas[0].alive


async def test_auto_threads_leave_a_busy_neighbour_its_cpu(engine_factory: EngineFactory) -> None:
    if (os.cpu_count() or 1) < 2 or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    engine = await engine_factory(NUM_THREADS="auto")
    cpus = engine.settings.num_threads
    assert engine.free_cpus == cpus
    # another program keeps a core busy
    neighbour = await asyncio.create_subprocess_exec(sys.executable, "-c", "while True: pass")
    try:
        await _until(lambda: engine.free_cpus == cpus - 1, timeout=20)
        answer = await engine.submit_nowait(Job.ask(QUESTIONS[0], params=GREEDY)).result()
        assert isinstance(answer, Done) and answer.text  # (answered with the CPUs left)
    finally:
        neighbour.kill()
        await neighbour.wait()
