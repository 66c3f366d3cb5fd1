"""Follow-ups from cache on any host: a real redis-server and real engine hosts on the default model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from redis.asyncio import Redis

from engine.api import JobHandle
from engine.config import EngineSettings, QueueSettings
from engine.redis import RedisHost, RedisSubmitter
from engine.redis.affinity import Affinity, conversation_key
from engine.redis.keys import Keys
from engine.types import Done, Event, GenParams, Job, Started, TextPiece, Turn
from testkit.redis_server import RedisServer

GREEDY = GenParams(max_new_tokens=8, temperature=0.0, repeat_penalty=1.0)
# runs for many seconds on any machine (no end-of-text before the limit)
LONG = GenParams(max_new_tokens=1500, temperature=0.8, seed=1, ignore_eos=True)
QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?", "What is 2 + 2?", "Name a primary colour."]

HostFactory = Callable[..., Awaitable[RedisHost]]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def cluster(redis_server: RedisServer, request: pytest.FixtureRequest
                  ) -> AsyncIterator[tuple[HostFactory, RedisSubmitter, Keys]]:
    """Engine hosts and one submitter under a prefix of this test's own."""
    prefix = f"{request.node.name[:40]}:"
    environ = {"QUEUE_BACKEND": "redis", "REDIS_URL": redis_server.url, "REDIS_KEY_PREFIX": prefix,
               "NUM_WORKERS": "1", "NUM_THREADS": "1", "TEMPERATURE": "0", "REDIS_VISIBILITY_TIMEOUT_S": "5",
               "SHUTDOWN_GRACE_S": "0"}
    hosts: list[RedisHost] = []

    async def host(slots: int) -> RedisHost:
        env = {**environ, "PARALLEL_SLOTS": str(slots)}
        started = RedisHost(QueueSettings.from_environ(env), EngineSettings.from_environ(env))
        await started.start()
        hosts.append(started)
        return started

    submitter = RedisSubmitter(QueueSettings.from_environ(environ))
    await submitter.start()
    try:
        yield host, submitter, Keys(prefix)
    finally:
        await submitter.stop(grace_s=0)
        await asyncio.gather(*(h.stop(grace_s=0) for h in hosts))


async def collect(handle: JobHandle, timeout: float = 120.0) -> list[Event]:
    async def all_events() -> list[Event]:
        return [event async for event in handle]

    return await asyncio.wait_for(all_events(), timeout)


def followups(host: RedisHost, where: str) -> float:
    value = host.engine.metrics.registry.get_sample_value("engbot_redis_followups_total", {"where": where})
    return value or 0.0


def follow_up(question: str, answer: str) -> Job:
    return Job(turns=(Turn("user", question), Turn("assistant", answer), Turn("user", "Say it again, shorter.")),
               params=GREEDY)


def test_every_job_of_a_thread_has_the_same_conversation_key() -> None:
    first = Job.ask(QUESTIONS[0])
    assert conversation_key(first) == conversation_key(follow_up(QUESTIONS[0], "Paris."))
    assert conversation_key(first) != conversation_key(Job.ask(QUESTIONS[1]))
    assert conversation_key(first) != conversation_key(Job.ask(QUESTIONS[0], system_prompt="Be a pirate."))
    assert len(conversation_key(first)) == 24 and conversation_key(first) == conversation_key(Job.ask(QUESTIONS[0]))


async def test_a_job_aimed_at_a_holder_with_room_is_passed_to_it_and_kept_when_it_is_full(
        redis_server: RedisServer) -> None:
    # two hosts' sides without engines: a reader and the holder, so who reads the entry is certain
    keys = Keys("pass:")
    environ = {"QUEUE_BACKEND": "redis", "REDIS_URL": redis_server.url, "REDIS_KEY_PREFIX": keys.prefix}
    submitter = RedisSubmitter(QueueSettings.from_environ(environ))
    await submitter.start()
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        holder, reader = (Affinity(redis, keys, name, room_ttl_s=5) for name in ("holder-1", "reader-1"))
        await holder.open()
        job = Job.ask(QUESTIONS[0], params=GREEDY)
        await redis.set(keys.holder(conversation_key(job)), "holder-1")
        await holder.say_room(1)

        handle = await submitter.submit(job)
        read = await redis.xreadgroup(keys.group, "reader-1", {keys.jobs: ">"}, count=1)
        (entry_id, values), = read[0][1]
        assert values["aim"] == "holder-1"
        assert await reader.sort(keys.group, [(entry_id, values)]) == []  # passed on
        pending = await redis.xpending_range(keys.jobs, keys.group, "-", "+", 10)
        assert [(p["message_id"], p["consumer"]) for p in pending] == [(entry_id, "holder-1")]
        inbox = await redis.xreadgroup(keys.group, "holder-1", {holder.inbox: ">"})
        (passed_id, passed_values), = await holder.received(inbox[0][1])
        assert passed_id == entry_id and passed_values["job"] == values["job"]
        assert await redis.xlen(holder.inbox) == 0 and await redis.get(keys.room("holder-1")) == "0"
        assert reader.passed == 1 and holder.followups.labels("holder")._value.get() == 1

        # the holder is full now: the next job of the thread stays with whoever read it
        second = follow_up(QUESTIONS[0], "Paris.")
        await submitter.submit(second)
        read = await redis.xreadgroup(keys.group, "reader-1", {keys.jobs: ">"}, count=1)
        entries = read[0][1]
        assert await reader.sort(keys.group, entries) == entries
        assert reader.passed == 1 and reader.followups.labels("elsewhere")._value.get() == 1

        # a stopping holder hands back what was passed to it and not read yet, and takes no more
        await holder.say_room(3)
        third = follow_up(QUESTIONS[0], "Paris!")
        await submitter.submit(third)
        read = await redis.xreadgroup(keys.group, "reader-1", {keys.jobs: ">"}, count=1)
        third_id = read[0][1][0][0]
        assert await reader.sort(keys.group, read[0][1]) == []
        assert await holder.close(keys.group) == [third_id]
        assert not await redis.exists(keys.room("holder-1"), holder.inbox)
        handle.cancel()
    finally:
        await submitter.stop(grace_s=0)
        await redis.aclose()


