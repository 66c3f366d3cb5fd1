"""The web playground over real HTTP on 127.0.0.1: a browser's requests (aiohttp's client reading the event stream
as the page's fetch does), the real engine and default model, through the shared answer flow; and the status
page's report. The page itself, in a real browser: test_playground_browser.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import bots.web
from bots.messages import Messages
from bots.web.access import Access
from bots.web.adapter import WebAdapter
from bots.web.settings import WebSettings
from engbot.activity import Activity
from engbot.http import make_app, serve
from engbot.settings import check_settings
from engbot.status import StatusView
from engine.types import Job
from tests.conftest import EngineFactory

TOKEN = "0123456789abcdef-playground"
LONG = "Write a very long story about a dragon and a knight, with many chapters."


class Browser:
    """One browser: its cookie jar, its event stream read in the background (``events``), its requests."""

    def __init__(self, base: str, token: str | None = None, host: str | None = None) -> None:
        self.base, self.token = base, token
        self.headers = {"Host": host} if host else {}
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    def auth(self, json_body: bool = False) -> dict[str, str]:
        headers = dict(self.headers)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if json_body:
            headers["Content-Type"] = "application/json"
        return headers

    async def open(self) -> int:
        """Load the page (the session cookie), then open the event stream; its status."""
        async with self.http.get(self.base + "/", headers=self.headers) as resp:
            assert resp.status == 200 and "engbot" in await resp.text()
        resp = await self.http.get(self.base + "/api/events", headers=self.auth())
        if resp.status != 200:
            resp.release()
            return resp.status
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        self._reader = asyncio.create_task(self._read(resp))
        await self.wait(lambda: self.of("hello"))
        return 200

    async def _read(self, resp: aiohttp.ClientResponse) -> None:
        buffer = ""
        async for chunk in resp.content.iter_any():
            buffer += chunk.decode()
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
                if "data" in lines:
                    self.events.append((lines["event"], json.loads(lines["data"])))
                    self.changed.set()
        resp.release()

    async def post(self, path: str, body: dict[str, Any], **headers: str) -> tuple[int, dict[str, Any]]:
        async with self.http.post(self.base + path, data=json.dumps(body),
                                  headers={**self.auth(json_body=True), **headers}) as resp:
            return resp.status, await resp.json()

    async def status(self) -> dict[str, Any]:
        async with self.http.get(self.base + "/api/status", headers=self.auth()) as resp:
            assert resp.status == 200
            report: dict[str, Any] = await resp.json()
            return report

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for event, data in self.events if event == kind]

    def messages(self) -> dict[str, dict[str, Any]]:
        """The conversation as the page shows it now: message id -> message."""
        shown: dict[str, dict[str, Any]] = {}
        for event, data in self.events:
            if event == "hello":
                shown = {m["id"]: m for m in data["messages"]}
            elif event == "reset":
                shown = {}
            elif event in ("post", "edit"):
                shown[data["message"]["id"]] = data["message"]
            elif event == "delete":
                shown.pop(data["id"], None)
        return shown

    def bot(self) -> list[dict[str, Any]]:
        return [m for m in self.messages().values() if m["kind"] == "bot"]

    async def wait(self, condition: Callable[[], object], timeout: float = 60) -> None:
        async def until() -> None:
            while not condition():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(until(), timeout)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.http.close()


def actions(message: dict[str, Any]) -> list[str]:
    return [c["action"] for c in message["controls"]]


def final(message: dict[str, Any]) -> bool:
    """The answer ended: no Stop button (and, without buttons, no cursor or placeholder)."""
    if message["controls"]:
        return "stop" not in actions(message)
    return not message["text"].endswith(Messages.CURSOR) and message["text"] != Messages.THINKING


Playground = Callable[..., Awaitable[tuple[str, WebAdapter, Activity]]]


@pytest.fixture
async def playground(engine_factory: EngineFactory) -> AsyncIterator[Playground]:
    """Serve the playground and status page of an engine on 127.0.0.1, as `engbot run` does."""
    runners: list[web.AppRunner] = []
    adapters: list[WebAdapter] = []

    async def start(access: Access | None = None, **env: object) -> tuple[str, WebAdapter, Activity]:
        engine = await engine_factory(**env)
        activity = Activity(engine)
        environ = {k: str(v) for k, v in env.items()}
        settings, errors = check_settings(environ, check_model=False)
        assert settings is not None, errors
        access = access or Access(None, open_without_token=True)
        adapter = bots.web.make_adapter(WebSettings.from_environ(environ), activity, access, settings.channels)
        adapters.append(adapter)
        status = StatusView(activity, settings, environ, access, lambda: [adapter])
        app = make_app(activity, lambda: [adapter])
        adapter.mount(app)
        status.mount(app)
        runner = await serve(app, "127.0.0.1", 0)
        runners.append(runner)
        await adapter.start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}", adapter, activity

    yield start
    for adapter in adapters:
        await adapter.close()
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def browsers() -> AsyncIterator[Callable[..., Browser]]:
    opened: list[Browser] = []

    def make(base: str, token: str | None = None, host: str | None = None) -> Browser:
        opened.append(Browser(base, token, host))
        return opened[-1]

    yield make
    for browser in opened:
        await browser.close()


async def test_a_question_streams_in_and_ends_with_its_buttons_and_a_follow_up_reads_it(
        playground: Playground, browsers: Callable[..., Browser]) -> None:
    base, _, activity = await playground(MAX_NEW_TOKENS=48)
    browser = browsers(base)
    assert await browser.open() == 200
    status, body = await browser.post("/api/ask", {"text": "What is the capital of France?"})
    assert status == 202 and body["ok"]
    await browser.wait(lambda: browser.bot() and final(browser.bot()[0]))
    (answer,) = browser.bot()
    assert answer["text"].strip() and not answer["text"].startswith("⚠️")
    assert actions(answer)[0] == "regenerate" and {"good", "bad"} <= set(actions(answer))
    edits = [d["message"] for d in browser.of("edit") if d["message"]["id"] == answer["id"]]
    assert len(edits) >= 2 and any(e["text"].endswith(Messages.CURSOR) for e in edits)  # it streamed in
    assert [m["kind"] for m in browser.messages().values()] == ["user", "bot"]

    report = await browser.status()
    assert report["recent"]["answers"] == 1 and report["recent"]["ttft_s"] is not None
    assert report["replicas"] == [{"index": 1, "state": "ready", "busy": 0, "slots": 1}]
    assert report["ready"]["ready"] and report["ready"]["checks"]["web"] and not report["admin"]

    # the follow-up's conversation holds the first question and the model's whole answer
    seen: list[Job] = []
    submit = activity.submit

    async def recording(job: Job) -> Any:
        seen.append(job)
        return await submit(job)

    activity.submit = recording  # type: ignore[method-assign]
    await browser.post("/api/ask", {"text": "And of Germany?"})
    await browser.wait(lambda: len(browser.bot()) == 2 and final(browser.bot()[1]))
    assert [t.role for t in seen[0].turns] == ["user", "assistant", "user"]
    assert seen[0].turns[0].content == "What is the capital of France?" and seen[0].platform == "web"
    assert seen[0].turns[1].content.strip() == answer["text"].strip()

    # a new conversation starts from nothing
    status, _ = await browser.post("/api/new", {})
    assert status == 200
    await browser.wait(lambda: not browser.messages())


async def test_stop_keeps_the_text_regenerate_replaces_it_and_only_the_asker_steers(
        playground: Playground, browsers: Callable[..., Browser]) -> None:
    base, _, _ = await playground(MAX_NEW_TOKENS=1500)
    browser, other = browsers(base), browsers(base)
    assert await browser.open() == 200 and await other.open() == 200
    await browser.post("/api/ask", {"text": LONG})
    await browser.wait(lambda: browser.bot() and len(browser.bot()[0]["text"]) > 40)
    (running,) = browser.bot()
    stop = next(c["id"] for c in running["controls"] if c["action"] == "stop")

    assert (await other.post("/api/press", {"id": stop}))[0] == 202  # not theirs: a word to them alone
    await other.wait(lambda: other.of("tell"))
    assert other.of("tell")[0]["text"] == Messages.PRESS_NOT_YOURS.format(what="stop")
    assert not other.messages() and not browser.of("tell")  # (each browser sees only its own conversation)

    assert (await browser.post("/api/press", {"id": stop}))[0] == 202
    await browser.wait(lambda: final(browser.bot()[0]))
    stopped = browser.bot()[0]
    assert stopped["text"].endswith(Messages.STOPPED_BY.format(who="you")) and len(stopped["text"]) > 60
    assert actions(stopped) == ["regenerate"]

    regenerate = stopped["controls"][0]["id"]
    assert (await browser.post("/api/press", {"id": regenerate}))[0] == 202
    await browser.wait(lambda: "stop" in actions(browser.bot()[0]))  # the same message, answering again
    again = next(c["id"] for c in browser.bot()[0]["controls"] if c["action"] == "stop")
    assert again != stop
    await browser.post("/api/press", {"id": again})
    await browser.wait(lambda: final(browser.bot()[0]))
    assert len(browser.bot()) == 1 and browser.bot()[0]["text"].endswith(Messages.STOPPED_BY.format(who="you"))


async def test_the_rate_limit_and_bad_requests_get_clear_answers(
        playground: Playground, browsers: Callable[..., Browser]) -> None:
    base, _, _ = await playground(MAX_NEW_TOKENS=8, RATE_LIMIT_PER_USER=1)
    browser = browsers(base)
    assert await browser.open() == 200
    await browser.post("/api/ask", {"text": "Hi"})
    await browser.post("/api/ask", {"text": "Hi again"})
    await browser.wait(lambda: any(m["kind"] == "notice" for m in browser.messages().values()))
    notice = next(m for m in browser.messages().values() if m["kind"] == "notice")
    assert notice["text"].startswith("You're asking faster than I can answer")
    assert (await browser.post("/api/ask", {"text": "  "}))[0] == 400
    assert (await browser.post("/api/ask", {"text": "x" * 9000}))[0] == 413
    assert (await browser.post("/api/press", {"id": "not-ours"}))[0] == 400
    # a web page elsewhere cannot make this browser ask: no form posts, no other origin
    async with browser.http.post(base + "/api/ask", data="text=hi",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"}) as resp:
        assert resp.status == 403
    assert (await browser.post("/api/ask", {"text": "hi"}, Origin="http://evil.example"))[0] == 403
    # nor reach it under another name (DNS rebinding) while it is open without a token
    rebound = browsers(base, host="rebound.example")
    assert await rebound.open() == 403


async def test_with_a_token_only_its_holders_chat_and_stop_answers_from_the_status_page(
        playground: Playground, browsers: Callable[..., Browser]) -> None:
    access = Access(TOKEN, open_without_token=False)
    base, _, activity = await playground(access, MAX_NEW_TOKENS=1500, PLAYGROUND_TOKEN=TOKEN)
    stranger, wrong, holder = browsers(base), browsers(base, token="x" * 20), browsers(base, token=TOKEN)
    assert await stranger.open() == 401 and await wrong.open() == 401
    async with stranger.http.get(base + "/api/events") as resp:
        body = await resp.json()
        assert body["locked"] and "PLAYGROUND_TOKEN" in body["error"]
    report = await stranger.status()  # read-only for everyone
    assert not report["admin"] and ["PLAYGROUND_TOKEN", "*** (27 chars)"] in report["settings"]
    assert TOKEN not in json.dumps(report)

    assert await holder.open() == 200 and holder.of("hello")[0]["admin"]
    await holder.post("/api/ask", {"text": LONG})
    await holder.wait(lambda: holder.bot() and len(holder.bot()[0]["text"]) > 40)
    report = await holder.status()
    (job,) = report["queue"]["jobs"]
    assert job["platform"] == "web" and job["state"] == "answering" and report["admin"]
    assert (await stranger.post("/api/status/stop", {"job": job["job"]}))[0] == 403
    status, body = await holder.post("/api/status/stop", {"job": job["job"]})
    assert status == 200 and body["stopped"]
    await holder.wait(lambda: final(holder.bot()[0]))
    assert holder.bot()[0]["text"].endswith(Messages.STOPPED)  # (stopped by the operator, not the asker)
    assert not activity.in_flight()


async def test_continue_goes_on_in_the_same_message_and_feedback_is_counted_once(
        playground: Playground, browsers: Callable[..., Browser]) -> None:
    base, adapter, _ = await playground(MAX_NEW_TOKENS=12)
    browser = browsers(base)
    assert await browser.open() == 200
    await browser.post("/api/ask", {"text": LONG})
    await browser.wait(lambda: browser.bot() and final(browser.bot()[0]))
    cut = browser.bot()[0]
    assert "continue" in actions(cut)  # cut at MAX_NEW_TOKENS
    press = {c["action"]: c["id"] for c in cut["controls"]}
    await browser.post("/api/press", {"id": press["continue"]})
    await browser.wait(lambda: final(browser.bot()[0]) and len(browser.bot()[0]["text"]) > len(cut["text"]))
    assert len(browser.bot()) == 1 and browser.bot()[0]["text"].startswith(cut["text"].strip()[:20])

    good = next(c["id"] for c in browser.bot()[0]["controls"] if c["action"] == "good")
    await browser.post("/api/press", {"id": good})
    await browser.post("/api/press", {"id": good})
    await browser.wait(lambda: len(browser.of("tell")) == 2)
    assert [t["text"] for t in browser.of("tell")] == [Messages.THANKS, Messages.VOTED]
    registry = adapter.submitter.metrics.registry
    assert registry.get_sample_value("engbot_feedback_total", {"platform": "web", "value": "good"}) == 1.0


async def test_the_settings_files_defaults_reach_the_playgrounds_jobs(
        playground: Playground, browsers: Callable[..., Browser], tmp_path: Path) -> None:
    config = tmp_path / "engbot.toml"
    config.write_text('[defaults]\nsystem_prompt = "Answer in one short sentence."\nmax_new_tokens = 12\n')
    base, _, activity = await playground(MAX_NEW_TOKENS=48, ENGBOT_CONFIG=str(config),
                                         STATE_PATH=str(tmp_path / "state.db"))
    seen: list[Job] = []
    submit = activity.submit

    async def recording(job: Job) -> Any:
        seen.append(job)
        return await submit(job)

    activity.submit = recording  # type: ignore[method-assign]
    browser = browsers(base)
    assert await browser.open() == 200
    await browser.post("/api/ask", {"text": "What is the capital of France?"})
    await browser.wait(lambda: browser.bot() and final(browser.bot()[0]))
    (job,) = seen
    assert job.system_prompt == "Answer in one short sentence." and job.params is not None
    assert job.params.max_new_tokens == 12
    assert not (tmp_path / "state.db").exists()  # (no persona was set: no file)
