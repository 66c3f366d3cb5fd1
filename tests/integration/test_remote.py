"""The remote backend (MODEL_BACKEND=openai) against a real OpenAI-compatible server: llama-cpp-python's own
(``testkit/openai_server.py``) with the bundled model, and ``testkit/openai_proxy.py`` in front of it for what a
busy server does (429, 503, a slow first token, a strict model list). A crash is the server process killed.

Model text is never asserted, only its properties, and that engbot passes on exactly what the server wrote.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import openai
import pytest
import pytest_asyncio

from bots.messages import Messages, failure_text
from engine.api import JobHandle
from engine.config import EngineSettings, QueueSettings
from engine.errors import ConfigError, DuplicateJob, ModelServerUnavailable, QueueFull
from engine.redis import RedisHost, RedisSubmitter
from engine.remote import RemoteSettings, RemoteSubmitter
from engine.remote.request import CONTINUE_PROMPT
from engine.types import Done, Event, Failed, FailureKind, GenParams, Job, Queued, Started, TextPiece, Turn
from testkit.openai_proxy import FaultProxy
from testkit.openai_server import ALIAS, LlamaCppServer, free_port
from testkit.redis_server import RedisServer

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]
KEY = "sk-engbot-test-key"
LONG = GenParams(max_new_tokens=400, temperature=0.8, seed=7)  # runs until stopped (or 400 tokens)
Start = Callable[..., Awaitable[RemoteSubmitter]]


@pytest.fixture(scope="module")
def server(model_path: Path) -> Iterator[LlamaCppServer]:
    """One llama-cpp-python server for the module (it answers one request at a time)."""
    running = LlamaCppServer(model_path, api_key=KEY)
    running.start_sync()
    yield running
    running.stop_sync()


@pytest_asyncio.fixture(loop_scope="module")
async def proxy(server: LlamaCppServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(server.url) as fake:
        yield fake


def environ(url: str, **env: object) -> dict[str, str]:
    return {"MODEL_BACKEND": "openai", "OPENAI_BASE_URL": url, "OPENAI_API_KEY": KEY, "OPENAI_MODEL": ALIAS,
            "TEMPERATURE": "0", "MAX_NEW_TOKENS": "24", **{k: str(v) for k, v in env.items()}}


@pytest_asyncio.fixture(loop_scope="module")
async def start() -> AsyncIterator[Start]:
    """Start remote submitters with the given settings; stop them all afterwards."""
    started: list[RemoteSubmitter] = []

    async def make(url: str, **env: object) -> RemoteSubmitter:
        values = environ(url, **env)
        submitter = RemoteSubmitter(EngineSettings.from_environ(values), RemoteSettings.from_environ(values))
        await submitter.start()
        started.append(submitter)
        return submitter

    yield make
    for submitter in started:
        await submitter.stop(grace_s=0)


async def events(handle: JobHandle) -> list[Event]:
    return [event async for event in handle]


async def first_text(handle: JobHandle) -> None:
    async for event in handle:
        if isinstance(event, TextPiece):
            return
        assert not isinstance(event, Done | Failed), event


# ---- answering ----


async def test_an_answer_streams_exactly_what_the_server_writes(server: LlamaCppServer, start: Start) -> None:
    # llama-cpp-python reuses a cached prompt prefix, and a prompt read whole or from its cache can differ in a near
    # tie: the server reads this prompt once first, so engbot's request and the direct one below both hit its cache
    client = openai.AsyncOpenAI(base_url=server.url, api_key=KEY)
    asked = [{"role": "system", "content": "You are a helpful assistant."},
             {"role": "user", "content": "What is the capital of France?"}]

    async def direct() -> str | None:
        answer = await client.chat.completions.create(model=ALIAS, max_tokens=24, temperature=0.0, top_p=0.95,
                                                      messages=asked)  # type: ignore[arg-type]
        return answer.choices[0].message.content

    await direct()
    remote = await start(server.url)
    assert remote.describe() == f"model server ready: {ALIAS} at {server.url}, at most 4 answers at once"
    handle = await remote.submit(Job.ask("What is the capital of France?", platform="slack"))
    seen = await events(handle)
    assert isinstance(seen[0], Started) and isinstance(seen[-1], Done)
    pieces = [e.text for e in seen if isinstance(e, TextPiece)]
    done = seen[-1]
    assert len(pieces) > 1 and done.text == "".join(pieces) and done.text.strip()
    assert done.completion_tokens == len(pieces) and done.finish_reason in ("stop", "length")
    assert 0 < done.time_to_first_token_s <= done.duration_s
    assert await direct() == done.text  # the same request to the server directly: the same text
    await client.close()
    metrics = remote.metrics.requests.labels("slack", "ok")._value.get()
    assert metrics == 1 and remote.health().ok and remote.health().checks == {"engine": True, "server": True}


async def test_the_only_model_is_taken_when_openai_model_is_empty(server: LlamaCppServer, start: Start) -> None:
    remote = await start(server.url, OPENAI_MODEL="")
    assert remote.model == ALIAS and remote.server is not None and remote.server.served == (ALIAS,)


async def test_start_up_stops_on_a_wrong_key_model_or_url(server: LlamaCppServer, proxy: FaultProxy,
                                                          start: Start) -> None:
    with pytest.raises(ConfigError) as info:
        await start(server.url, OPENAI_API_KEY="sk-wrong-key-123")
    assert info.value.name == "OPENAI_API_KEY" and "refused it (401" in str(info.value)
    assert "sk-wrong-key-123" not in str(info.value)
    with pytest.raises(ConfigError, match=r"OPENAI_API_KEY.*refused it"):
        await start(server.url, OPENAI_API_KEY="")
    proxy.strict_models = True  # a server that serves only the models it lists, as vLLM: 404 for others
    with pytest.raises(ConfigError) as info:
        await start(proxy.url, OPENAI_MODEL="llama-70b")
    assert info.value.name == "OPENAI_MODEL" and f"it serves: {ALIAS}" in str(info.value)
    proxy.strict_models = False
    lenient = await start(server.url, OPENAI_MODEL="llama-70b")  # llama-cpp-python answers to any name
    assert lenient.server is not None and "not among the models the server lists" in lenient.server.note
    with pytest.raises(ConfigError) as info:
        await start(server.url.removesuffix("/v1"))  # the usual mistake: no /v1
    assert info.value.name == "OPENAI_BASE_URL" and "usually ends with /v1" in str(info.value)
    with pytest.raises(ModelServerUnavailable, match="cannot reach the model server at OPENAI_BASE_URL="):
        await start(f"http://127.0.0.1:{free_port()}/v1")


async def test_stop_closes_the_stream_and_the_server_frees_its_slot(server: LlamaCppServer, proxy: FaultProxy,
                                                                     start: Start) -> None:
    remote = await start(proxy.url)
    handle = await remote.submit(Job.ask("Tell me a very long story about a dragon.", params=LONG))
    await first_text(handle)
    assert remote.cancel(handle.job.id)
    final = await handle.result()
    assert isinstance(final, Failed) and final.kind is FailureKind.CANCELLED and final.partial
    await proxy.wait_for(lambda: proxy.calls[-1].client_closed)  # engbot closed the connection mid-answer
    assert not proxy.calls[-1].completed
    await proxy.wait_for(lambda: "Disconnected from client" in server.log)  # and the server stopped generating
    assert not remote.cancel(handle.job.id)
    after = await (await remote.submit(Job.ask("Say hello."))).result()
    assert isinstance(after, Done) and after.text.strip() and remote.running == 0


async def test_a_stop_while_waiting_or_before_the_first_token(proxy: FaultProxy, start: Start) -> None:
    remote = await start(proxy.url, REMOTE_MAX_INFLIGHT=1)
    proxy.first_token_delay = 30.0
    slow = await remote.submit(Job.ask("Tell me about the sea."))
    waiting = await remote.submit(Job.ask("And about the sky?"))
    assert [e async for e in _until(waiting, Queued)] == [Queued(1, None)]
    remote.cancel(waiting.job.id)
    assert (await waiting.result()).kind is FailureKind.CANCELLED  # type: ignore[union-attr]
    await proxy.wait_for(lambda: len(proxy.calls) == 1 and proxy.calls[0].status == 200)
    remote.cancel(slow.job.id)  # the server is still reading the prompt: the request is dropped all the same
    final = await slow.result()
    assert isinstance(final, Failed) and final.kind is FailureKind.CANCELLED and final.partial == ""
    await proxy.wait_for(lambda: proxy.calls[0].client_closed)
    assert len(proxy.calls) == 1  # the waiting one never went to the server
    proxy.first_token_delay = 0.0


async def _until(handle: JobHandle, kind: type) -> AsyncIterator[Event]:
    async for event in handle:
        yield event
        if isinstance(event, kind):
            return


# ---- a busy, slow or dead server ----


@pytest.mark.parametrize("status", [429, 503])
async def test_a_busy_server_is_retried_while_the_question_waits(proxy: FaultProxy, start: Start,
                                                                  status: int) -> None:
    remote = await start(proxy.url)
    proxy.refuse(status, times=2, retry_after="0")
    seen = await events(await remote.submit(Job.ask("Name a colour.")))
    assert [type(e) for e in seen[:3]] == [Queued, Queued, Started] and isinstance(seen[-1], Done)
    assert [c.status for c in proxy.calls[-3:]] == [status, status, 200]


async def test_a_server_that_stays_busy_is_told_to_the_user(proxy: FaultProxy, start: Start) -> None:
    remote = await start(proxy.url, REMOTE_RETRY_S=1.5)
    proxy.refuse(429, times=1000, retry_after="1")
    final = await (await remote.submit(Job.ask("Name a colour."))).result()
    proxy.clear()
    assert isinstance(final, Failed) and final.kind is FailureKind.BUSY and "429" in final.reason
    assert failure_text(final) == Messages.BUSY
    assert 2 <= len(proxy.calls) <= 3  # retried at the server's Retry-After for REMOTE_RETRY_S, no more


async def test_a_slow_first_token_is_waited_for_within_the_generation_timeout(proxy: FaultProxy,
                                                                              start: Start) -> None:
    remote = await start(proxy.url, GENERATION_TIMEOUT_S=30)
    proxy.first_token_delay = 1.0
    handle = await remote.submit(Job.ask("Say hello."))
    seen = await events(handle)
    done = seen[-1]
    assert isinstance(seen[0], Started) and isinstance(done, Done) and done.text.strip()
    assert done.time_to_first_token_s >= 1.0  # (the delay the proxy added: started, then waited for the text)
    assert proxy.calls[-1].completed

    remote = await start(proxy.url, GENERATION_TIMEOUT_S=0.5)
    proxy.first_token_delay = 5.0
    final = await (await remote.submit(Job.ask("Say hello."))).result()
    proxy.first_token_delay = 0.0
    assert isinstance(final, Failed) and final.kind is FailureKind.TIMEOUT and "0.5 s" in final.reason
    await proxy.wait_for(lambda: proxy.calls[-1].client_closed)


async def test_a_server_killed_mid_answer(model_path: Path, start: Start) -> None:
    async with LlamaCppServer(model_path, api_key=KEY) as dying:
        remote = await start(dying.url, REMOTE_RETRY_S=1)
        handle = await remote.submit(Job.ask("Tell me a very long story about a knight.", params=LONG))
        await first_text(handle)
        await dying.kill()
        final = await handle.result()
        assert isinstance(final, Failed) and final.kind is FailureKind.UNAVAILABLE and final.partial
        assert failure_text(final) == "⚠️ The model server broke off the answer: please try again in a moment."
        assert remote.health().ok and not remote.health().checks["server"]  # /readyz says so; alive all the same

        gone = await (await remote.submit(Job.ask("Anyone there?"))).result()  # retried for REMOTE_RETRY_S
        assert isinstance(gone, Failed) and gone.kind is FailureKind.UNAVAILABLE
        assert gone.reason == "could not be reached"

        await dying.start()  # back, on the same port
        back = await (await remote.submit(Job.ask("Say hello."))).result()
        assert isinstance(back, Done) and remote.health().checks["server"]


# ---- the queue in front of the server ----


async def test_waiting_is_bounded_fair_and_limited(proxy: FaultProxy, start: Start) -> None:
    remote = await start(proxy.url, REMOTE_MAX_INFLIGHT=1, QUEUE_MAX_SIZE=3, QUEUE_TIMEOUT_S=20)
    proxy.first_token_delay = 1.0  # the first answer holds the only slot a while
    first = await remote.submit(Job.ask("a0: say one word.", user="alice"))
    alice = [await remote.submit(Job.ask(f"a{i}: say one word.", user="alice")) for i in (1, 2)]
    bob = await remote.submit(Job.ask("b1: say one word.", user="bob"))
    assert [alice[0].position, alice[1].position, bob.position] == [1, 3, 2]  # bob goes before alice's second
    with pytest.raises(QueueFull):
        await remote.submit(Job.ask("one too many"))
    assert remote.queued == 3 and remote.running == 1
    results = await asyncio.gather(*(h.result() for h in (first, *alice, bob)))
    proxy.first_token_delay = 0.0
    assert all(isinstance(r, Done) for r in results)
    asked = [c.messages[-1]["content"][:2] for c in proxy.calls[-4:]]
    assert asked == ["a0", "a1", "b1", "a2"]

    dedup = Job.ask("once", dedup_key="slack:C1:1.0")
    await (await remote.submit(dedup)).result()
    with pytest.raises(DuplicateJob):
        await remote.submit(Job.ask("once", dedup_key="slack:C1:1.0"))

    short = await start(proxy.url, REMOTE_MAX_INFLIGHT=1, QUEUE_TIMEOUT_S=0.3)
    proxy.first_token_delay = 2.0
    held = await short.submit(Job.ask("hold the slot"))
    late = await short.submit(Job.ask("wait too long"))
    expired = await late.result()
    proxy.first_token_delay = 0.0
    assert isinstance(expired, Failed) and expired.kind is FailureKind.BUSY
    assert isinstance(await held.result(), Done)


async def test_shutdown_ends_what_is_left_with_a_restarting_reply(proxy: FaultProxy, start: Start) -> None:
    remote = await start(proxy.url)
    handle = await remote.submit(Job.ask("Tell me a very long story about a ship.", params=LONG))
    await first_text(handle)
    await remote.stop(grace_s=0)
    final = await handle.result()
    assert isinstance(final, Failed) and final.kind is FailureKind.SHUTDOWN and final.partial
    await proxy.wait_for(lambda: proxy.calls[-1].client_closed)
    assert not remote.accepting


# ---- Continue, Regenerate, long conversations ----


async def test_continue_sends_the_answer_so_far_and_regenerate_samples_anew(proxy: FaultProxy, start: Start) -> None:
    remote = await start(proxy.url)
    question = (Turn("user", "List three colours."),)
    cut = "1. Red\n2."
    done = await (await remote.submit(Job(question, prefill=cut))).result()
    assert isinstance(done, Done) and done.text.strip() and not done.text.startswith(cut)  # only the new text
    body = proxy.calls[-1].body
    assert body["messages"][-1] == {"role": "assistant", "content": cut}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False  # vLLM's hint

    ask = await start(proxy.url, REMOTE_CONTINUE="ask")  # for servers that cannot continue a message
    done = await (await ask.submit(Job(question, prefill=cut))).result()
    assert isinstance(done, Done) and done.text.strip()
    sent = proxy.calls[-1].messages
    assert sent[-2:] == [{"role": "assistant", "content": cut}, {"role": "user", "content": CONTINUE_PROMPT}]
    assert "continue_final_message" not in proxy.calls[-1].body

    again = await (await remote.submit(Job(question, resample=True))).result()
    assert isinstance(again, Done)
    body = proxy.calls[-1].body
    assert body["temperature"] == 0.7 and isinstance(body["seed"], int)  # never greedy, a new seed
    assert "continue_final_message" not in body


async def test_a_conversation_too_long_for_the_server_loses_its_oldest_turns(proxy: FaultProxy,
                                                                            start: Start) -> None:
    remote = await start(proxy.url)
    old = "Here is a long text about nothing in particular. " * 250  # about 2,500 tokens: past n_ctx 2048
    turns = (Turn("user", old), Turn("assistant", "Noted."), Turn("user", "What is the capital of France?"))
    seen = await events(await remote.submit(Job(turns)))
    started = next(e for e in seen if isinstance(e, Started))
    assert isinstance(seen[-1], Done) and started.dropped_turns == 2  # the old question and its answer
    assert [c.status for c in proxy.calls[-2:]] == [400, 200]
    assert proxy.calls[-1].messages[1:] == [{"role": "user", "content": "What is the capital of France?"}]

    final = await (await remote.submit(Job.ask(old))).result()
    assert isinstance(final, Failed) and final.kind is FailureKind.PROMPT_TOO_LONG
    assert "too long" in failure_text(final)


# ---- many bot processes: the Redis queue, hosts in front of the server ----


async def test_redis_hosts_can_answer_with_the_model_server(proxy: FaultProxy, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    queue = QueueSettings.from_environ({"QUEUE_BACKEND": "redis", "REDIS_URL": redis.url})
    values = environ(proxy.url, REMOTE_MAX_INFLIGHT=2)
    settings = EngineSettings.from_environ(values)
    host = RedisHost(queue, settings, engine=RemoteSubmitter(settings, RemoteSettings.from_environ(values)))
    bot = RedisSubmitter(queue)
    try:
        await host.start()
        await bot.start()
        assert host.capacity == 2
        handles = [await bot.submit(Job.ask(q)) for q in ("Say hello.", "Name three colours.",
                                                           "What is the capital of France?")]
        results = await asyncio.gather(*(h.result() for h in handles))
        assert all(isinstance(r, Done) and r.text.strip() for r in results), results
        assert len(proxy.calls) == 3
        runaway = await bot.submit(Job.ask("Tell me a very long story about a river.", params=LONG))
        await first_text(runaway)
        bot.cancel(runaway.job.id)  # from the bot process, through Redis, to the host: it closes the stream
        await proxy.wait_for(lambda: proxy.calls[-1].client_closed)
    finally:
        await bot.stop(grace_s=0)
        await host.stop(grace_s=0)
        redis.stop()