async def test_a_holder_says_its_room_again_after_a_pass_took_one_off_it(redis_server: RedisServer) -> None:
    # a pass decrements the holder's room key; the holder's count may be the same at its next say (a job ended as
    # the passed one arrived), and the key must still show its real room, or follow-ups run elsewhere
    keys = Keys("again:")
    environ = {"QUEUE_BACKEND": "redis", "REDIS_URL": redis_server.url, "REDIS_KEY_PREFIX": keys.prefix}
    submitter = RedisSubmitter(QueueSettings.from_environ(environ))
    await submitter.start()
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        holder, reader = (Affinity(redis, keys, name, room_ttl_s=5) for name in ("holder-1", "reader-1"))
        await holder.open()
        job = Job.ask(QUESTIONS[0], params=GREEDY)
        await redis.set(keys.holder(conversation_key(job)), "holder-1")
        await holder.say_room(1)
        handle = await submitter.submit(job)
        read = await redis.xreadgroup(keys.group, "reader-1", {keys.jobs: ">"}, count=1)
        assert await reader.sort(keys.group, read[0][1]) == []  # passed on
        assert await redis.get(keys.room("holder-1")) == "0"
        inbox = await redis.xreadgroup(keys.group, "holder-1", {holder.inbox: ">"})
        assert len(await holder.received(inbox[0][1])) == 1
        await holder.say_room(1)
        assert await redis.get(keys.room("holder-1")) == "1"
        handle.cancel()
    finally:
        await submitter.stop(grace_s=0)
        await redis.aclose()


async def test_follow_ups_go_to_the_host_holding_their_thread_and_read_it_from_cache(
        cluster: tuple[HostFactory, RedisSubmitter, Keys], redis_server: RedisServer) -> None:
    host, submitter, keys = cluster
    hosts = [await host(2), await host(2)]
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        for question in QUESTIONS:
            first = Job.ask(question, params=GREEDY)
            done = (await collect(await submitter.submit(first)))[-1]
            assert isinstance(done, Done), done
            holder = await redis.get(keys.holder(conversation_key(first)))
            assert holder in {h.consumer for h in hosts}

            events = await collect(await submitter.submit(follow_up(question, done.text)))
            started = next(e for e in events if isinstance(e, Started))
            assert isinstance(events[-1], Done), events[-1]
            assert started.cached_tokens > 0 and started.cached_tokens < started.prompt_tokens
            assert await redis.get(keys.holder(conversation_key(first))) == holder  # answered there again
    finally:
        await redis.aclose()
    assert sum(followups(h, "holder") for h in hosts) == len(QUESTIONS)
    assert sum(followups(h, "elsewhere") for h in hosts) == 0


async def test_a_follow_up_whose_holder_is_full_runs_on_another_host_at_once(
        cluster: tuple[HostFactory, RedisSubmitter, Keys], redis_server: RedisServer) -> None:
    host, submitter, _ = cluster
    hosts = [await host(1), await host(1)]
    first = Job.ask(QUESTIONS[1], params=GREEDY)
    done = (await collect(await submitter.submit(first)))[-1]
    assert isinstance(done, Done), done

    # the holder's one slot is taken by a long answer in the same thread (aimed at it, so it runs there)
    busy = await submitter.submit(Job(turns=follow_up(QUESTIONS[1], done.text).turns, params=LONG))
    async for event in busy:
        if isinstance(event, TextPiece):
            break
    events = await collect(await submitter.submit(follow_up(QUESTIONS[1], done.text)))
    assert isinstance(events[-1], Done), events[-1]
    assert not busy.done  # answered while the holder's only slot is still taken: it did not wait for it
    assert sum(followups(h, "elsewhere") for h in hosts) == 1
    assert sum(followups(h, "holder") for h in hosts) == 1  # the long one
    busy.cancel()
