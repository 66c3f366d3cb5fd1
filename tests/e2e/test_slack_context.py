"""What the bot understands beyond the question, through the real slack-bolt client in Socket Mode against the fake
Slack, with the real engine: channel personas (``/engbot``) and the settings file, files in the question (text,
PDF, and every kind of bad file), thread summaries ("Summarize thread"), and a reasoning model's thinking.

Model text is never asserted, only where it goes and what the jobs were given."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bots.channels.lookup import ChannelSettings
from bots.files.limits import FileLimits
from bots.messages import Messages
from bots.slack.adapter import SlackAdapter
from bots.slack.events import SUMMARY_EVENT
from bots.slack.files import NO_SCOPE
from bots.slack.settings import SlackSettings
from engbot.run import serve_until_signal
from engbot.settings import AppSettings
from engine.api import JobHandle
from engine.local import Engine
from engine.local.fleet import EngineFleet
from engine.models.fleet import FleetSettings
from engine.types import Done, Failed, FailureKind, Job
from testkit.fake_slack import FakeSlack
from testkit.ggml import write_scripted_ggml
from testkit.pdf import bomb_pdf, encrypted_pdf, text_pdf
from testkit.redis_server import RedisServer
from testkit.scripted import ScriptedEngine, answer
from tests.conftest import make_settings

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]
Connect = Callable[..., Awaitable[SlackAdapter]]
ENGINE_ENV = {"CONTEXT_LENGTH": "2048", "MAX_NEW_TOKENS": "32"}
PIRATE = "You are a pirate. Answer every question like a pirate would."


class Recorder:
    """The real engine (or a scripted one), keeping every job; ``peak`` is the most jobs in flight at once."""

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
        while handle.final is None:
            await asyncio.sleep(0.02)
        self.running -= 1


class Borrowed(Recorder):
    """The module's engine lent to ``serve_until_signal``, which starts and stops its submitter: it stays up."""

    async def start(self) -> None:
        pass

    async def stop(self, grace_s: float | None = None) -> None:
        pass


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[Engine]:
    """One replica decoding 4 answers at once (a summary's parts side by side), short greedy answers."""
    engine = Engine(make_settings(NUM_WORKERS=1, NUM_THREADS=1, PARALLEL_SLOTS=4, TEMPERATURE=0,
                                  QUEUE_MAX_SIZE=16, KV_CACHE_TOKENS=8192, **ENGINE_ENV))
    await engine.start()
    yield engine
    await engine.stop(grace_s=0)


@pytest_asyncio.fixture(loop_scope="module")
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


@pytest_asyncio.fixture(loop_scope="module")
async def connect(slack: FakeSlack) -> AsyncIterator[Connect]:
    adapters: list[SlackAdapter] = []

    async def start(submitter: Any, channels: ChannelSettings | None = None, *, to: FakeSlack | None = None,
                    **settings: Any) -> SlackAdapter:
        server = to or slack
        values: dict[str, Any] = {"bot_token": server.bot_token, "app_token": server.app_token,
                                  "api_url": server.api_url, "edit_interval_s": 0.25, "rate_limit_per_user": 0,
                                  "streaming": "edits", "admin_users": frozenset({"U0ADM"}), **settings}
        adapter = SlackAdapter(SlackSettings(**values), submitter, channels)
        adapters.append(adapter)
        await adapter.start()
        return adapter

    yield start
    for adapter in adapters:
        await adapter.close(timeout_s=10)


def channel_settings(tmp_path: Path, **env: str) -> ChannelSettings:
    return ChannelSettings.from_environ({"STATE_PATH": str(tmp_path / "state.db"), **ENGINE_ENV, **env})


async def response(slack: FakeSlack, count: int) -> str:
    """The text of the ``count``th reply to a slash command (through its response URL)."""
    await slack.wait_for(lambda: len(slack.more.responses) >= count, timeout=10)
    reply = slack.more.responses[count - 1]
    assert reply.get("response_type") == "ephemeral"
    return str(reply["text"])


async def ask(slack: FakeSlack, text: str, **kwargs: Any) -> dict[str, Any]:
    message = slack.user_says(f"<@UBOT> {text}", **kwargs)
    await slack.push(slack.as_mention(message))
    await slack.wait_final(message["ts"], kwargs.get("channel", "C0001"))
    return message


# ---- personas and the settings file ----


