"""The buttons under an answer, through the real discord.py client against the fake Discord, with the real engine
where the model matters: Stop, Regenerate, Continue, feedback, presses that may do nothing but say why (to the
presser alone), a press after a restart, and an /ask whose submit takes longer than Discord's 3 s.

The fake holds the bot to Discord's rules: every press must be acknowledged within 3 s (else 10062) and once
(else 40060), so ``fake.refused`` stays empty when the adapter acknowledges as it should.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from bots.discord.adapter import DiscordAdapter
from bots.discord.settings import DiscordSettings
from bots.messages import Messages
from engine.api import JobHandle
from engine.types import Done, Failed, FailureKind, GenParams, Job
from testkit.fake_discord import (
    ALICE_ID,
    APP_ID,
    BOB,
    BOB_ID,
    BOT,
    CHANNEL_ID,
    GUILD_ID,
    ROLE_ID,
    TOKEN,
    FakeDiscord,
    Payload,
    mention,
)
from testkit.scripted import ScriptedEngine, answer
from tests.conftest import EngineFactory

pytestmark = pytest.mark.timeout(180)
AdapterFactory = Callable[..., Awaitable[DiscordAdapter]]
LONG = GenParams(max_new_tokens=1500, temperature=0.8, seed=1, ignore_eos=True)  # busy until stopped
QUEUED_PREFIX = Messages.QUEUED.split("{", 1)[0]


class Recording:
    """A submitter around the real engine (or a scripted one) that keeps every job and handle. ``long_first``: the
    first job runs until stopped (the model is too quick to press Stop on otherwise); ``accept_s``: each submit
    takes that long before the engine has the job (a slow Redis queue)."""

    def __init__(self, engine: Any, *, long_first: bool = False, accept_s: float = 0.0) -> None:
        self.engine, self.long_first, self.accept_s = engine, long_first, accept_s
        self.jobs, self.handles = list[Job](), list[JobHandle]()

    def __getattr__(self, name: str) -> Any:  # metrics, cancel, ...: the engine's
        return getattr(self.engine, name)

    async def submit(self, job: Job) -> JobHandle:
        if self.long_first and not self.jobs:
            job = replace(job, params=LONG)
        self.jobs.append(job)
        await asyncio.sleep(self.accept_s)
        self.handles.append(await self.engine.submit(job))
        return self.handles[-1]


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def connect(fake: FakeDiscord) -> AsyncIterator[AdapterFactory]:
    """Start adapters on the fake Discord (rate limit off, edits every 0.25 s); close them afterwards."""
    adapters: list[DiscordAdapter] = []

    async def start(submitter: Any, **settings: Any) -> DiscordAdapter:
        values: dict[str, Any] = {"bot_token": TOKEN, "api_url": fake.api_url, "gateway_url": fake.gateway_url,
                                  "guild_id": GUILD_ID, "rate_limit_per_user": 0, "guild_ready_timeout_s": 0.05,
                                  **settings}
        adapter = DiscordAdapter(DiscordSettings(**values), submitter)
        adapter.flow.style = replace(adapter.flow.style, edit_interval_s=0.25)
        adapters.append(adapter)
        await adapter.start()
        return adapter

    yield start
    for adapter in adapters:
        await adapter.close()


def buttons(message: Payload) -> list[str]:
    return [b["custom_id"] for row in message.get("components", []) for b in row.get("components", [])]


def is_final(text: str | None) -> bool:
    return bool(text) and not text.endswith(Messages.CURSOR) and text != Messages.THINKING and \
        not text.startswith(QUEUED_PREFIX)


async def asked_in_thread(fake: FakeDiscord, question: str, author: Payload | None = None) -> str:
    """A user mentions the bot; the id of the thread it answers in (the question's id)."""
    said = await fake.say(CHANNEL_ID, f"{mention()} {question}", mentions=(BOT,),
                          **({"author": author} if author else {}))
    await fake.wait_for(lambda: fake.bot_messages(said["id"]), timeout=60)
    return str(said["id"])


def answer_of(fake: FakeDiscord, thread: str) -> Payload:
    (message,) = fake.bot_messages(thread)
    return message


async def final_answer(fake: FakeDiscord, thread: str, *, pressable: str | None = None) -> Payload:
    """The thread's answer once final (and showing button ``pressable``, when given), as it is now (a copy: the
    fake edits its own)."""
    def done() -> Payload | None:
        posted = fake.bot_messages(thread)
        ready = len(posted) == 1 and is_final(posted[0]["content"])
        return posted[0] if ready and (pressable is None or pressable in buttons(posted[0])) else None
    result: Payload = await fake.wait_for(done, timeout=90)
    return dict(result)


async def told(fake: FakeDiscord, user_id: int, text: str) -> None:
    await fake.wait_for(lambda: text in fake.told(user_id), timeout=30)


def acknowledged(fake: FakeDiscord, press: Payload) -> bool:
    """The press got its deferred update (type 6), within Discord's 3 s (the fake refuses a late one)."""
    callback = fake.callback_for(press)
    return callback is not None and callback["type"] == 6


async def test_stop_keeps_the_text_frees_the_slot_and_only_the_asker_may_press(
        fake: FakeDiscord, connect: AdapterFactory, engine_factory: EngineFactory) -> None:
    engine = await engine_factory(NUM_WORKERS=1, PARALLEL_SLOTS=1)
    submitter = Recording(engine, long_first=True)
    adapter = await connect(submitter)
    runaway = await asked_in_thread(fake, "Tell me a very long story about the sea.")
    await fake.wait_for(lambda: answer_of(fake, runaway)["content"].endswith(Messages.CURSOR), timeout=60)
    job = submitter.jobs[0].id
    stop = f"engbot:stop:{job}"
    assert buttons(answer_of(fake, runaway)) == [stop]  # a Stop button while it streams
    waiting = await asked_in_thread(fake, "What is 2 + 2?", author=BOB)
    assert answer_of(fake, waiting)["content"].startswith("_Waiting for my turn: next in line")

    refused = await fake.press(answer_of(fake, runaway), stop, user=BOB)  # not Bob's question
    await told(fake, BOB_ID, Messages.PRESS_NOT_YOURS.format(what="stop"))
    assert acknowledged(fake, refused) and not submitter.handles[0].done

    pressed = await fake.press(answer_of(fake, runaway), stop)
    stopped = await final_answer(fake, runaway)
    assert acknowledged(fake, pressed)
    assert stopped["content"].endswith("\n\n" + Messages.STOPPED_BY.format(who=f"<@{ALICE_ID}>"))
    assert len(stopped["content"]) > 40  # the text so far stays
    result = submitter.handles[0].final
    assert isinstance(result, Failed) and result.kind is FailureKind.CANCELLED
    assert stop not in buttons(stopped) and f"engbot:regenerate:{job}" in buttons(stopped)
    # the freed slot answers the waiting question
    assert is_final((await final_answer(fake, waiting))["content"])
    assert isinstance(submitter.handles[1].final, Done)
    assert fake.told(ALICE_ID) == []  # a press that did what it asked says nothing more
    assert not fake.refused  # every press acknowledged within 3 s, once
    assert adapter._client is not None  # and discord.py keeps nothing per message for these buttons
    store = adapter._client._connection._view_store
    assert not store._views and not store._synced_message_views


async def test_regenerate_replaces_the_answer_with_another_one_and_admins_may_press_it(
        fake: FakeDiscord, connect: AdapterFactory, engine_factory: EngineFactory) -> None:
    submitter = Recording(await engine_factory(MAX_NEW_TOKENS=24))
    await connect(submitter, admin_roles=frozenset({str(ROLE_ID)}))
    thread = await asked_in_thread(fake, "Write a short poem about rain.")
    job = submitter.jobs[0].id
    first = await final_answer(fake, thread, pressable=f"engbot:regenerate:{job}")
    pressed = await fake.press(first, f"engbot:regenerate:{job}", user=BOB, roles=(ROLE_ID,))  # an admin
    await fake.wait_for(lambda: len(submitter.handles) == 2 and submitter.handles[1].done, timeout=90)
    regenerated = submitter.jobs[1]
    second = await final_answer(fake, thread, pressable=f"engbot:regenerate:{regenerated.id}")
    assert acknowledged(fake, pressed) and not fake.refused
    assert second["id"] == first["id"] and second["content"] != first["content"]  # in the same message
    assert regenerated.resample and regenerated.turns == submitter.jobs[0].turns
    assert regenerated.dedup_key == submitter.jobs[0].dedup_key + "#2"  # never refused as a duplicate
    assert fake.told(BOB_ID) == []


async def test_continue_goes_on_where_the_answer_was_cut(
        fake: FakeDiscord, connect: AdapterFactory, engine_factory: EngineFactory) -> None:
    submitter = Recording(await engine_factory(MAX_NEW_TOKENS=24))
    await connect(submitter)
    thread = await asked_in_thread(fake, "Explain in detail how a bicycle works.")
    job = submitter.jobs[0].id
    first = await final_answer(fake, thread, pressable=f"engbot:continue:{job}")
    cut = submitter.handles[0].final
    assert isinstance(cut, Done) and cut.finish_reason == "length"  # MAX_NEW_TOKENS=24
    pressed = await fake.press(first, f"engbot:continue:{job}")
    await fake.wait_for(lambda: len(submitter.handles) == 2 and submitter.handles[1].done, timeout=90)
    longer = await final_answer(fake, thread, pressable=f"engbot:regenerate:{submitter.jobs[1].id}")
    assert acknowledged(fake, pressed) and not fake.refused
    assert longer["id"] == first["id"] and longer["content"].startswith(first["content"].rstrip()[:40])
    assert len(longer["content"]) > len(first["content"])
    continued = submitter.jobs[1]
    assert continued.prefill == cut.text and not continued.resample


async def test_feedback_on_an_ask_answer_is_counted_once_per_person(
        fake: FakeDiscord, connect: AdapterFactory, engine_factory: EngineFactory) -> None:
    engine = await engine_factory(MAX_NEW_TOKENS=24)
    submitter = Recording(engine)
    await connect(submitter)
    asked = await fake.ask("What is the capital of France?")
    good = f"engbot:good:{await fake.wait_for(lambda: submitter.jobs and submitter.jobs[0].id)}"

    def answered() -> Payload | None:
        original = fake.original(asked)
        return original if original and is_final(original["content"]) and good in buttons(original) else None
    message = await fake.wait_for(answered, timeout=90)
    assert buttons(message)[-2:] == [good, good.replace(":good:", ":bad:")]
    first = await fake.press(message, good, user=BOB)  # anyone may rate
    await told(fake, BOB_ID, Messages.THANKS)
    await fake.press(message, good.replace(":good:", ":bad:"), user=BOB)
    await told(fake, BOB_ID, Messages.VOTED)
    assert fake.told(BOB_ID) == [Messages.THANKS, Messages.VOTED] and acknowledged(fake, first)
    registry = engine.metrics.registry
    assert registry.get_sample_value("engbot_feedback_total", {"platform": "discord", "value": "good"}) == 1.0
    assert registry.get_sample_value("engbot_feedback_total", {"platform": "discord", "value": "bad"}) is None
    assert fake.told(ALICE_ID) == [] and not fake.refused


async def test_a_press_after_a_restart_is_told_the_buttons_no_longer_work(
        fake: FakeDiscord, connect: AdapterFactory) -> None:
    submitter = Recording(ScriptedEngine(answer("Rain is water falling from clouds.")))
    before = await connect(submitter)
    thread = await asked_in_thread(fake, "What is rain?")
    job = submitter.jobs[0].id
    message = await final_answer(fake, thread, pressable=f"engbot:regenerate:{job}")
    await before.close()
    await connect(submitter)  # knows no answers: the bot restarted
    pressed = await fake.press(message, f"engbot:regenerate:{job}")
    await told(fake, ALICE_ID, Messages.PRESS_UNKNOWN)
    assert acknowledged(fake, pressed) and not fake.refused
    assert len(submitter.jobs) == 1 and answer_of(fake, thread)["content"] == message["content"]


async def test_ask_is_acknowledged_before_a_slow_submit(
        fake: FakeDiscord, connect: AdapterFactory, engine_factory: EngineFactory) -> None:
    submitter = Recording(await engine_factory(MAX_NEW_TOKENS=16), accept_s=4.0)  # past Discord's 3 s
    await connect(submitter)
    asked = await fake.ask("What is the capital of France?")

    def answered() -> Payload | None:
        original = fake.original(asked)
        return original if original and is_final(original["content"]) else None
    final = await fake.wait_for(answered, timeout=90)
    callback = fake.callback_for(asked)
    assert callback is not None and callback["type"] == 5 and not fake.refused  # "thinking…" in time, not 10062
    assert submitter.handles and isinstance(submitter.handles[0].final, Done)
    assert not final["content"].startswith("⚠️")


async def test_the_fake_holds_the_bot_to_discords_rules(fake: FakeDiscord) -> None:
    """What the tests above rely on: late or second interaction responses, and over-long content, are refused with
    Discord's codes; an ephemeral follow-up is seen by its user alone; the first follow-up of a deferred response
    replaces "thinking…" and keeps its visibility."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bot {TOKEN}"}) as http:
        async def call(method: str, path: str, body: Payload) -> tuple[int, Any]:
            async with http.request(method, fake.api_url + path, json=body) as response:
                return response.status, await response.json() if response.content_length != 0 else None

        asked = await fake.ask("Hello?")
        callback = f"/interactions/{asked['id']}/{asked['token']}/callback"
        assert (await call("POST", callback, {"type": 5}))[0] == 200
        status, error = await call("POST", callback, {"type": 5})
        assert (status, error["code"]) == (400, 40060)
        followup = f"/webhooks/{APP_ID}/{asked['token']}"
        status, first = await call("POST", followup, {"content": "Only you see this", "flags": 64})
        assert status == 200 and first["id"] == (fake.original(asked) or {}).get("id")  # replaced "thinking…"
        assert fake.told(ALICE_ID) == [] and not first["flags"] & 64
        status, second = await call("POST", followup, {"content": "Only you see this", "flags": 64})
        assert status == 200 and fake.told(ALICE_ID) == ["Only you see this"]
        assert second["id"] not in {m["id"] for m in fake.messages(CHANNEL_ID)}
        assert (await call("POST", followup, {"content": "x" * 2001}))[1]["code"] == 50035
        assert (await call("POST", f"/channels/{CHANNEL_ID}/messages", {"content": "x" * 2001}))[1]["code"] == 50035
        status, posted = await call("POST", f"/channels/{CHANNEL_ID}/messages", {"content": "x" * 2000})
        assert status == 200
        edit = f"/channels/{CHANNEL_ID}/messages/{posted['id']}"
        assert (await call("PATCH", edit, {"content": "x" * 2001}))[1]["code"] == 50035
        late = await fake.ask("Anyone?")
        fake.created[late["token"]] -= 3.5  # Discord forgets an interaction not answered within 3 s
        status, error = await call("POST", f"/interactions/{late['id']}/{late['token']}/callback", {"type": 5})
        assert (status, error["code"]) == (404, 10062)
        assert [r["code"] for r in fake.refused] == [40060, 10062]
