"""What the bot understands beyond the question, on Discord: the real discord.py client against the fake Discord,
the real engine answering. Channel personas (``/engbot persona``), files attached to a mention or given to
``/ask`` (text, PDF, expired links, every kind of bad file), "Summarize thread" from a message's menu, and a
reasoning model's thinking.

Model text is never asserted, only where it goes and what the jobs were given."""

from __future__ import annotations

import asyncio
import io
import re
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bots.channels.lookup import ChannelSettings
from bots.discord.adapter import DiscordAdapter
from bots.discord.commands import SUMMARIZE
from bots.discord.settings import DiscordSettings
from bots.messages import Messages
from engine.api import JobHandle
from engine.local import Engine
from engine.types import Done, Job
from testkit.fake_discord import (
    ALICE_ID,
    BOT,
    CHANNEL_ID,
    GUILD_ID,
    OTHER_CHANNEL_ID,
    ROLE_ID,
    TOKEN,
    FakeDiscord,
    Payload,
    command_interaction,
    interaction,
    mention,
    message,
    message_command,
    subcommand,
    text_channel,
    thread_channel,
)
from testkit.ggml import write_scripted_ggml
from testkit.pdf import encrypted_pdf, text_pdf
from testkit.scripted import ScriptedEngine, answer
from tests.conftest import make_settings

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]
Connect = Callable[..., Awaitable[DiscordAdapter]]
ENGINE_ENV = {"CONTEXT_LENGTH": "2048", "MAX_NEW_TOKENS": "32"}
PIRATE = "You are a pirate. Answer every question like a pirate would."


