"""The buttons under an answer, through the real slack-bolt client and Socket Mode against the fake Slack, with the
real engine: Stop, Regenerate, Continue, feedback, and presses that must do nothing but say why."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import pytest_asyncio

from bots.messages import Messages
from bots.slack.adapter import SlackAdapter
from bots.slack.settings import SlackSettings
from bots.text import markdown_to_mrkdwn
from engine.api import JobHandle
from engine.local import Engine
from engine.types import Done, Failed, FailureKind, GenParams, Job
from testkit.fake_slack import FakeSlack
from tests.conftest import make_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")

LONG = GenParams(max_new_tokens=1500, temperature=0.8, seed=1, ignore_eos=True)  # busy until stopped


class Recording:
    """The real engine, keeping every job and handle; with ``long_first`` the first job runs until stopped (the
    model is too quick to press Stop on otherwise)."""

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


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[Engine]:
    """One replica, one slot, room for one waiting job; greedy answers cut at 24 tokens."""
    engine = Engine(make_settings(NUM_WORKERS=1, NUM_THREADS=1, PARALLEL_SLOTS=1, TEMPERATURE=0,
                                  MAX_NEW_TOKENS=24, QUEUE_MAX_SIZE=1))
    await engine.start()
    yield engine
    await engine.stop(grace_s=0)


@pytest_asyncio.fixture(loop_scope="module")
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


async def connect(slack: FakeSlack, submitter: Any, **settings: Any) -> SlackAdapter:
    settings.setdefault("streaming", "edits")  # the buttons of answers streamed by edits (Slack's own: elsewhere)
    adapter = SlackAdapter(SlackSettings(bot_token=slack.bot_token, app_token=slack.app_token, api_url=slack.api_url,
                                         edit_interval_s=0.25, rate_limit_per_user=0, **settings), submitter)
    await adapter.start()
    return adapter


def answer_of(slack: FakeSlack, question_ts: str) -> dict[str, Any]:
    (message,) = slack.bot_messages(question_ts)
    return message


def action_ids(message: dict[str, Any]) -> list[str]:
    return [e.get("action_id", "") for block in message.get("blocks", []) for e in block.get("elements", [])]


async def told(slack: FakeSlack, user: str, text: str) -> None:
    await slack.wait_for(lambda: any(e["user"] == user and e["text"] == text for e in slack.ephemeral), timeout=30)


async def test_stop_keeps_the_text_frees_the_slot_and_only_the_asker_may_press(slack: FakeSlack,
                                                                              engine: Engine) -> None:
    submitter = Recording(engine, long_first=True)
    adapter = await connect(slack, submitter, admin_users=frozenset({"U0009"}))
    try:
        runaway = slack.user_says("<@UBOT> Tell me a very long story about the sea.", user="U0001")
        await slack.push(slack.as_mention(runaway))
        await slack.wait_for(lambda: slack.bot_messages(runaway["ts"]) and answer_of(slack, runaway["ts"])["text"]
                             .endswith(Messages.CURSOR), timeout=60)
        job = submitter.jobs[0].id
        stop = f"engbot:stop:{job}"
        reply = answer_of(slack, runaway["ts"])["ts"]
        assert stop in action_ids(answer_of(slack, runaway["ts"]))  # a Stop button while it streams
        waiting = slack.user_says("<@UBOT> What is 2 + 2?", user="U0002")
        await slack.push(slack.as_mention(waiting))
        await slack.wait_for(lambda: slack.bot_messages(waiting["ts"]), timeout=30)
        assert answer_of(slack, waiting["ts"])["text"].startswith("_Waiting for my turn: next in line")

        envelope = await slack.press(reply, stop, user="U0002")  # not theirs
        await told(slack, "U0002", Messages.PRESS_NOT_YOURS.format(what="stop"))
        await slack.wait_for(lambda: envelope in slack.acks, timeout=10)  # (bolt acks as its listener returns)
        assert not submitter.handles[0].done

        await slack.press(reply, stop, user="U0001")
        final = await slack.wait_final(runaway["ts"])
        note = "\n\n" + Messages.STOPPED_BY.format(who="<@U0001>")
        assert final.endswith(note)
        result = submitter.handles[0].final
        assert isinstance(result, Failed) and result.kind is FailureKind.CANCELLED
        kept = final.removesuffix(note)  # the text so far stays
        assert kept.strip() and markdown_to_mrkdwn(result.partial).startswith(kept.strip())
        stopped = answer_of(slack, runaway["ts"])
        assert stop not in action_ids(stopped) and f"engbot:regenerate:{job}" in action_ids(stopped)
        # the freed slot answers the waiting question
        assert (await slack.wait_final(waiting["ts"])).strip()
        assert isinstance(submitter.handles[1].final, Done)

        # a press on a button the answer no longer shows (a client behind the times), and one after a restart
        await slack.press(reply, stop, user="U0001", stale=True)
        await told(slack, "U0001", Messages.PRESS_ENDED)
    finally:
        await adapter.close(timeout_s=10)
    restarted = await connect(slack, submitter)  # knows no answers: the bot restarted
    try:
        await slack.press(reply, f"engbot:regenerate:{job}", user="U0001")
        await told(slack, "U0001", Messages.PRESS_UNKNOWN)
    finally:
        await restarted.close(timeout_s=10)


async def test_regenerate_replaces_the_answer_with_another_one(slack: FakeSlack, engine: Engine) -> None:
    submitter = Recording(engine)
    adapter = await connect(slack, submitter)
    try:
        question = slack.user_says("<@UBOT> Write a short poem about rain.", user="U0001")
        await slack.push(slack.as_mention(question))
        first = await slack.wait_final(question["ts"])
        (message,) = slack.bot_messages(question["ts"])
        job = submitter.jobs[0].id
        await slack.press(message["ts"], f"engbot:regenerate:{job}", user="U0001")
        await slack.wait_for(lambda: len(submitter.handles) == 2 and submitter.handles[1].done, timeout=60)
        second = await slack.wait_final(question["ts"])
        assert second != first and second.strip()
        assert [m["ts"] for m in slack.bot_messages(question["ts"])] == [message["ts"]]  # in the same message
        regenerated = submitter.jobs[1]
        assert regenerated.resample and regenerated.turns == submitter.jobs[0].turns
        assert regenerated.dedup_key == submitter.jobs[0].dedup_key + "#2"  # never refused as a duplicate
        assert f"engbot:regenerate:{regenerated.id}" in action_ids(answer_of(slack, question["ts"]))
    finally:
        await adapter.close(timeout_s=10)


async def test_continue_goes_on_where_the_answer_was_cut(slack: FakeSlack, engine: Engine) -> None:
    submitter = Recording(engine)
    adapter = await connect(slack, submitter)
    try:
        question = slack.user_says("<@UBOT> Explain in detail how a bicycle works.", user="U0001")
        await slack.push(slack.as_mention(question))
        first = await slack.wait_final(question["ts"])
        cut = submitter.handles[0].final
        assert isinstance(cut, Done) and cut.finish_reason == "length"  # MAX_NEW_TOKENS=24
        job = submitter.jobs[0].id
        assert f"engbot:continue:{job}" in action_ids(answer_of(slack, question["ts"]))
        await slack.press(answer_of(slack, question["ts"])["ts"], f"engbot:continue:{job}", user="U0001")
        await slack.wait_for(lambda: len(submitter.handles) == 2 and submitter.handles[1].done, timeout=60)
        longer = await slack.wait_final(question["ts"])
        assert longer.startswith(first.rstrip()[:40]) and len(longer) > len(first)
        continued = submitter.jobs[1]
        assert continued.prefill == cut.text and not continued.resample
    finally:
        await adapter.close(timeout_s=10)


async def test_feedback_is_counted_once_per_person(slack: FakeSlack, engine: Engine) -> None:
    submitter = Recording(engine)
    adapter = await connect(slack, submitter)
    try:
        question = slack.user_says("<@UBOT> What is the capital of France?", user="U0001")
        await slack.push(slack.as_mention(question))
        await slack.wait_final(question["ts"])
        message = answer_of(slack, question["ts"])
        feedback = f"engbot:feedback:{submitter.jobs[0].id}"
        assert feedback in action_ids(message)
        await slack.press(message["ts"], feedback, user="U0002", value="good")  # anyone may rate
        await told(slack, "U0002", Messages.THANKS)
        await slack.press(message["ts"], feedback, user="U0002", value="bad")
        await told(slack, "U0002", Messages.VOTED)
        counted = engine.metrics.registry.get_sample_value("engbot_feedback_total",
                                                           {"platform": "slack", "value": "good"})
        assert counted == 1.0
        assert engine.metrics.registry.get_sample_value("engbot_feedback_total",
                                                        {"platform": "slack", "value": "bad"}) is None
    finally:
        await adapter.close(timeout_s=10)
