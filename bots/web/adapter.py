"""The playground's adapter: a page on ``engbot run``'s own HTTP server, and the routes it talks to.

    GET  /                 the page (plain HTML, CSS and JavaScript from ``static/``; sets the session cookie)
    GET  /api/events       Server-Sent Events: the conversation (``hello``), then every post, edit and delete
    POST /api/ask          {"text": ...}: a question, answered through the shared answer flow
    POST /api/press        {"id": "engbot:stop:<job>"}: a button under an answer
    POST /api/new          a new conversation

Questions and presses are acknowledged at once (202) and handled on their own tasks, as Slack's and Discord's are;
what they lead to arrives on the event stream. Network code only: who may do what is ``access.py``'s, the
conversation ``session.py``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Coroutine
from importlib import resources
from typing import Any

from aiohttp import web

from bots.answer import AnswerFlow, Question
from bots.channels.effective import Place
from bots.channels.lookup import ChannelSettings
from bots.limits import RateLimiter, Recent
from bots.messages import Messages
from bots.presses import Press, parse
from bots.sink import AnswerTarget, Reply
from bots.stream import StreamStyle
from bots.web.access import Access, bearer, same_origin
from bots.web.session import Event, Session
from bots.web.settings import WebSettings
from engine.api import Submitter
from engine.types import Turn

log = logging.getLogger("engbot.web")

PLATFORM = "web"
COOKIE = "engbot_session"
SESSIONS_TTL_S = 24 * 3600.0
MAX_SESSIONS = 1_000
MAX_QUESTION_CHARS = 8_000
HEARTBEAT_S = 15.0
DRAIN_TIMEOUT_S = 30.0
# a browser is no chat platform with an edit budget: the answer is shown ten times a second, in one message
STYLE = StreamStyle(limit=1_000_000, edit_interval_s=0.1)
STATIC = {"playground.js": "text/javascript", "playground.css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class WebAdapter:
    """The playground: browsers chat with ``submitter`` through the shared answer flow."""

    name = PLATFORM

    def __init__(self, settings: WebSettings, submitter: Submitter, access: Access,
                 channels: ChannelSettings | None = None) -> None:
        self.settings, self.submitter, self.access = settings, submitter, access
        # the settings file's [defaults], SHOW_THINKING and THINKING_TAGS apply here too (the playground has no
        # channels of its own, and no persona)
        self.channels = channels or ChannelSettings()
        self.flow = AnswerFlow(PLATFORM, submitter,
                               RateLimiter(settings.rate_limit_per_user, settings.rate_limit_period_s), STYLE,
                               mention=lambda user: "you",  # (only the asker can stop their answer here)
                               thinking_tags=self.channels.tags)
        self._sessions: Recent[str, Session] = Recent(SESSIONS_TTL_S, MAX_SESSIONS)
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._intake = True

    def __repr__(self) -> str:
        return f"<WebAdapter connected={self.connected} in_flight={self.in_flight}>"

    # ---- the adapter's life (bots.registry.Adapter) ----

    @property
    def connected(self) -> bool:
        """Serving: there is nothing to connect to."""
        return self._started and self._intake

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        self._started = True

    async def stop_intake(self) -> None:
        self._intake = False

    async def close(self) -> None:
        """Wait for the answers in flight (the submitter's shutdown ends them), then end every event stream."""
        self._intake = False
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=DRAIN_TIMEOUT_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        for session in self._sessions.values():
            session.close_streams()

    def mount(self, app: web.Application) -> None:
        """Add the page and its routes to ``engbot run``'s HTTP server (before it starts)."""
        app.router.add_get("/", self.page)
        for name in STATIC:
            app.router.add_get(f"/static/{name}", self.static)
        app.router.add_get("/api/events", self.events)
        app.router.add_post("/api/ask", self.ask)
        app.router.add_post("/api/press", self.press)
        app.router.add_post("/api/new", self.new)

    # ---- the page ----

    async def page(self, request: web.Request) -> web.Response:
        response = web.Response(body=_static("index.html"), content_type="text/html", charset="utf-8",
                                headers=SECURITY_HEADERS)
        if request.cookies.get(COOKIE) is None:
            response.set_cookie(COOKIE, secrets.token_urlsafe(24), httponly=True, samesite="Strict", path="/")
        return response

    async def static(self, request: web.Request) -> web.Response:
        name = request.path.rsplit("/", 1)[-1]
        return web.Response(body=_static(name), content_type=STATIC[name], charset="utf-8",
                            headers=SECURITY_HEADERS)

    # ---- the conversation ----

    async def events(self, request: web.Request) -> web.StreamResponse:
        """The session's events as Server-Sent Events, read with ``fetch`` (which can send the token header)."""
        session = self._session(request, changes=False)
        if isinstance(session, web.Response):
            return session
        response = web.StreamResponse(headers={**SECURITY_HEADERS, "Content-Type": "text/event-stream",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        with session.stream() as queue, contextlib.suppress(ConnectionError):
            await _send(response, Event("hello", {**session.snapshot(), "admin": self._admin(request)}))
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    await response.write(b": ping\n\n")  # also finds out that a browser went away
                    continue
                if event is None:
                    break
                await _send(response, event)
        return response

    async def ask(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if isinstance(session, web.Response):
            return session
        body = await _json_body(request)
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text.strip():
            return _error(400, "Type a question first.")
        if len(text) > MAX_QUESTION_CHARS:
            return _error(413, f"That question is too long: at most {MAX_QUESTION_CHARS:,} characters.")
        if not self._intake:
            return _error(503, Messages.UNAVAILABLE)
        chat = session.conversation
        asked = chat.add("user", Reply(text.strip()))

        async def turns() -> tuple[Turn, ...]:
            return chat.turns_until(asked.id)

        effective = await self.channels.effective(Place(PLATFORM, "playground"))
        question = Question(user=session.user, source=f"{chat.id}:{asked.id}", turns=turns,
                            system_prompt=effective.job_system_prompt, params=effective.job_params,
                            thinking=effective.show_thinking, model=effective.job_model)
        self._spawn(self._answer(question, chat.target()), f"answering question {asked.id}")
        return web.json_response({"ok": True, "message": asked.id}, status=202)

    async def _answer(self, question: Question, target: AnswerTarget) -> None:
        await self.flow.answer(question, target)

    async def press(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if isinstance(session, web.Response):
            return session
        body = await _json_body(request)
        parsed = parse(body.get("id", "")) if isinstance(body, dict) and isinstance(body.get("id"), str) else None
        if parsed is None:
            return _error(400, "That is not one of the bot's buttons.")
        if not self._intake:
            return _error(503, Messages.UNAVAILABLE)
        action, job_id = parsed

        async def tell(text: str) -> None:
            session.tell(text)

        self._spawn(self.flow.press(Press(action, job_id, session.user), tell), f"a {action} press on {job_id[:8]}")
        return web.json_response({"ok": True}, status=202)

    async def new(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if isinstance(session, web.Response):
            return session
        return web.json_response({"conversation": session.new_conversation().id})

    # ---- shared steps ----

    def _session(self, request: web.Request, *, changes: bool = True) -> Session | web.Response:
        """The request's session, if it may chat; else the response that says why not."""
        host = request.headers.get("Host", "")
        if changes and (request.content_type != "application/json"
                        or not same_origin(request.headers.get("Origin"), host)):
            return _error(403, "Requests must come from the playground's page.")
        refusal = self.access.chat_refusal(bearer(request.headers.get("Authorization")), host)
        if refusal is not None:
            return _error(401 if self.access.token is not None else 403, refusal, locked=True)
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            return _error(401, "Your session is missing: reload the page.")
        session = self._sessions.get(cookie)
        if session is None:
            session = Session(cookie, self._answer_text)
        self._sessions.put(cookie, session)  # (kept a day from its last use)
        return session

    def _admin(self, request: web.Request) -> bool:
        return self.access.admin(bearer(request.headers.get("Authorization")))

    def _answer_text(self, job_id: str) -> str | None:
        record = self.flow.answers.get(job_id)
        return record.text if record is not None and record.final is not None else None

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception:
                log.exception("web: %s failed", what)

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _static(name: str) -> bytes:
    return resources.files("bots.web").joinpath("static", name).read_bytes()


def _error(status: int, text: str, *, locked: bool = False) -> web.Response:
    return web.json_response({"error": text, "locked": locked}, status=status, headers={"Cache-Control": "no-store"})


async def _json_body(request: web.Request) -> object:
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError):
        return None


async def _send(response: web.StreamResponse, event: Event) -> None:
    await response.write(f"event: {event.type}\ndata: {json.dumps(event.data, ensure_ascii=False)}\n\n".encode())
