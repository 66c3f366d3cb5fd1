"""The Redis queue end to end: a real redis-server, two real ``engbot worker`` processes on the default model.

The workers are shared by the module (each loads the model once); tests run in file order, the destructive ones
(a worker killed, Redis killed) last.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis import Redis

from engbot.http import make_app, readiness
from engbot.run import make_submitter
from engine.api import JobHandle
from engine.config import EngineSettings, QueueSettings
from engine.errors import ConfigError, DuplicateJob, EngineClosed, QueueFull
from engine.redis import RedisHost, RedisSubmitter
from engine.redis.codec import event_from_wire, event_to_wire, job_from_json, job_to_json, merge_text
from engine.redis.keys import Keys
from engine.redis.scripts import SUBMIT
from engine.redis.submitter import SUBMIT_ATTEMPTS
from engine.types import Done, Event, Failed, FailureKind, GenParams, Job, Queued, Started, TextPiece, Turn
from testkit.redis_server import ROOT, FaultyRedisProxy, RedisServer, WorkerProcess, free_port

VISIBILITY_S = 2
GREEDY = GenParams(max_new_tokens=16, temperature=0.0, repeat_penalty=1.0)
LONG = GenParams(max_new_tokens=1500, temperature=0.8, seed=1, ignore_eos=True)  # runs for many seconds
# a few seconds on any machine (no end-of-text before the limit), then stops
STEADY = GenParams(max_new_tokens=240, temperature=0.0, repeat_penalty=1.0, ignore_eos=True)
QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?", "What is 2 + 2?", "Name a primary colour."]

SUBMIT_SHA = hashlib.sha1(SUBMIT.encode()).hexdigest().encode()  # what EVALSHA of the submit script sends

SubmitterFactory = Callable[..., Awaitable[RedisSubmitter]]
ProxyFactory = Callable[..., Awaitable[FaultyRedisProxy]]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def workers(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[WorkerProcess]]:
    logs = tmp_path_factory.mktemp("workers")
    # one answer at a time per host, so tests know which jobs run and which wait
    env = {"QUEUE_BACKEND": "redis", "REDIS_URL": redis_server.url, "NUM_WORKERS": "1", "NUM_THREADS": "1",
           "PARALLEL_SLOTS": "1", "TEMPERATURE": "0", "MAX_NEW_TOKENS": "16",
           "REDIS_VISIBILITY_TIMEOUT_S": str(VISIBILITY_S), "SHUTDOWN_GRACE_S": "2"}
    procs = [WorkerProcess(env, logs / f"worker{i}.log") for i in range(2)]
    try:
        for proc in procs:
            proc.wait_ready()
        yield procs
    finally:
        for proc in procs:
            proc.stop()


@pytest.fixture
async def proxies(redis_server: RedisServer) -> AsyncIterator[ProxyFactory]:
    """Start proxies in front of the module's Redis, by default losing the reply to one submit (ask for this
    fixture before ``submitters``: the proxies outlive the submitters using them)."""
    started: list[FaultyRedisProxy] = []

    async def start(trigger: bytes = SUBMIT_SHA, drops: int = 1, hold: asyncio.Event | None = None
                    ) -> FaultyRedisProxy:
        proxy = FaultyRedisProxy(redis_server.port, trigger, drops, hold)
        await proxy.start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        await proxy.stop()


@pytest.fixture
async def submitters(redis_server: RedisServer) -> AsyncIterator[SubmitterFactory]:
    """Start RedisSubmitters (adapter processes) on the module's Redis; stop them all afterwards."""
    started: list[RedisSubmitter] = []

    async def start(margin_s: float = 10.0, **env: object) -> RedisSubmitter:
        environ = {"QUEUE_BACKEND": "redis", "REDIS_URL": redis_server.url, **{k: str(v) for k, v in env.items()}}
        submitter = RedisSubmitter(QueueSettings.from_environ(environ), deadline_margin_s=margin_s)
        await submitter.start()
        started.append(submitter)
        return submitter

    yield start
    for submitter in started:
        await submitter.stop(grace_s=0)