async def test_a_persona_set_by_an_admin_is_the_jobs_system_prompt_and_survives_a_restart(
        slack: FakeSlack, engine: Engine, connect: Connect, tmp_path: Path) -> None:
    recorder = Recorder(engine)
    adapter = await connect(recorder, channel_settings(tmp_path))
    await slack.more.slash(f"persona set {PIRATE}", user="U0001")
    assert await response(slack, 1) == Messages.PERSONA_ADMINS_ONLY.format(setting="SLACK_ADMIN_USERS")
    await slack.more.slash(f"persona set {PIRATE}", user="U0ADM")
    assert (await response(slack, 2)).startswith("This channel's persona is set (")
    await slack.more.slash("persona set " + "Be long. " * 1000, user="U0ADM")
    too_long = await response(slack, 3)
    assert too_long.startswith("That persona is too long for the model: it is about 3,000 tokens (8,999 "
                               "characters), and at most 976 tokens fit: the context holds 2,048 tokens, 32 are kept")

    await ask(slack, "Where is the treasure?")
    await ask(slack, "Where is the treasure?", channel="C0002")
    assert recorder.jobs[0].system_prompt == PIRATE  # the persona, in the job
    assert recorder.jobs[1].system_prompt is None  # another channel: the engine's SYSTEM_PROMPT

    await adapter.close(timeout_s=10)  # a restart: new process, same STATE_PATH
    recorder = Recorder(engine)
    await connect(recorder, channel_settings(tmp_path))
    await ask(slack, "And the map?")
    assert recorder.jobs[0].system_prompt == PIRATE
    await slack.more.slash("persona show", user="U0ADM")
    assert "set by <@U0ADM> on " in await response(slack, 4) and PIRATE in slack.more.responses[3]["text"]
    await slack.more.slash("persona reset", user="U0ADM")
    assert "from SYSTEM_PROMPT again" in await response(slack, 5)
    await ask(slack, "Still a pirate?")
    assert recorder.jobs[-1].system_prompt is None


