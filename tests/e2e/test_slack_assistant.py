"""Slack's AI surface end to end, through the real slack-bolt client in Socket Mode against the fake Slack: answers
streamed with chat.startStream / appendStream / stopStream, the fallback to edits when Slack refuses a stream, the
user's own stop button, the thread's status, suggested prompts and titles."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
import pytest_asyncio

from bots.messages import Messages
from bots.slack.adapter import SlackAdapter
from bots.slack.assistant import DEFAULT_PROMPTS, SuggestedPrompt, prompt_args
from bots.slack.settings import SlackSettings
from bots.text import markdown_to_mrkdwn
from engine.api import JobHandle
from engine.local import Engine
from engine.types import Done, Failed, FailureKind, GenParams, Job, TextPiece
from testkit.fake_slack import FakeSlack
from testkit.fake_slack_ai import stream_tiers
from testkit.scripted import ScriptedEngine, answer

INTERVAL_S = 0.1  # appends (and status changes) at most every 0.1 s: Slack's twice a second, compressed
LONG = GenParams(max_new_tokens=1500, temperature=0.8, seed=1, ignore_eos=True)  # busy until stopped
ANSWER = ("Paris is the **capital** of France.\n\n- It has the Eiffel Tower\n- It is on the Seine\n\n"
          "Say `a < b` & mind <!channel>: " + "more words here, " * 20).strip()
Connect = Callable[..., Awaitable[SlackAdapter]]


@pytest_asyncio.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(rate_limits=stream_tiers()) as fake:  # tier 2 for start and stop, tier 4 for append
        yield fake


@pytest_asyncio.fixture
async def connect(slack: FakeSlack) -> AsyncIterator[Connect]:
    adapters: list[SlackAdapter] = []

    async def start(submitter: Any, **settings: Any) -> SlackAdapter:
        values: dict[str, Any] = {"bot_token": slack.bot_token, "app_token": slack.app_token,
                                  "api_url": slack.api_url, "edit_interval_s": 0.25, "rate_limit_per_user": 0,
                                  "stream_interval_s": INTERVAL_S, "update_budget": (20, 1.0), **settings}
        adapter = SlackAdapter(SlackSettings(**values), submitter)
        adapters.append(adapter)
        await adapter.start()
        return adapter

    yield start
    for adapter in adapters:
        await adapter.close(timeout_s=10)


class Recording:
    """The real engine, keeping every job and handle; ``long_first``: the first job runs until it is stopped."""

    def __init__(self, engine: Engine, *, long_first: bool = False) -> None:
        self.engine, self.long_first = engine, long_first
        self.jobs, self.handles = list[Job](), list[JobHandle]()

    def __getattr__(self, name: str) -> Any:  # metrics, cancel, ...: the engine's
        return getattr(self.engine, name)

    async def submit(self, job: Job) -> JobHandle:
        if self.long_first and not self.jobs:
            job = replace(job, params=LONG)
        self.jobs.append(job)
        self.handles.append(self.engine.submit_nowait(job))
        return self.handles[-1]


def action_ids(message: dict[str, Any]) -> list[str]:
    return [e.get("action_id", "") for block in message.get("blocks", []) for e in block.get("elements", [])]


async def ask(slack: FakeSlack, text: str, **where: Any) -> dict[str, Any]:
    message = slack.user_says(f"<@UBOT> {text}", **where)
    await slack.push(slack.as_mention(message) if where.get("channel_type", "channel") == "channel" else message)
    return message


async def test_a_natively_streamed_answer_arrives_whole_with_its_final_controls_as_blocks(
        slack: FakeSlack, connect: Connect) -> None:
    engine = ScriptedEngine(answer(ANSWER, size=3), delay_s=0.004)
    await connect(engine)
    question = await ask(slack, "What is the capital of France?")
    final = await slack.wait_final(question["ts"])

    # the model's Markdown as it wrote it (not mrkdwn), with mention markup defused
    assert final == ANSWER.replace("<!channel>", "<\u200b!channel>")
    (message,) = slack.bot_messages(question["ts"])
    assert not slack.calls_to("chat.postMessage") and not slack.calls_to("chat.update")
    (start,) = slack.calls_to("chat.startStream")
    assert start.args["thread_ts"] == question["ts"] and start.args["channel"] == "C0001"
    assert start.args["recipient_user_id"] == "U0001" and start.args["recipient_team_id"] == slack.team_id
    # appends are batched: at most one per interval, far fewer than the pieces the engine sent
    appends = slack.calls_to("chat.appendStream")
    assert len(appends) < len(ANSWER) // 3 // 4
    gaps = [b.at - a.at for a, b in itertools.pairwise([start, *appends])]
    assert all(gap >= INTERVAL_S * 0.9 for gap in gaps), gaps
    (stop,) = slack.calls_to("chat.stopStream")
    job = engine.jobs[0].id
    assert action_ids(message) == [f"engbot:regenerate:{job}", f"engbot:feedback:{job}"]  # the final controls
    assert [b["type"] for b in stop.args["blocks"]] == ["actions", "context_actions"]
    # the thread's status said "thinking" until the stream started, and was cleared then
    assert slack.ai.statuses_in(question["ts"]) == [Messages.STATUS_THINKING, ""]
    assert max(s["at"] for s in slack.ai.statuses if s["status"]) < start.at
    assert not slack.limited


async def test_regenerate_of_a_streamed_answer_replaces_it_in_the_same_message(
        slack: FakeSlack, connect: Connect) -> None:
    engine = ScriptedEngine(answer("The *first* answer."), delay_s=0.002)
    engine.scripts = [answer("The *first* answer."), answer("A **second** answer.")]
    await connect(engine)
    question = await ask(slack, "Say something.")
    await slack.wait_final(question["ts"])
    (message,) = slack.bot_messages(question["ts"])
    await slack.press(message["ts"], f"engbot:regenerate:{engine.jobs[0].id}")
    second = markdown_to_mrkdwn("A **second** answer.")
    await slack.wait_for(lambda: [m["text"] for m in slack.bot_messages(question["ts"])] == [second])
    (again,) = slack.bot_messages(question["ts"])
    assert again["ts"] == message["ts"] and f"engbot:regenerate:{engine.jobs[1].id}" in action_ids(again)


@pytest.mark.parametrize("error", ["ratelimited", "invalid_arguments", "unknown_method"])
async def test_a_refused_start_falls_back_to_edits_and_the_answer_arrives_once(
        slack: FakeSlack, connect: Connect, error: str) -> None:
    engine = ScriptedEngine(answer(ANSWER, size=6), delay_s=0.004)
    adapter = await connect(engine)
    if error == "ratelimited":
        slack.fail("chat.startStream", status=429, error=error, retry_after=30)
    else:
        slack.fail("chat.startStream", status=200, error=error, retry_after=None)
    question = await ask(slack, "What is the capital of France?")
    final = await slack.wait_final(question["ts"])

    assert final == markdown_to_mrkdwn(ANSWER)  # by edits: mrkdwn
    (message,) = slack.bot_messages(question["ts"])
    assert len(slack.calls_to("chat.startStream")) == 1 and not slack.calls_to("chat.stopStream")
    assert [c.args["thread_ts"] for c in slack.calls_to("chat.postMessage")] == [question["ts"]]
    assert f"engbot:regenerate:{engine.jobs[0].id}" in action_ids(message)
    assert slack.ai.statuses_in(question["ts"])[-1] == ""

    # the next answer: after a 429, by edits until its Retry-After; after a refusal that will not change (auto),
    # by edits from now on; after any other, natively again
    second = await ask(slack, "And of Italy?")
    await slack.wait_final(second["ts"])
    natively = error == "invalid_arguments"
    assert len(slack.calls_to("chat.startStream")) == (2 if natively else 1)
    assert adapter.native.on is (error != "unknown_method")


async def test_past_the_tier_2_limit_answers_stream_by_edits_without_a_429(slack: FakeSlack, connect: Connect) -> None:
    engine = ScriptedEngine(answer("Short and sweet."), delay_s=0.002)
    await connect(engine)  # the default start budget: 18 streams a minute, below Slack's 20
    questions = [await ask(slack, f"Question {i}?", user=f"U{i:04}") for i in range(22)]
    finals = [await slack.wait_final(q["ts"]) for q in questions]
    assert all(f in ("Short and sweet.", markdown_to_mrkdwn("Short and sweet.")) for f in finals)
    assert len(slack.calls_to("chat.startStream")) == 18 and len(slack.calls_to("chat.stopStream")) == 18
    assert len(slack.calls_to("chat.postMessage")) == 4 and not slack.limited
    assert all(len(slack.bot_messages(q["ts"])) == 1 for q in questions)


async def test_a_rate_limited_start_falls_back_and_holds_later_starts_back(slack: FakeSlack, connect: Connect) -> None:
    engine = ScriptedEngine(answer("Short and sweet."), delay_s=0.002)
    await connect(engine, start_budget=(1000, 1.0))  # a budget too generous: Slack's tier says no
    questions = [await ask(slack, f"Question {i}?", user=f"U{i:04}") for i in range(23)]
    for q in questions:
        await slack.wait_final(q["ts"])
    # the 21st start was refused (and any that were on their way at the same time); after it, no more tries
    assert 1 <= len(slack.limited) <= 3 and {c.method for c in slack.limited} == {"chat.startStream"}
    assert len(slack.calls_to("chat.startStream")) == 20 + len(slack.limited)
    assert all(len(slack.bot_messages(q["ts"])) == 1 for q in questions)


async def test_stopped_by_user_cancels_the_job_and_the_answer_ends_as_stopped(
        slack: FakeSlack, connect: Connect, engine_factory: Callable[..., Awaitable[Engine]]) -> None:
    engine = await engine_factory(MAX_NEW_TOKENS=1500)
    submitter = Recording(engine, long_first=True)
    await connect(submitter)
    question = await ask(slack, "Tell me a very long story about the sea.")
    await slack.wait_for(lambda: slack.calls_to("chat.appendStream"), timeout=60)
    (ts,) = slack.ai.streams
    slack.ai.user_stops(ts)  # Slack's own stop button
    final = await slack.wait_final(question["ts"], timeout=30)

    result = submitter.handles[0].final
    assert isinstance(result, Failed) and result.kind is FailureKind.CANCELLED
    assert final.endswith("\n\n" + Messages.STOPPED) and len(final) > 40
    (message,) = slack.bot_messages(question["ts"])
    assert message["ts"] == ts and f"engbot:regenerate:{submitter.jobs[0].id}" in action_ids(message)
    assert any(c.args.get("ts") == ts for c in slack.calls_to("chat.update"))  # its final state, by an edit


async def test_the_status_shows_the_queue_position_until_the_first_text_then_is_cleared(
        slack: FakeSlack, connect: Connect, engine_factory: Callable[..., Awaitable[Engine]]) -> None:
    engine = await engine_factory(QUEUE_MAX_SIZE=2)
    blocker = engine.submit_nowait(Job.ask("Tell me a very long story about dragons.", params=LONG))
    async for event in blocker:
        if isinstance(event, TextPiece):
            break
    await connect(Recording(engine))
    question = await ask(slack, "What is 2 + 2?")
    await slack.wait_for(lambda: Messages.STATUS_WAITING in slack.ai.statuses_in(question["ts"]), timeout=30)
    waiting = next(s for s in slack.ai.statuses if s["status"] == Messages.STATUS_WAITING)
    assert waiting["loading_messages"][0].startswith("Next in line") and waiting["thread_ts"] == question["ts"]
    assert not slack.bot_messages(question["ts"])  # no placeholder: the status says it
    blocker.cancel()
    final = await slack.wait_final(question["ts"])
    assert final.strip()
    statuses = slack.ai.statuses_in(question["ts"])
    assert statuses[-1] == "" and statuses.count("") == 1
    (start,) = slack.calls_to("chat.startStream")
    clear = next(s for s in slack.ai.statuses if s["status"] == "")
    assert clear["at"] >= start.at  # cleared once the answer showed


async def test_a_long_answer_continues_in_new_streamed_messages(slack: FakeSlack, connect: Connect) -> None:
    text = "\n\n".join(f"Paragraph {i}: " + "words and more words. " * 6 for i in range(12))
    engine = ScriptedEngine(answer(text, size=8), delay_s=0.002)
    await connect(engine, stream_limit=400)
    question = await ask(slack, "Write a long essay.")
    await slack.wait_for(lambda: any(action_ids(m) for m in slack.bot_messages(question["ts"])))  # the last one
    messages = slack.bot_messages(question["ts"])
    assert len(messages) >= 4 and all(len(m["text"]) <= 400 for m in messages)
    assert "".join(m["text"] for m in messages).split() == text.split()  # all of it, in order
    assert [bool(action_ids(m)) for m in messages] == [False] * (len(messages) - 1) + [True]
    assert len(slack.calls_to("chat.startStream")) == len(messages) == len(slack.calls_to("chat.stopStream"))


@pytest.mark.parametrize("trouble", ["expired", "conflict", "stop_limited"])
async def test_a_stream_slack_gives_up_on_ends_by_edits_exactly_once(
        slack: FakeSlack, connect: Connect, trouble: str) -> None:
    engine = ScriptedEngine(answer(ANSWER, size=3), delay_s=0.01)
    await connect(engine)
    question = await ask(slack, "What is the capital of France?")
    await slack.wait_for(lambda: slack.calls_to("chat.appendStream"), timeout=30)
    (ts,) = slack.ai.streams
    if trouble == "expired":
        slack.ai.expire(ts)  # message_not_in_streaming_state
    elif trouble == "conflict":
        slack.fail("chat.appendStream", status=200, error="streaming_state_conflict", retry_after=None)
    else:
        slack.fail("chat.stopStream", status=429, error="ratelimited", retry_after=30, times=5)
    regenerate = f"engbot:regenerate:{engine.jobs[0].id}"  # (on the answer's final state only)
    await slack.wait_for(lambda: any(regenerate in action_ids(m) for m in slack.bot_messages(question["ts"])))
    final = await slack.wait_final(question["ts"])
    assert final == markdown_to_mrkdwn(ANSWER)
    (message,) = slack.bot_messages(question["ts"])
    assert f"engbot:regenerate:{engine.jobs[0].id}" in action_ids(message)
    if trouble == "stop_limited":  # the stuck stream was deleted; the answer came in a new message
        assert message["ts"] != ts and ts not in [m["ts"] for m in slack.messages["C0001"]]
    else:  # edited where it was
        assert message["ts"] == ts


async def test_a_failure_before_any_text_is_one_message_with_the_note(slack: FakeSlack, connect: Connect) -> None:
    engine = ScriptedEngine([Failed(FailureKind.TIMEOUT, "waited 30 s in the queue")], delay_s=0.01)
    await connect(engine)
    question = await ask(slack, "Hello?")
    final = await slack.wait_final(question["ts"])
    assert final == Messages.TIMEOUT.format(reason="waited 30 s in the queue")
    assert not slack.calls_to("chat.startStream") and len(slack.calls_to("chat.postMessage")) == 1


async def test_suggested_prompts_on_a_new_assistant_thread_and_the_messages_tab_and_a_title(
        slack: FakeSlack, connect: Connect) -> None:
    engine = ScriptedEngine(answer("Closures capture variables."), delay_s=0.002)
    await connect(engine)
    started = slack.ai.thread_started(user="U0001", channel="D0001")
    thread_ts = started["assistant_thread"]["thread_ts"]
    await slack.push(started)
    await slack.wait_for(lambda: slack.ai.suggested)
    assert slack.ai.suggested[0]["channel_id"] == "D0001" and slack.ai.suggested[0]["thread_ts"] == thread_ts
    assert slack.ai.suggested[0]["prompts"] == prompt_args(DEFAULT_PROMPTS)

    await slack.push(slack.ai.home_opened(user="U0001", channel="D0001", tab="home"))  # not the agent view
    await slack.push(slack.ai.home_opened(user="U0001", channel="D0001"))
    await slack.wait_for(lambda: len(slack.ai.suggested) == 2)
    assert slack.ai.suggested[1]["thread_ts"] is None  # the agent view: no thread

    # the first question in the assistant thread names it; it is answered there, natively
    first = slack.user_says("What is a closure in Python, and why would I use one?\nShow an example.",
                            channel="D0001", channel_type="im", thread_ts=thread_ts)
    await slack.push(first)
    assert await slack.wait_final(thread_ts, channel="D0001", after=first["ts"]) == "Closures capture variables."
    await slack.wait_for(lambda: slack.ai.titles)
    assert slack.ai.titles == {("D0001", thread_ts): "What is a closure in Python, and why would I use one?"}
    (start,) = slack.calls_to("chat.startStream")
    assert start.args["channel"] == "D0001" and start.args["recipient_user_id"] == "U0001"
    follow_up = slack.user_says("And in JavaScript?", channel="D0001", channel_type="im", thread_ts=thread_ts)
    await slack.push(follow_up)
    await slack.wait_final(thread_ts, channel="D0001", after=follow_up["ts"])
    assert len(slack.calls_to("assistant.threads.setTitle")) == 1  # named once
    assert len(slack.ai.suggested) == 2


async def test_prompts_from_the_setting_and_none(slack: FakeSlack, connect: Connect) -> None:
    mine = (SuggestedPrompt("Hello", "Say hello."),)
    adapter = await connect(ScriptedEngine(answer("Hi.")), suggested_prompts=mine)
    await slack.push(slack.ai.thread_started())
    await slack.wait_for(lambda: slack.ai.suggested)
    assert slack.ai.suggested[0]["prompts"] == [{"title": "Hello", "message": "Say hello."}]
    await adapter.close(timeout_s=5)
    await connect(ScriptedEngine(answer("Hi.")), suggested_prompts=())
    await slack.push(slack.ai.thread_started())
    await slack.push(slack.ai.home_opened())
    await slack.wait_for(lambda: set(slack.pushed) <= set(slack.acks))
    await asyncio.sleep(0.3)  # (the listener runs after the ack)
    assert len(slack.ai.suggested) == 1


async def test_edits_setting_never_streams_natively(slack: FakeSlack, connect: Connect) -> None:
    engine = ScriptedEngine(answer(ANSWER), delay_s=0.002)
    await connect(engine, streaming="edits")
    question = await ask(slack, "What is the capital of France?")
    assert await slack.wait_final(question["ts"]) == markdown_to_mrkdwn(ANSWER)
    assert not slack.calls_to("chat.startStream") and not slack.ai.statuses
    assert isinstance(engine.handles[0].final, Done)