def redis_client(server: RedisServer) -> Redis:
    return Redis.from_url(server.url, decode_responses=True)


async def collect(handle: JobHandle, timeout: float = 60.0) -> list[Event]:
    async def all_events() -> list[Event]:
        return [event async for event in handle]

    return await asyncio.wait_for(all_events(), timeout)


def owner_of(server: RedisServer, keys: Keys, procs: list[WorkerProcess]) -> WorkerProcess:
    """The worker process holding the only pending job (consumer names are <host>-<process id>-<random>)."""
    with redis_client(server) as r:
        owner = r.xpending_range(keys.jobs, keys.group, "-", "+", 10)[0]["consumer"]
    return next(p for p in procs if owner.rsplit("-", 2)[1] == str(p.pid))


async def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def answer_of_last_attempt(events: list[Event]) -> str:
    """The text pieces after the last Started: what an adapter shows."""
    last = max(i for i, e in enumerate(events) if isinstance(e, Started))
    return "".join(e.text for e in events[last:] if isinstance(e, TextPiece))


# ------------------------------------------------------------------------------------- without workers


def test_settings_are_validated_and_the_password_masked() -> None:
    settings = QueueSettings.from_environ({"QUEUE_BACKEND": "redis", "REDIS_URL": "redis://:hunter2@db:6379/1",
                                           "REDIS_MAX_PENDING": "5", "JOB_DEADLINE_S": "60"})
    assert (settings.backend, settings.max_pending, settings.job_deadline_s) == ("redis", 5, 60.0)
    assert "hunter2" not in repr(settings) and ":***@db:6379/1" in repr(settings)
    assert QueueSettings.from_environ({}).backend == "memory"
    bad = [({"QUEUE_BACKEND": "kafka"}, "QUEUE_BACKEND"), ({"REDIS_URL": "http://:hunter2@db"}, "REDIS_URL"),
           ({"REDIS_MAX_PENDING": "0"}, "REDIS_MAX_PENDING"), ({"JOB_DEADLINE_S": "soon"}, "JOB_DEADLINE_S"),
           ({"REDIS_VISIBILITY_TIMEOUT_S": "0.1"}, "REDIS_VISIBILITY_TIMEOUT_S"),
           ({"REDIS_KEY_PREFIX": "a b"}, "REDIS_KEY_PREFIX")]
    for environ, name in bad:
        with pytest.raises(ConfigError) as info:
            QueueSettings.from_environ(environ)
        assert info.value.name == name and "hunter2" not in str(info.value)


def test_jobs_and_events_survive_the_wire() -> None:
    job = Job((Turn("user", "Héllo"), Turn("assistant", "Hi"), Turn("user", "2+2?")), params=GREEDY,
              platform="slack", dedup_key="ev1", system_prompt="Be brief.", model="code")
    assert job_from_json(job_to_json(job)) == job
    assert job_from_json(job_to_json(Job.ask("Hi"))).model is None
    for event in (Queued(2), Started(0, 0.1, 12, 1, attempt=2), TextPiece("ünï"),
                  Done("x", 1, 2, "stop", 0.1, 0.2, 0.3), Failed("timeout", "too long", "par")):
        wire = event_to_wire(event, attempt=3, seq=7)
        assert (wire["a"], wire["n"]) == (3, 7) and event_from_wire(wire) == event
    newer = {"a": 1, "n": 1, "t": "TextPiece", "f": {"text": "a", "added_later": 1}}
    assert event_from_wire(newer) == TextPiece("a")
    assert event_from_wire({"a": 1, "n": 2, "t": "SomethingNew", "f": {}}) is None
    started = Started(0, 0.1, 12)
    assert merge_text([started, TextPiece("a"), TextPiece("b"), Done("ab", 1, 2, "stop")]) == [
        started, TextPiece("ab"), Done("ab", 1, 2, "stop")]