async def test_a_persona_set_through_one_host_is_used_by_another_through_redis(
        slack: FakeSlack, engine: Engine, connect: Connect, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    env = {"QUEUE_BACKEND": "redis", "REDIS_URL": redis.url}
    first, second = channel_settings(tmp_path / "a", **env), channel_settings(tmp_path / "b", **env)
    try:
        one, two = Recorder(engine), Recorder(engine)
        await connect(one, first)  # two `engbot run` hosts of one Slack app: Slack spreads events over them
        await connect(two, second)
        await slack.more.slash(f"persona set {PIRATE}", user="U0ADM", socket=0)
        assert (await response(slack, 1)).startswith("This channel's persona is set (")
        asked = slack.user_says("<@UBOT> Where is the treasure?")
        await slack.push(slack.as_mention(asked), socket=1)
        await slack.wait_final(asked["ts"])
        assert not one.jobs and [j.system_prompt for j in two.jobs] == [PIRATE]
        assert not (tmp_path / "a" / "state.db").exists() and not (tmp_path / "b" / "state.db").exists()

        await slack.more.slash("persona reset", user="U0ADM", socket=1)
        assert "from SYSTEM_PROMPT again" in await response(slack, 2)
        again = slack.user_says("<@UBOT> Still a pirate?")
        await slack.push(slack.as_mention(again), socket=0)
        await slack.wait_final(again["ts"])
        assert [j.system_prompt for j in one.jobs] == [None]
    finally:
        await first.close()
        await second.close()
        redis.stop()


async def test_the_settings_file_reaches_the_jobs_and_is_reloaded_on_sighup(
        slack: FakeSlack, engine: Engine, tmp_path: Path) -> None:
    config = tmp_path / "engbot.toml"
    config.write_text('[slack]\ntemperature = 0.4\n\n[slack.channel.C0001]\nmax_new_tokens = 24\n'
                      'allowed_users = ["U0001"]\n')
    channels = channel_settings(tmp_path, ENGBOT_CONFIG=str(config))
    channels.poll_s = 3600.0  # (only the signal reloads it in this test)
    recorder = Borrowed(engine)
    adapter = SlackAdapter(SlackSettings(bot_token=slack.bot_token, app_token=slack.app_token, api_url=slack.api_url,
                                         edit_interval_s=0.25, rate_limit_per_user=0, streaming="edits"),
                           recorder, channels)
    stop = asyncio.Event()  # `engbot run` as it runs: its adapters, SIGHUP and the file watch
    app = asyncio.create_task(serve_until_signal(recorder, [adapter], AppSettings("127.0.0.1", 0, "info", "text"),
                                                 stop, channels=channels))
    await slack.wait_for(lambda: adapter.connected, timeout=20)
    await ask(slack, "Hello there?", user="U0001")
    (job,) = recorder.jobs
    assert job.params is not None and (job.params.temperature, job.params.max_new_tokens) == (0.4, 24)
    ignored = slack.user_says("<@UBOT> me too?", user="U0002")
    await slack.push(slack.as_mention(ignored))
    await asyncio.sleep(1.0)
    assert len(recorder.jobs) == 1 and not slack.bot_messages(ignored["ts"])  # not in the channel's allowed_users

    config.write_text('[slack]\ntemperature = 0.9\n')
    os.kill(os.getpid(), signal.SIGHUP)  # as `kill -HUP` does
    await slack.wait_for(lambda: channels.reloads >= 1, timeout=10)
    await ask(slack, "And now?", user="U0002")
    assert recorder.jobs[-1].params is not None and recorder.jobs[-1].params.temperature == 0.9
    stop.set()
    assert await asyncio.wait_for(app, 30) == 0


async def test_a_channel_whose_settings_name_another_model_is_answered_by_it(
        slack: FakeSlack, connect: Connect, model_path: Path, tmp_path: Path) -> None:
    code = write_scripted_ggml(tmp_path / "code.bin", [" code", " model", " here"])
    config = tmp_path / "engbot.toml"
    config.write_text("[slack.channel.C0CODE]\nmodel = 'code'\n")
    environ = {"MODELS": f"fast={model_path},code={code}", "MODELS_CODE_CONTEXT_LENGTH": "512",
               "NUM_WORKERS": "1", "NUM_THREADS": "1", "TEMPERATURE": "0", "MAX_NEW_TOKENS": "16",
               "ENGBOT_CONFIG": str(config), "STATE_PATH": str(tmp_path / "state.db")}
    fleet_settings = FleetSettings.from_environ(environ)
    assert fleet_settings is not None
    fleet = EngineFleet(fleet_settings)
    await fleet.start()
    try:
        recorder = Recorder(fleet)
        await connect(recorder, ChannelSettings.from_environ(environ))
        asked = await ask(slack, "Write a loop.", channel="C0CODE")
        other = await ask(slack, "Write a loop.")
        assert [j.model for j in recorder.jobs] == ["code", None]  # the channel's model; DEFAULT_MODEL elsewhere
        assert (await slack.wait_final(asked["ts"], "C0CODE")).strip() == "code model here"  # that model's words
        assert (await slack.wait_final(other["ts"])).strip() not in ("", "code model here")
    finally:
        await fleet.stop(grace_s=0)


# ---- files ----


def zip_bytes() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("notes.txt", "inside")
    return out.getvalue()


async def test_a_text_file_and_a_pdf_are_answered_about(slack: FakeSlack, engine: Engine, connect: Connect,
                                                       tmp_path: Path) -> None:
    recorder = Recorder(engine)
    await connect(recorder, channel_settings(tmp_path))
    notes = slack.more.upload("notes.md", b"# Launch\nThe code word is PELICAN.\n", "text/markdown")
    plan = slack.more.upload("plan.pdf", text_pdf(["Milestone one: alpha release in May.", "Budget: 12 ships."]),
                             "application/pdf", check_file_info=True)  # Slack Connect: files.info first
    message = await ask(slack, "What is the code word, and when is the alpha?", files=[notes, plan])
    (job,) = recorder.jobs
    question = job.turns[-1].content
    assert question.startswith("--- notes.md ---\n# Launch\nThe code word is PELICAN.\n--- end of notes.md ---")
    assert "--- plan.pdf (pages 1-2 of 2) ---" in question and "alpha release in May" in question
    assert question.endswith("What is the code word, and when is the alpha?")
    assert [c.args["file"] for c in slack.calls_to("files.info")] == [plan["id"]]
    assert all(authorized for _, authorized in slack.more.downloads)  # with the bot token
    final = await slack.wait_final(message["ts"])
    assert final.strip() and "📎" not in final  # both read whole: no note


async def test_each_bad_file_gets_a_one_line_notice_and_the_question_is_still_answered(
        slack: FakeSlack, engine: Engine, connect: Connect, tmp_path: Path) -> None:
    recorder = Recorder(engine)
    channels = channel_settings(tmp_path, FILE_MAX_BYTES="7000000", FILE_MAX_COUNT="8", FILE_MAX_PDF_PAGES="5",
                                FILE_EXTRACT_TIMEOUT_S="3")
    await connect(recorder, channels)
    files = [
        slack.more.upload("data.txt", zip_bytes()),
        slack.more.upload("latin1.csv", "name,city\nJosé,Málaga\n".encode("latin-1"), "text/csv"),
        slack.more.upload("locked.pdf", encrypted_pdf(["secret"]), "application/pdf"),
        slack.more.upload("huge.log", b"x", size=9_000_000),
        slack.more.upload("bomb.pdf", bomb_pdf(), "application/pdf"),
        slack.more.upload("long.pdf", text_pdf([f"Chapter {i} text." for i in range(1, 13)]), "application/pdf"),
    ]
    message = await ask(slack, "Which of these could you read?", files=files)
    final = await slack.wait_final(message["ts"])
    lines = final.split("\n")
    expected = ["_📎 data.txt: skipped, it is a ZIP archive (or a Word, Excel or PowerPoint file): only text files "
                "and PDFs are read_",
                "_📎 latin1.csv: skipped, it is not UTF-8 text (byte 14 is not valid UTF-8): save it as UTF-8_",
                "_📎 locked.pdf: skipped, it is encrypted (password protected)_",
                "_📎 huge.log: skipped, it is 9 MB: files over 7 MB are not read_"]
    assert lines[:4] == expected
    assert lines[4].startswith("_📎 bomb.pdf: skipped, it ")  # too slow or too big to read: never a hang
    assert lines[5] == "_📎 long.pdf: read the first 5 of 12 pages_"
    assert lines[6] == "" and "".join(lines[7:]).strip()  # then the answer itself
    assert "huge.log" not in str([slack.more.files[f]["name"] for f, _ in slack.more.downloads])  # never fetched
    (job,) = recorder.jobs
    assert "Chapter 5 text." in job.turns[-1].content and "Chapter 6" not in job.turns[-1].content


async def test_a_download_answered_with_slacks_sign_in_page_is_a_missing_scope(
        slack: FakeSlack, connect: Connect, tmp_path: Path) -> None:
    engine = ScriptedEngine(answer("Nothing to read."))
    await connect(engine, channel_settings(tmp_path))
    slack.more.files_read = False  # an app installed without files:read
    refused = slack.more.upload("a.txt", b"hello")
    message = slack.user_says("<@UBOT>", files=[refused])
    await slack.push(slack.as_mention(message))
    assert await slack.wait_final(message["ts"]) == f"{Messages.FILES_UNREADABLE}\n• a.txt: {NO_SCOPE}"
    assert slack.more.downloads == [(refused["id"], False)]  # Slack's sign-in page came back
    assert not engine.jobs  # no question left to answer
    connect_only = slack.more.upload("b.txt", b"hi", check_file_info=True)
    message = slack.user_says("<@UBOT> and this?", files=[connect_only])
    await slack.push(slack.as_mention(message))
    final = await slack.wait_final(message["ts"])  # files.info refused: a note, and the question answered
    assert final == f"_📎 {connect_only['id']}: skipped, {NO_SCOPE}_\n\nNothing to read."


# ---- thread summaries ----


async def test_a_500_message_thread_is_summarized_in_parts_side_by_side_with_progress(
        slack: FakeSlack, engine: Engine, connect: Connect, tmp_path: Path) -> None:
    recorder = Recorder(engine)
    await connect(recorder, channel_settings(tmp_path))
    people = [("U0001", "Ann"), ("U0002", "Bob"), ("U0003", "Cid")]
    parent = slack.user_says("Planning the office move, thread below.", name="Ann")
    for i in range(499):
        user, name = people[i % 3]
        slack.user_says(f"Item {i}: we still need to move desk {i} to floor {i % 7}.", user=user, name=name,
                        thread_ts=parent["ts"])
    await slack.more.shortcut(parent["ts"], user="U0002")
    final = await slack.wait_final(parent["ts"], timeout=280)

    ended = list(zip(recorder.jobs, recorder.handles, strict=True))
    parts = [j for j, h in ended if j.turns[-1].content.startswith("Here is part ") and isinstance(h.final, Done)]
    assert len(parts) >= 2 and recorder.peak >= 2  # in parts, and side by side
    assert all(j.user == "slack:U0002" for j in recorder.jobs)
    # Digits take more tokens than the adapters' estimate: parts the engine refused were halved, nothing lost.
    refused = [h.final for _, h in ended if isinstance(h.final, Failed)]
    assert all(f.kind is FailureKind.PROMPT_TOO_LONG for f in refused), refused
    items = sorted(int(n) for j in parts for n in re.findall(r"Item (\d+):", j.turns[-1].content))
    assert items == list(range(499))
    assert recorder.jobs[-1].turns[-1].content.startswith("Here are summaries of consecutive parts")
    shown = [c.args["text"] for c in slack.calls_to("chat.update")]
    assert any(re.fullmatch(r"_Summarizing (\d+) parts… \(0 of \1 done\)_", t) for t in shown), shown
    assert any(t.startswith("_Combining ") for t in shown)
    assert final.strip() and not final.startswith("_")
    (summary,) = slack.bot_messages(parent["ts"])
    assert summary["metadata"]["event_type"] == SUMMARY_EVENT  # the thread does not become one the bot follows
    assert "engbot:regenerate:" in str(summary.get("blocks"))


async def test_stop_on_a_summary_stops_every_part(slack: FakeSlack, connect: Connect, tmp_path: Path) -> None:
    engine = ScriptedEngine(answer("part summary " * 200, size=2), delay_s=0.01)
    await connect(engine, channel_settings(tmp_path))
    parent = slack.user_says("A long thread.")
    for i in range(200):
        slack.user_says(f"Reply number {i} with some words in it to make it long enough.", thread_ts=parent["ts"])
    await slack.more.shortcut(parent["ts"])
    await slack.wait_for(lambda: len(engine.jobs) >= 2, timeout=20)
    (progress,) = slack.bot_messages(parent["ts"])
    stop = next(e["action_id"] for b in progress["blocks"] for e in b.get("elements", [])
                if e.get("action_id", "").startswith("engbot:stop:"))
    await slack.press(progress["ts"], stop, user="U0001")
    assert await slack.wait_final(parent["ts"]) == Messages.STOPPED_BY.format(who="<@U0001>")
    assert all(h.final is not None for h in engine.handles)
    assert not any(j.turns[-1].content.startswith("Here are summaries") for j in engine.jobs)


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


@pytest.mark.parametrize("streaming", ["edits", "native"])
async def test_a_reasoning_models_thinking_is_never_posted_and_left_out_of_the_history(
        slack: FakeSlack, thinker: Engine, connect: Connect, streaming: str) -> None:
    recorder = Recorder(thinker)
    await connect(recorder, ChannelSettings(files=FileLimits()), streaming=streaming)
    first = await ask(slack, "What is it?")
    final = await slack.wait_final(first["ts"])
    assert final == "_💭 Thought it through (3 words, hidden)._\n\nit is one"
    sent = str([c.args for c in slack.calls])
    assert "we can see" not in sent and "think>" not in sent  # not in any message, edit or stream
    if streaming == "native":  # while it thinks, the thread's status says so (no stream has started)
        assert [s["status"] for s in slack.ai.statuses][:1] == [Messages.STATUS_THINKING]
    else:  # the placeholder says so until the answer comes
        assert slack.calls_to("chat.postMessage")[0].args["text"] == Messages.THINKING
    follow = slack.user_says("<@UBOT> And then?", thread_ts=first["ts"])
    await slack.push(slack.as_mention(follow))
    await slack.wait_final(first["ts"], after=follow["ts"])
    turns = recorder.jobs[-1].turns
    assert [t.content for t in turns if t.role == "assistant"] == ["it is one"]  # no note, no thinking


async def test_show_thinking_on_shows_it_between_marked_lines(slack: FakeSlack, thinker: Engine, connect: Connect,
                                                              tmp_path: Path) -> None:
    config = tmp_path / "engbot.toml"
    config.write_text('[slack.channel.C0001]\nshow_thinking = "on"\n')
    await connect(Recorder(thinker), ChannelSettings(config_path=config))
    message = await ask(slack, "What is it?")
    assert await slack.wait_final(message["ts"]) == "💭 _Thinking:_\nwe can see\n💭 _Done thinking._\n\nit is one"
    assert isinstance(await thinker.submit_nowait(Job.ask("x")).result(), Done)
