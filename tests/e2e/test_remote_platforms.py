"""The remote backend end to end: Slack and Discord (the real slack-bolt and discord.py clients against the fakes)
answered by llama-cpp-python's OpenAI-compatible server through ``RemoteSubmitter``, with the buttons (Stop closes
the server's stream, Continue, Regenerate); and the ``engbot`` command with MODEL_BACKEND=openai (run, ask,
doctor, start-up refusals) as a real process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bots.messages import Messages
from bots.text import markdown_to_mrkdwn
from engine.api import JobHandle
from engine.config import EngineSettings
from engine.remote import RemoteSettings, RemoteSubmitter
from engine.remote.request import CONTINUE_PROMPT
from engine.types import Done, Failed, FailureKind, GenParams, Job
from testkit.fake_discord import BOT, CHANNEL_ID, FakeDiscord, mention
from testkit.fake_slack import FakeSlack
from testkit.openai_proxy import FaultProxy
from testkit.openai_server import ALIAS, LlamaCppServer, free_port
from tests.e2e import test_discord_controls as discord_kit
from tests.e2e import test_slack_controls as slack_kit

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]
ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-engbot-e2e-key"
LONG = GenParams(max_new_tokens=600, temperature=0.8, seed=3)  # runs until stopped


@pytest.fixture(scope="module")
def server(model_path: Path) -> Iterator[LlamaCppServer]:
    running = LlamaCppServer(model_path, api_key=KEY)
    running.start_sync()
    yield running
    running.stop_sync()


@pytest_asyncio.fixture(loop_scope="module")
async def proxy(server: LlamaCppServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(server.url) as fake:  # only watches here: what engbot sent, when it closed a stream
        yield fake


def environ(url: str, **env: object) -> dict[str, str]:
    return {"MODEL_BACKEND": "openai", "OPENAI_BASE_URL": url, "OPENAI_API_KEY": KEY, "TEMPERATURE": "0",
            "MAX_NEW_TOKENS": "24", "REMOTE_CONTINUE": "ask",  # (llama-cpp-python's server cannot continue one)
            **{k: str(v) for k, v in env.items()}}


@pytest_asyncio.fixture(loop_scope="module")
async def remote(proxy: FaultProxy) -> AsyncIterator[RemoteSubmitter]:
    values = environ(proxy.url)
    submitter = RemoteSubmitter(EngineSettings.from_environ(values), RemoteSettings.from_environ(values))
    await submitter.start()
    yield submitter
    await submitter.stop(grace_s=0)


class Recording:
    """The remote submitter, keeping every job and handle; with ``long_first`` the first job runs until stopped."""

    def __init__(self, submitter: RemoteSubmitter, *, long_first: bool = False) -> None:
        self.submitter, self.long_first = submitter, long_first
        self.jobs, self.handles = list[Job](), list[JobHandle]()

    def __getattr__(self, name: str) -> Any:  # metrics, cancel, ...
        return getattr(self.submitter, name)

    async def submit(self, job: Job) -> JobHandle:
        if self.long_first and not self.jobs:
            job = replace(job, params=LONG)
        self.jobs.append(job)
        self.handles.append(await self.submitter.submit(job))
        return self.handles[-1]


# ---- Slack ----


@pytest_asyncio.fixture(loop_scope="module")
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


async def test_slack_answers_continues_and_regenerates_through_the_model_server(
        slack: FakeSlack, remote: RemoteSubmitter, proxy: FaultProxy) -> None:
    submitter = Recording(remote)
    adapter = await slack_kit.connect(slack, submitter)
    try:
        question = slack.user_says("<@UBOT> Explain in detail how a bicycle works.", user="U0001")
        await slack.push(slack.as_mention(question))
        first = await slack.wait_final(question["ts"])
        cut = submitter.handles[0].final
        assert isinstance(cut, Done) and cut.finish_reason == "length"  # MAX_NEW_TOKENS=24
        assert first == markdown_to_mrkdwn(cut.text.strip())
        assert proxy.calls[0].messages[-1] == {"role": "user", "content": "Explain in detail how a bicycle works."}

        message = slack_kit.answer_of(slack, question["ts"])
        job = submitter.jobs[0].id
        await slack.press(message["ts"], f"engbot:continue:{job}", user="U0001")
        await slack.wait_for(lambda: len(submitter.handles) == 2 and submitter.handles[1].done, timeout=60)
        longer = await slack.wait_final(question["ts"])
        assert longer.startswith(first.rstrip()[:40]) and len(longer) > len(first)
        assert submitter.jobs[1].prefill == cut.text
        assert proxy.calls[1].messages[-2:] == [{"role": "assistant", "content": cut.text},
                                                {"role": "user", "content": CONTINUE_PROMPT}]

        continued = submitter.jobs[1].id
        await slack.press(message["ts"], f"engbot:regenerate:{continued}", user="U0001")
        await slack.wait_for(lambda: len(submitter.handles) == 3 and submitter.handles[2].done, timeout=60)
        again = await slack.wait_final(question["ts"])
        assert again.strip() and submitter.jobs[2].resample
        assert proxy.calls[2].body["temperature"] == 0.7  # another answer, sampled
        assert [m["ts"] for m in slack.bot_messages(question["ts"])] == [message["ts"]]  # all in one message
    finally:
        await adapter.close(timeout_s=10)


async def test_slack_stop_closes_the_stream_at_the_server(slack: FakeSlack, remote: RemoteSubmitter,
                                                          proxy: FaultProxy, server: LlamaCppServer) -> None:
    submitter = Recording(remote, long_first=True)
    adapter = await slack_kit.connect(slack, submitter)
    try:
        runaway = slack.user_says("<@UBOT> Tell me a very long story about the sea.", user="U0001")
        await slack.push(slack.as_mention(runaway))
        await slack.wait_for(lambda: slack.bot_messages(runaway["ts"]) and slack_kit.answer_of(
            slack, runaway["ts"])["text"].endswith(Messages.CURSOR), timeout=60)
        reply = slack_kit.answer_of(slack, runaway["ts"])["ts"]
        await slack.press(reply, f"engbot:stop:{submitter.jobs[0].id}", user="U0001")
        final = await slack.wait_final(runaway["ts"])
        assert final.endswith(Messages.STOPPED_BY.format(who="<@U0001>"))
        result = submitter.handles[0].final
        assert isinstance(result, Failed) and result.kind is FailureKind.CANCELLED and result.partial
        await proxy.wait_for(lambda: proxy.calls[0].client_closed)  # the stream was closed...
        assert not proxy.calls[0].completed
        await proxy.wait_for(lambda: "Disconnected from client" in server.log)  # ...and the server stopped
    finally:
        await adapter.close(timeout_s=10)


# ---- Discord ----


@pytest_asyncio.fixture(loop_scope="module")
async def discord() -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    await fake.start()
    yield fake
    await fake.close()


async def connect_discord(fake: FakeDiscord, submitter: Any) -> Any:
    from bots.discord.adapter import DiscordAdapter
    from bots.discord.settings import DiscordSettings
    from testkit.fake_discord import GUILD_ID, TOKEN

    adapter = DiscordAdapter(DiscordSettings(bot_token=TOKEN, api_url=fake.api_url, gateway_url=fake.gateway_url,
                                             guild_id=GUILD_ID, rate_limit_per_user=0, guild_ready_timeout_s=0.05),
                             submitter)
    adapter.flow.style = replace(adapter.flow.style, edit_interval_s=0.25)
    await adapter.start()
    return adapter


async def test_discord_answers_a_mention_and_ask_and_stops_through_the_model_server(
        discord: FakeDiscord, remote: RemoteSubmitter, proxy: FaultProxy) -> None:
    submitter = Recording(remote)
    adapter = await connect_discord(discord, submitter)
    try:
        said = await discord.say(CHANNEL_ID, f"{mention()} What is the capital of France?", mentions=(BOT,))
        answer = await discord_kit.final_answer(discord, str(said["id"]))
        done = submitter.handles[0].final
        assert isinstance(done, Done) and answer["content"].strip() and done.text.strip()[:20] in answer["content"]
        assert len(discord.threads) == 1

        asked = await discord.ask("Name three colours.")
        original = await discord.wait_for(lambda: (o := discord.original(asked)) and discord_kit.is_final(
            o["content"]) and o, timeout=60)
        assert original["content"].strip() and isinstance(submitter.handles[1].final, Done)

        submitter.long_first, submitter.jobs = True, []
        runaway = await discord_kit.asked_in_thread(discord, "Tell me a very long story about a castle.")
        await discord.wait_for(lambda: discord_kit.answer_of(discord, runaway)["content"].endswith(
            Messages.CURSOR), timeout=60)
        job = submitter.jobs[0].id
        await discord.press(discord_kit.answer_of(discord, runaway), f"engbot:stop:{job}")
        stopped = await discord_kit.final_answer(discord, runaway)
        assert "Stopped by" in stopped["content"]
        assert isinstance(submitter.handles[-1].final, Failed)
        await proxy.wait_for(lambda: proxy.calls[-1].client_closed)
    finally:
        await adapter.close()


# ---- the engbot command ----


async def engbot(*args: str, cwd: Path, **env: str) -> tuple[int, str, str]:
    environment = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "HOME": str(cwd), **env}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "engbot", *args, cwd=cwd, env=environment,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_command_with_a_model_server(server: LlamaCppServer, tmp_path: Path) -> None:
    env = environ(server.url, OPENAI_MODEL=ALIAS)
    code, out, err = await engbot("ask", "What is the capital of France?", cwd=tmp_path, **env)
    assert code == 0 and out.strip(), err

    code, out, err = await engbot("doctor", cwd=tmp_path, **env)
    assert code == 0 and "OK" in out, err
    assert f"model                  {ALIAS}" in out and "test answer" in out
    assert KEY not in out + err and "OPENAI_API_KEY         sk-***" in out

    code, out, err = await engbot("ask", "Hi", cwd=tmp_path, **{**env, "OPENAI_API_KEY": "sk-wrong-4567"})
    assert code == 2 and "OPENAI_API_KEY" in err and "refused it (401" in err and "sk-wrong-4567" not in err
    code, out, err = await engbot("doctor", cwd=tmp_path, **{**env, "OPENAI_API_KEY": "sk-wrong-4567"})
    assert code == 2 and "FAIL: OPENAI_API_KEY" in err
    nobody = f"http://127.0.0.1:{free_port()}/v1"
    code, out, err = await engbot("run", cwd=tmp_path, **{**env, "OPENAI_BASE_URL": nobody,
                                                          "SLACK_BOT_TOKEN": "xoxb-1", "SLACK_APP_TOKEN": "xapp-1"})
    assert code == 2 and f"cannot reach the model server at OPENAI_BASE_URL={nobody}" in err
    code, out, err = await engbot("ask", "Hi", cwd=tmp_path, MODEL_BACKEND="openai")
    assert code == 2 and "OPENAI_BASE_URL='' is not valid: not set" in err


async def test_engbot_run_answers_slack_with_the_model_server(server: LlamaCppServer, tmp_path: Path) -> None:
    async with FakeSlack() as slack:
        port = free_port()
        env = {**environ(server.url), "SLACK_BOT_TOKEN": slack.bot_token, "SLACK_APP_TOKEN": slack.app_token,
               "SLACK_API_URL": slack.api_url, "SLACK_STREAMING": "edits", "HTTP_HOST": "127.0.0.1",
               "HTTP_PORT": str(port), "LOG_LEVEL": "INFO", "SHUTDOWN_GRACE_S": "1"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engbot", "run", cwd=tmp_path, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "HOME": str(tmp_path), **env})
        try:
            await slack.wait_for(lambda: slack.connections > 0, timeout=60)
            message = slack.user_says("<@UBOT> What is the capital of France?")
            await slack.push(slack.as_mention(message))
            answer = await slack.wait_final(message["ts"], timeout=60)
            assert answer.strip() and not answer.startswith("⚠️")
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 30)
            stderr = (await proc.stderr.read()).decode()  # type: ignore[union-attr]
            assert code == 0, stderr
            assert f"model server ready: {ALIAS} at {server.url}" in stderr and "platform=slack outcome=ok" in stderr
            assert KEY not in stderr
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