def test_worker_refuses_to_start_without_redis(tmp_path: Path) -> None:
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}

    def worker(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "engbot", "worker"], capture_output=True, text=True,
                              env={**base, **env}, cwd=tmp_path, timeout=60, check=False)

    proc = worker(QUEUE_BACKEND="redis", REDIS_URL=f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    assert proc.returncode == 2, proc.stderr
    assert "REDIS_URL=redis://:***@127.0.0.1" in proc.stderr and "hunter2" not in proc.stderr
    proc = worker()
    assert proc.returncode == 2 and "QUEUE_BACKEND=redis" in proc.stderr


async def test_the_bound_is_cluster_wide_and_busy_at_once(submitters: SubmitterFactory) -> None:
    # a prefix no worker serves: jobs stay queued, then pass their deadline
    first = await submitters(margin_s=0.5, REDIS_KEY_PREFIX="bound:", REDIS_MAX_PENDING=2, JOB_DEADLINE_S=1)
    second = await submitters(margin_s=0.5, REDIS_KEY_PREFIX="bound:", REDIS_MAX_PENDING=2, JOB_DEADLINE_S=1)
    waiting = [await first.submit(Job.ask("one")), await second.submit(Job.ask("two"))]
    assert (waiting[0].position, waiting[1].position) == (0, 2)  # the second certainly waits: one is ahead
    for submitter in (first, second):
        began = time.monotonic()
        with pytest.raises(QueueFull):
            await submitter.submit(Job.ask("three"))
        assert time.monotonic() - began < 0.5
    assert readiness(first, [])["ready"] is True
    # nobody answers: the handles give up at the deadline, and the expired jobs no longer count
    for handle in waiting:
        final = await asyncio.wait_for(handle.result(), 10)
        assert isinstance(final, Failed) and final.kind == "timeout" and "1 s" in final.reason
    await first.submit(Job.ask("accepted again"))


async def test_the_reader_follows_the_latest_attempt_only(submitters: SubmitterFactory,
                                                         redis_server: RedisServer) -> None:
    # events written by hand, as two hosts would: no worker serves this prefix
    submitter = await submitters(REDIS_KEY_PREFIX="reader:")
    handle = await submitter.submit(Job.ask("hi"))
    stream = Keys("reader:").events(handle.job.id)

    def batch(*events: tuple[int, int, Event]) -> dict[str, str]:
        return {"b": json.dumps([event_to_wire(e, attempt=a, seq=n) for a, n, e in events])}

    with redis_client(redis_server) as r:
        r.xadd(stream, batch((1, 1, Started(0, 0.0, 5)), (1, 2, TextPiece("old "))))
        r.xadd(stream, {"b": "not json"})
        r.xadd(stream, batch((2, 1, Started(0, 0.0, 5)), (2, 2, TextPiece("new "))))
        r.xadd(stream, batch((1, 3, TextPiece("late ")), (2, 2, TextPiece("new ")), (2, 3, TextPiece("text"))))
        r.xadd(stream, batch((2, 4, Done("new text", 5, 2, "stop")), (2, 5, TextPiece("after the end"))))
    events = await collect(handle, 10)
    assert [type(e).__name__ for e in events] == ["Started", "TextPiece", "Started", "TextPiece", "TextPiece", "Done"]
    assert [e.attempt for e in events if isinstance(e, Started)] == [1, 2]
    assert answer_of_last_attempt(events) == "new text" == events[-1].text  # type: ignore[union-attr]


async def test_a_submit_without_a_reply_is_withdrawn(proxies: ProxyFactory, submitters: SubmitterFactory,
                                                    redis_server: RedisServer) -> None:
    # no worker serves this prefix: without the withdrawal the job would stay queued, holding the only place
    keys, bound = Keys("lost:"), {"REDIS_KEY_PREFIX": "lost:", "REDIS_MAX_PENDING": 1}
    proxy = await proxies(drops=100)
    lossy = await submitters(REDIS_URL=proxy.url, **bound)
    job = Job.ask("hi")
    with pytest.raises(EngineClosed):  # Redis queued it, but no reply came back, to any attempt
        await lossy.submit(job)
    assert proxy.dropped == SUBMIT_ATTEMPTS
    with redis_client(redis_server) as r:
        await wait_until(lambda: r.xlen(keys.jobs) == 0)  # withdrawn by the adapter, which still reaches Redis
        assert r.get(keys.job(job.id)) == "withdrawn"
        direct = await submitters(**bound)
        with pytest.raises(EngineClosed):  # the same job again (as a late copy of the submit would): still withdrawn
            await direct.submit(job)
        assert r.xlen(keys.jobs) == 0
        # the same while the caller gives up (cancelled) during the submit: Redis ran it, its reply is held
        hold = asyncio.Event()
        held = await submitters(REDIS_URL=(await proxies(hold=hold)).url, **bound)
        task = asyncio.create_task(held.submit(Job.ask("hello")))
        await wait_until(lambda: r.xlen(keys.jobs) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        hold.set()
        await wait_until(lambda: r.xlen(keys.jobs) == 0)
    handle = await direct.submit(Job.ask("the place is free"))  # not QueueFull
    handle.cancel()


# ---------------------------------------------------------------------------------------- with workers


async def test_answers_stream_back_from_two_workers(workers: list[WorkerProcess], redis_server: RedisServer) -> None:
    # built as `engbot run` builds it, and served with its /readyz and /metrics
    submitter = make_submitter({"QUEUE_BACKEND": "redis", "REDIS_URL": redis_server.url})
    assert isinstance(submitter, RedisSubmitter)
    await submitter.start()
    try:
        async with TestClient(TestServer(make_app(submitter, lambda: []), host="127.0.0.1")) as client:
            handles = [await submitter.submit(Job.ask(q, params=GREEDY)) for q in QUESTIONS]
            for handle in handles:
                events = await collect(handle)
                started = [e for e in events if isinstance(e, Started)]
                assert len(started) == 1 and started[0].attempt == 1 and started[0].prompt_tokens > 10
                done = events[-1]
                assert isinstance(done, Done), done
                assert done.text == answer_of_last_attempt(events) and done.text.strip()
                assert 0 < done.completion_tokens <= GREEDY.max_new_tokens
                assert 0 <= done.queue_wait_s <= done.time_to_first_token_s <= done.duration_s
            ready = await client.get("/readyz")
            assert ready.status == 200 and (await ready.json())["checks"] == {"engine": True, "redis": True}
            metrics = await (await client.get("/metrics")).text()
    finally:
        await submitter.stop(grace_s=0)
    assert 'engbot_requests_total{outcome="ok",platform="cli"} 4.0' in metrics
    assert "engbot_time_to_first_token_seconds_count 4.0" in metrics
    for proc in workers:  # both hosts answered some
        assert any(f"job {h.job.id[:8]} " in proc.log for h in handles), proc.log[-2000:]
    await asyncio.sleep(0.2)
    with redis_client(redis_server) as r:
        assert r.xlen(Keys("engbot:").jobs) == 0  # acknowledged jobs are deleted: the length counts live jobs
        assert not r.exists(*(Keys("engbot:").events(h.job.id) for h in handles))


async def test_a_duplicate_event_is_refused_across_adapter_processes(workers: list[WorkerProcess],
                                                                     submitters: SubmitterFactory) -> None:
    first, second = await submitters(), await submitters()
    handle = await first.submit(Job.ask(QUESTIONS[0], params=GREEDY, dedup_key="slack:Ev0001"))
    with pytest.raises(DuplicateJob):
        await second.submit(Job.ask(QUESTIONS[0], params=GREEDY, dedup_key="slack:Ev0001"))
    assert isinstance(await asyncio.wait_for(handle.result(), 60), Done)


async def test_a_lost_submit_reply_is_retried_without_queueing_the_job_twice(
        workers: list[WorkerProcess], proxies: ProxyFactory, submitters: SubmitterFactory,
        redis_server: RedisServer) -> None:
    proxy = await proxies(drops=1)
    submitter = await submitters(REDIS_URL=proxy.url)
    handle = await submitter.submit(Job.ask(QUESTIONS[2], params=GREEDY))  # no "unavailable": it was queued
    assert proxy.dropped == 1  # Redis ran the first submit; its reply was lost
    events = await collect(handle)
    assert [e.attempt for e in events if isinstance(e, Started)] == [1] and isinstance(events[-1], Done)
    with redis_client(redis_server) as r:  # every entry acknowledged: whatever ran, ran to its end
        await wait_until(lambda: r.xlen(Keys("engbot:").jobs) == 0, timeout=30)
    # answered once: each run of a job logs one "job <id> platform=... outcome=..." line on its host
    assert sum(proc.log.count(f"job {handle.job.id[:8]} platform=") for proc in workers) == 1


async def test_a_withdrawn_job_stops_on_its_worker(workers: list[WorkerProcess], proxies: ProxyFactory,
                                                   submitters: SubmitterFactory, redis_server: RedisServer) -> None:
    hold = asyncio.Event()
    proxy = await proxies(drops=SUBMIT_ATTEMPTS, hold=hold)
    submitter = await submitters(REDIS_URL=proxy.url)
    job = Job.ask("Tell me a long story about a lighthouse.", params=LONG)
    task = asyncio.create_task(submitter.submit(job))
    keys = Keys("engbot:")
    with redis_client(redis_server) as r:
        # Redis queued the job and a worker is answering it while the submit's reply is held; then it is lost,
        # and so are the replies to the retries
        await wait_until(lambda: r.xlen(keys.events(job.id)) > 0)
        hold.set()
        with pytest.raises(EngineClosed):
            await task
        await wait_until(lambda: r.xlen(keys.jobs) == 0, timeout=30)
    runner = next(proc for proc in workers if f"job {job.id[:8]} platform=" in proc.log)
    assert f"job {job.id[:8]} platform=cli outcome=cancelled" in runner.log


async def test_the_deadline_stops_running_and_waiting_jobs(workers: list[WorkerProcess],
                                                           submitters: SubmitterFactory) -> None:
    # a long margin: the "timeout" events must come from the workers, not from the handles giving up
    submitter = await submitters(margin_s=60, JOB_DEADLINE_S=2)
    began = time.monotonic()
    handles = [await submitter.submit(Job.ask(f"Tell me a long story about {x}.", params=LONG))
               for x in ("a cat", "a dog", "a fox")]
    results = [await collect(handle, 30) for handle in handles]
    assert time.monotonic() - began < 15
    for events in results:
        assert isinstance(events[-1], Failed) and events[-1].kind == "timeout", events[-1]
    cut = [events for events in results if any(isinstance(e, Started) for e in events)]
    never_started = [events for events in results if not any(isinstance(e, Started) for e in events)]
    assert len(cut) == 2 and len(never_started) == 1  # two ran on the two hosts; one waited past its deadline
    assert all(isinstance(events[-1], Failed) and events[-1].partial for events in cut)
    # both hosts are free again at once
    quick = await submitters()
    handles = [await quick.submit(Job.ask(q, params=GREEDY)) for q in QUESTIONS[:2]]
    done = await asyncio.gather(*(collect(handle, 30) for handle in handles))
    assert all(isinstance(events[-1], Done) for events in done)


async def test_a_worker_runs_as_many_jobs_at_once_as_its_engine_has_slots(
        redis_server: RedisServer, submitters: SubmitterFactory, tmp_path: Path) -> None:
    env = {"QUEUE_BACKEND": "redis", "REDIS_URL": redis_server.url, "REDIS_KEY_PREFIX": "slots:",
           "NUM_WORKERS": "1", "NUM_THREADS": "1", "PARALLEL_SLOTS": "2"}
    proc = WorkerProcess(env, tmp_path / "slots.log")
    try:
        await asyncio.to_thread(proc.wait_ready)
        submitter = await submitters(REDIS_KEY_PREFIX="slots:")
        handles = [await submitter.submit(Job.ask(q, params=STEADY))
                   for q in ("Explain how a bicycle works.", "Describe the water cycle.")]
        seen: list[Event] = []  # both jobs' events, in the order they arrived

        async def follow(handle: JobHandle) -> None:
            async for event in handle:
                seen.append(event)

        await asyncio.wait_for(asyncio.gather(*(follow(h) for h in handles)), 60)
    finally:
        proc.stop()
    finals = [i for i, e in enumerate(seen) if isinstance(e, Done | Failed)]
    assert len(finals) == 2 and all(isinstance(seen[i], Done) for i in finals), seen[-1]
    assert sum(isinstance(e, Started) for e in seen[:finals[0]]) == 2  # both answered at once by one replica


async def test_a_stopping_worker_hands_its_job_back(redis_server: RedisServer, submitters: SubmitterFactory,
                                                   tmp_path: Path) -> None:
    # own prefix and a long visibility timeout: a quick pickup can only come from the hand-back
    env = {"QUEUE_BACKEND": "redis", "REDIS_URL": redis_server.url, "REDIS_KEY_PREFIX": "drain:",
           "NUM_WORKERS": "1", "REDIS_VISIBILITY_TIMEOUT_S": "30", "SHUTDOWN_GRACE_S": "0.5"}
    procs = [WorkerProcess(env, tmp_path / f"drain{i}.log") for i in range(2)]
    try:
        for proc in procs:
            await asyncio.to_thread(proc.wait_ready)
        submitter = await submitters(REDIS_KEY_PREFIX="drain:")
        # long enough on any machine to outlast the stopping worker's grace
        params = GenParams(max_new_tokens=600, temperature=0.0, repeat_penalty=1.0, ignore_eos=True)
        handle = await submitter.submit(Job.ask("Explain how a bicycle works.", params=params))
        events: list[Event] = []
        async for event in handle:
            events.append(event)
            if isinstance(event, TextPiece):
                break
        stopping = owner_of(redis_server, Keys("drain:"), procs)
        stopped_at = time.monotonic()
        stop = asyncio.create_task(asyncio.to_thread(stopping.stop))
        restarted_after = 0.0
        async for event in handle:
            events.append(event)
            if isinstance(event, Started) and not restarted_after:
                restarted_after = time.monotonic() - stopped_at
        assert await stop == 0
        assert 0 < restarted_after < 15  # handed back: well before the 30 s visibility timeout
        assert [e.attempt for e in events if isinstance(e, Started)] == [1, 2]
        assert isinstance(events[-1], Done) and events[-1].text == answer_of_last_attempt(events)
        assert "handed 1 unfinished jobs back" in stopping.log
    finally:
        for proc in procs:
            proc.stop()


async def test_a_host_cut_off_from_redis_writes_nothing_after_a_takeover(
        redis_server: RedisServer, proxies: ProxyFactory, submitters: SubmitterFactory) -> None:
    # two hosts in this process (one host name and process id, as two containers with host networking would
    # have); the first one reaches Redis through a proxy, which then cuts it off while it answers
    proxy = await proxies(drops=0)
    queue = {"QUEUE_BACKEND": "redis", "REDIS_KEY_PREFIX": "cut:", "REDIS_VISIBILITY_TIMEOUT_S": str(VISIBILITY_S)}
    engine = EngineSettings.from_environ({"NUM_WORKERS": "1", "NUM_THREADS": "1", "PARALLEL_SLOTS": "1"})
    cut_off = RedisHost(QueueSettings.from_environ({**queue, "REDIS_URL": proxy.url}), engine)
    other = RedisHost(QueueSettings.from_environ({**queue, "REDIS_URL": redis_server.url}), engine)
    running: list[RedisHost] = []
    events: list[Event] = []

    def attempts() -> list[int]:
        return [e.attempt for e in events if isinstance(e, Started)]

    try:
        await cut_off.start()
        running.append(cut_off)
        submitter = await submitters(REDIS_KEY_PREFIX="cut:")
        handle = await submitter.submit(Job.ask("Explain how a bicycle works.", params=STEADY))

        async def follow() -> None:
            async for event in handle:
                events.append(event)

        follower = asyncio.create_task(follow())
        await wait_until(lambda: attempts() == [1])
        proxy.pause()  # it keeps answering, but can neither write nor refresh its claim
        await other.start()
        running.append(other)
        await wait_until(lambda: attempts() == [1, 2], timeout=30)  # the other host took the job over
        proxy.resume()  # back: its next write must find that the job is no longer its own
        await asyncio.wait_for(follower, 30)
    finally:
        for worker in running:
            await worker.stop(grace_s=0)
    finals = [e for e in events if isinstance(e, Done | Failed)]
    assert len(finals) == 1 and isinstance(finals[0], Done), finals
    assert finals[0].text == answer_of_last_attempt(events)
    assert (cut_off.taken_over, other.taken_over) == (0, 1)


async def test_a_killed_worker_s_job_is_taken_over(workers: list[WorkerProcess], submitters: SubmitterFactory,
                                                   redis_server: RedisServer) -> None:
    submitter = await submitters()
    handle = await submitter.submit(Job.ask("Explain how a bicycle works.", params=STEADY))
    events: list[Event] = []
    async for event in handle:
        events.append(event)
        if sum(isinstance(e, TextPiece) for e in events) == 3:
            break
    victim = owner_of(redis_server, Keys("engbot:"), workers)
    victim.kill_host()
    killed_at = time.monotonic()
    events += await collect(handle, 60)
    assert [e.attempt for e in events if isinstance(e, Started)] == [1, 2]
    finals = [e for e in events if isinstance(e, Done | Failed)]
    assert len(finals) == 1 and isinstance(finals[0], Done), finals
    assert finals[0].text == answer_of_last_attempt(events)
    assert time.monotonic() - killed_at >= VISIBILITY_S - 0.5  # taken over only once the claim went stale
    survivor = next(p for p in workers if p is not victim)
    assert "taking it over" in survivor.log
    await asyncio.sleep(0.2)
    with redis_client(redis_server) as r:
        assert r.xlen(Keys("engbot:").jobs) == 0


async def test_everything_recovers_after_redis_restarts(workers: list[WorkerProcess], submitters: SubmitterFactory,
                                                        redis_server: RedisServer) -> None:
    submitter = await submitters()
    handle = await submitter.submit(Job.ask("Describe the water cycle.", params=STEADY))
    events: list[Event] = []
    async for event in handle:
        events.append(event)
        if isinstance(event, TextPiece):
            break
    redis_server.kill()
    began = time.monotonic()
    with pytest.raises(EngineClosed):
        await submitter.submit(Job.ask(QUESTIONS[0], params=GREEDY))
    assert time.monotonic() - began < 1.0
    assert readiness(submitter, [])["ready"] is False
    await asyncio.sleep(1.5)  # the worker keeps generating, buffering its events
    redis_server.start()
    events += await collect(handle, 60)
    finals = [e for e in events if isinstance(e, Done | Failed)]
    assert len(finals) == 1 and isinstance(finals[0], Done), finals
    assert finals[0].text == answer_of_last_attempt(events)  # no piece lost or repeated
    # no process was restarted: new jobs flow again
    job = Job.ask(QUESTIONS[1], params=GREEDY)
    again = await collect(await submitter.submit(job), 60)
    assert isinstance(again[-1], Done)
    assert submitter.connected and readiness(submitter, [])["ready"] is True
    alive = [p for p in workers if p.process.poll() is None]
    assert len(alive) == 1 and f"job {job.id[:8]} " in alive[0].log  # answered by the host that lived through it
    assert "cannot write its events" in alive[0].log  # it did see Redis go away mid-answer


async def test_cancel_by_id_stops_the_job_on_its_host_and_frees_the_slot(
        redis_server: RedisServer, submitters: SubmitterFactory, tmp_path: Path) -> None:
    # one slot on one host: the second job can only run once the first one's slot is free
    env = {"QUEUE_BACKEND": "redis", "REDIS_URL": redis_server.url, "REDIS_KEY_PREFIX": "cancel:",
           "NUM_WORKERS": "1", "NUM_THREADS": "1", "PARALLEL_SLOTS": "1"}
    proc = WorkerProcess(env, tmp_path / "cancel.log")
    try:
        await asyncio.to_thread(proc.wait_ready)
        submitter = await submitters(REDIS_KEY_PREFIX="cancel:")
        long = GenParams(max_new_tokens=1500, temperature=0.8, seed=1, ignore_eos=True)  # tens of seconds
        victim = await submitter.submit(Job.ask("Write a very long essay about the sea.", params=long))
        async for event in victim:
            if isinstance(event, TextPiece):
                break
        waiting = await submitter.submit(Job.ask("What is 2 + 2?", params=GenParams(max_new_tokens=8)))
        assert submitter.cancel(victim.job.id)
        final = await victim.result()  # at once, with the text so far
        assert isinstance(final, Failed) and final.kind is FailureKind.CANCELLED and final.partial
        assert isinstance(await asyncio.wait_for(waiting.result(), 60), Done)
        await wait_until(lambda: f"job {victim.job.id[:8]} platform=cli outcome=cancelled" in proc.log)
        with redis_client(redis_server) as r:  # acknowledged: nobody will take it over and run it again
            assert r.xpending("cancel:jobs", "cancel:workers")["pending"] == 0
        assert not submitter.cancel(victim.job.id)
    finally:
        proc.stop()


async def test_a_waiting_job_hears_its_place_in_line_as_it_moves(
        redis_server: RedisServer, submitters: SubmitterFactory, tmp_path: Path) -> None:
    env = {"QUEUE_BACKEND": "redis", "REDIS_URL": redis_server.url, "REDIS_KEY_PREFIX": "line:",
           "NUM_WORKERS": "1", "NUM_THREADS": "1", "PARALLEL_SLOTS": "1"}  # one host, one slot
    proc = WorkerProcess(env, tmp_path / "line.log")
    try:
        await asyncio.to_thread(proc.wait_ready)
        submitter = await submitters(REDIS_KEY_PREFIX="line:")
        long = GenParams(max_new_tokens=1500, temperature=0.8, seed=1, ignore_eos=True)  # until cancelled
        busy = await submitter.submit(Job.ask("Write a very long essay about the sea.", params=long))
        async for event in busy:
            if isinstance(event, TextPiece):
                break
        first = await submitter.submit(Job.ask("Write a very long essay about rivers.", params=long))
        second = await submitter.submit(Job.ask(QUESTIONS[1], params=GenParams(max_new_tokens=8)))
        # (a job with only claimed ones ahead may be claimed at once: it hears its place at the next lookup)
        await wait_until(lambda: (first.position, second.position) == (1, 2), timeout=15)
        assert submitter.cancel(busy.job.id)  # the slot frees: the first waiting job starts there
        await wait_until(lambda: first.position == 0 and second.position == 1, timeout=15)
        assert submitter.cancel(first.job.id)
        events = await collect(second)
    finally:
        proc.stop()
    queued = [e for e in events if isinstance(e, Queued)]
    assert [e.position for e in queued] == [2, 1] and all(e.eta_s is None or e.eta_s > 0 for e in queued)
    assert isinstance(events[-1], Done)