class Recorder:
    """The engine (or a scripted one), keeping every job; ``peak`` is the most jobs in flight at once."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.jobs: list[Job] = []
        self.handles: list[JobHandle] = []
        self.running = self.peak = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    async def submit(self, job: Job) -> JobHandle:
        handle: JobHandle = self.engine.submit_nowait(job) if isinstance(self.engine, Engine) else \
            await self.engine.submit(job)
        self.jobs.append(job)
        self.handles.append(handle)
        self.running += 1
        self.peak = max(self.peak, self.running)
        asyncio.get_running_loop().create_task(self._ended(handle))
        return handle

    async def _ended(self, handle: JobHandle) -> None:
        while handle.final is None:  # (the adapter reads the handle's events: only watch it)
            await asyncio.sleep(0.02)
        self.running -= 1


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[Engine]:
    engine = Engine(make_settings(NUM_WORKERS=1, NUM_THREADS=1, PARALLEL_SLOTS=2, TEMPERATURE=0, **ENGINE_ENV))
    await engine.start()
    yield engine
    await engine.stop(grace_s=0)


@pytest_asyncio.fixture(loop_scope="module")
async def fake() -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    await fake.start()
    yield fake
    await fake.close()


@pytest_asyncio.fixture(loop_scope="module")
async def connect(fake: FakeDiscord) -> AsyncIterator[Connect]:
    adapters: list[DiscordAdapter] = []

    async def start(submitter: Any, channels: ChannelSettings | None = None, **settings: Any) -> DiscordAdapter:
        values: dict[str, Any] = {"bot_token": TOKEN, "api_url": fake.api_url, "gateway_url": fake.gateway_url,
                                  "guild_id": GUILD_ID, "rate_limit_per_user": 0, "guild_ready_timeout_s": 0.05,
                                  "admin_roles": frozenset({str(ROLE_ID)}), **settings}
        adapter = DiscordAdapter(DiscordSettings(**values), submitter, channels)
        adapters.append(adapter)
        await adapter.start()
        return adapter

    yield start
    for adapter in adapters:
        await adapter.close()


def channel_settings(tmp_path: Path, **env: str) -> ChannelSettings:
    return ChannelSettings.from_environ({"STATE_PATH": str(tmp_path / "state.db"), **ENGINE_ENV, **env})


def final(text: str | None) -> bool:
    return bool(text) and not str(text).endswith(Messages.CURSOR) and text != Messages.THINKING and \
        not str(text).startswith(("_Summarizing", "_Combining", "_Reading"))


async def run(fake: FakeDiscord, command: Payload) -> str:
    """Run an application command; the text of its (deferred) response once it is final."""
    await fake._interact(command)

    def answered() -> str | None:
        original = fake.original(command)
        return original["content"] if original and final(original["content"]) else None
    try:
        return str(await fake.wait_for(answered, timeout=120))
    except TimeoutError:
        raise AssertionError(f"no final response: {fake.callback_for(command)}, {fake.original(command)}") from None


async def persona(fake: FakeDiscord, action: str, text: str | None = None, *, admin: bool = True,
                  channel: Payload | None = None) -> str:
    command = command_interaction(subcommand("engbot", ["persona", action], {"text": text} if text else None),
                                  roles=(ROLE_ID,) if admin else (), channel=channel)
    reply = await run(fake, command)
    callback = fake.callback_for(command)
    assert callback is not None and callback["data"]["flags"] & 64  # only the one who ran it sees it
    return reply


async def mentioned(fake: FakeDiscord, text: str, **kwargs: Any) -> tuple[Payload, Payload]:
    """A mention in the channel; the thread the bot opened for it and its final answer there."""
    asked = await fake.say(CHANNEL_ID, f"{mention()} {text}", mentions=(BOT,), **kwargs)
    thread = await fake.wait_for(lambda: next((t for t in fake.threads if t["id"] == asked["id"]), None))

    def answered() -> Payload | None:
        posted = fake.bot_messages(thread["id"])
        return posted[-1] if posted and final(posted[-1]["content"]) else None
    return thread, await fake.wait_for(answered, timeout=120)


# ---- personas ----


async def test_a_persona_set_by_an_admin_role_is_the_jobs_system_prompt_and_survives_a_restart(
        fake: FakeDiscord, engine: Engine, connect: Connect, tmp_path: Path) -> None:
    recorder = Recorder(engine)
    adapter = await connect(recorder, channel_settings(tmp_path))
    refused = await persona(fake, "set", PIRATE, admin=False)
    assert refused == Messages.PERSONA_ADMINS_ONLY.format(setting="DISCORD_ADMIN_ROLES")
    assert (await persona(fake, "set", PIRATE)).startswith("This channel's persona is set (")

    thread, _ = await mentioned(fake, "Where is the treasure?")
    assert recorder.jobs[-1].system_prompt == PIRATE  # the persona, in the job
    await fake.say(int(thread["id"]), "And the map?")  # a follow-up in the bot's thread: its parent's persona
    await fake.wait_for(lambda: len(recorder.jobs) == 2 and recorder.handles[-1].final is not None, timeout=120)
    assert recorder.jobs[-1].system_prompt == PIRATE
    other = interaction("Where is the treasure?", channel=text_channel(OTHER_CHANNEL_ID, "random"))
    await run(fake, other)
    assert recorder.jobs[-1].system_prompt is None  # another channel: the engine's SYSTEM_PROMPT

    await adapter.close()  # a restart: a new process, the same STATE_PATH
    recorder = Recorder(engine)
    await connect(recorder, channel_settings(tmp_path))
    await run(fake, interaction("Where is the treasure?"))
    assert [j.system_prompt for j in recorder.jobs] == [PIRATE]
    shown = await persona(fake, "show")
    assert shown.startswith(f"This channel's persona, set by <@{ALICE_ID}> on ") and PIRATE in shown
    assert "from SYSTEM_PROMPT again" in await persona(fake, "reset")
    await run(fake, interaction("Still a pirate?"))
    assert recorder.jobs[-1].system_prompt is None


# ---- files ----


def zip_bytes() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("notes.txt", "inside")
    return out.getvalue()


async def test_a_text_file_and_a_pdf_are_read_even_after_their_links_expired(
        fake: FakeDiscord, engine: Engine, connect: Connect, tmp_path: Path) -> None:
    recorder = Recorder(engine)
    await connect(recorder, channel_settings(tmp_path))
    notes = fake.attach("notes.md", b"# Launch\nThe code word is PELICAN.\n", "text/markdown")
    plan = fake.attach("plan.pdf", text_pdf(["Milestone one: alpha release in May.", "Budget: 12 ships."]),
                       "application/pdf")
    fake.expire_links()  # the message's links no longer work: the bot fetches the message again for fresh ones
    _, reply = await mentioned(fake, "What is the code word, and when is the alpha?", files=[notes, plan])
    (job,) = recorder.jobs
    question = job.turns[-1].content
    assert question.startswith("--- notes.md ---\n# Launch\nThe code word is PELICAN.\n--- end of notes.md ---")
    assert "--- plan.pdf (pages 1-2 of 2) ---" in question and "alpha release in May" in question
    assert question.endswith("What is the code word, and when is the alpha?")
    assert sorted(fake.downloads) == sorted([(notes["id"], False), (plan["id"], False), (notes["id"], True),
                                             (plan["id"], True)])
    assert reply["content"].strip() and "📎" not in reply["content"]  # both read whole: no note

    data = fake.attach("data.csv", b"city,people\nLyon,522000\n", "text/csv")
    text = await run(fake, interaction("Which city is in the file?", file=data))  # /ask's file option
    assert recorder.jobs[-1].turns[-1].content.startswith("--- data.csv ---\ncity,people\nLyon,522000\n")
    assert text.strip() and "📎" not in text


async def test_each_bad_file_gets_a_one_line_notice_and_the_question_is_still_answered(
        fake: FakeDiscord, engine: Engine, connect: Connect, tmp_path: Path) -> None:
    recorder = Recorder(engine)
    await connect(recorder, channel_settings(tmp_path, FILE_MAX_BYTES="100000", FILE_MAX_COUNT="5",
                                             FILE_MAX_PDF_PAGES="3"))
    files = [
        fake.attach("data.txt", zip_bytes(), "text/plain"),  # a ZIP renamed .txt
        fake.attach("latin1.csv", "name,city\nJosé,Málaga\n".encode("latin-1"), "text/csv"),
        fake.attach("locked.pdf", encrypted_pdf(["secret"]), "application/pdf"),
        fake.attach("huge.log", b"x" * 200_000),
        fake.attach("long.pdf", text_pdf([f"Chapter {i} text." for i in range(1, 9)]), "application/pdf"),
        fake.attach("extra.txt", b"one too many"),
    ]
    _, reply = await mentioned(fake, "Which of these could you read?", files=files)
    lines = reply["content"].split("\n")
    assert lines[:6] == [
        "_📎 data.txt: skipped, it is a ZIP archive (or a Word, Excel or PowerPoint file): only text files and PDFs "
        "are read_",
        "_📎 latin1.csv: skipped, it is not UTF-8 text (byte 14 is not valid UTF-8): save it as UTF-8_",
        "_📎 locked.pdf: skipped, it is encrypted (password protected)_",
        "_📎 huge.log: skipped, it is 200 KB: files over 100 KB are not read_",
        "_📎 long.pdf: read the first 3 of 8 pages_",
        "_📎 extra.txt: skipped, only the first 5 files of a message are read_",
    ], lines
    assert lines[6] == "" and "".join(lines[7:]).strip()  # then the answer itself
    assert {f for f, _ in fake.downloads}.isdisjoint({files[3]["id"], files[5]["id"]})  # never downloaded
    (job,) = recorder.jobs
    assert "Chapter 3 text." in job.turns[-1].content and "Chapter 4" not in job.turns[-1].content


# ---- thread summaries ----


async def test_a_500_message_thread_is_summarized_in_parts_from_the_message_menu(
        fake: FakeDiscord, connect: Connect, tmp_path: Path) -> None:
    recorder = Recorder(ScriptedEngine(answer("Desks move to floors one to six; two are still open."),
                                       delay_s=0.01))
    await connect(recorder, channel_settings(tmp_path))
    starter = await fake.say(CHANNEL_ID, "Planning the office move, thread below.")
    thread = thread_channel(int(starter["id"]), CHANNEL_ID, ALICE_ID, "Office move")
    fake.threads.append(thread)
    await fake.dispatch("THREAD_CREATE", {**thread, "newly_created": True})
    for i in range(500):  # (already there: not sent on the gateway)
        fake._store(message(int(thread["id"]), f"Item {i}: we still need to move desk {i} to floor {i % 7}."))
    target = fake.messages(thread["id"])[250]
    command = command_interaction(message_command(SUMMARIZE, target), channel=thread)
    summary = await run(fake, command)

    parts = [j for j in recorder.jobs if j.turns[-1].content.startswith("Here is part ")]
    assert len(parts) >= 2 and recorder.peak >= 2  # in parts, side by side
    items = sorted(int(n) for j in parts for n in re.findall(r"Item (\d+):", j.turns[-1].content))
    assert items == list(range(500))  # the whole thread, read page by page, each message once
    assert recorder.jobs[-1].turns[-1].content.startswith("Here are summaries of consecutive parts")
    assert all(j.user == f"discord:{ALICE_ID}" for j in recorder.jobs)
    original = fake.original(command)
    assert original is not None
    shown = [text for _, text in original.get("edits", [])]
    assert any(re.fullmatch(r"_Summarizing (\d+) parts… \(0 of \1 done\)_", t or "") for t in shown), shown
    assert summary == "Desks move to floors one to six; two are still open."
    assert all(isinstance(h.final, Done) for h in recorder.handles)


# ---- a reasoning model ----


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def thinker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Engine]:
    """The real engine on a tiny model that thinks before it answers: ``<think> we can see</think> it is one``."""
    path = write_scripted_ggml(tmp_path_factory.mktemp("think") / "thinker.bin",
                               ["<think>", " we", " can", " see", "</think>", " it", " is", " one"])
    engine = Engine(make_settings(MODEL_PATH=path, NUM_WORKERS=1, NUM_THREADS=1, TEMPERATURE=0, MAX_NEW_TOKENS=32,
                                  CONTEXT_LENGTH=512))
    await engine.start()
    yield engine
    await engine.stop(grace_s=0)


async def test_a_reasoning_models_thinking_is_never_posted(fake: FakeDiscord, thinker: Engine,
                                                           connect: Connect) -> None:
    recorder = Recorder(thinker)
    await connect(recorder, ChannelSettings())
    text = await run(fake, interaction("What is it?"))
    assert text == "_💭 Thought it through (3 words, hidden)._\n\nit is one"
    sent = str([r.body for r in fake.requests]) + str(fake.callbacks)
    assert "we can see" not in sent and "think>" not in sent  # in no message, edit or follow-up
    thread, reply = await mentioned(fake, "And now?")
    assert reply["content"] == "_💭 Thought it through (3 words, hidden)._\n\nit is one"
    await fake.say(int(thread["id"]), "Go on.")
    await fake.wait_for(lambda: len(recorder.jobs) == 3 and recorder.handles[-1].final is not None, timeout=60)
    history = [t.content for t in recorder.jobs[-1].turns if t.role == "assistant"]
    assert history == ["it is one"]  # the history leaves the note and the thinking out
