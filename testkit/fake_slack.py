"""A fake Slack on 127.0.0.1: the Web API methods the adapter calls, and the Socket Mode WebSocket.

    async with FakeSlack() as slack:
        settings = SlackSettings(bot_token=slack.bot_token, app_token=slack.app_token, api_url=slack.api_url)
        ...
        event = slack.user_says("<@UBOT> hi")          # stored in the channel, as Slack would
        await slack.push(event)                        # an events_api envelope on the socket
        final = await slack.wait_final(event["ts"])    # the bot's last message in that thread, once it settles

It keeps channels' messages so ``conversations.replies`` answers from what was said, records every request
(``calls``) and every envelope ack (``acks``), echoes the bot's own posts back as events like Slack does, refuses
texts longer than ``max_text`` (``msg_too_long``), and can fail chosen calls (``fail``: an error status, or a
dropped connection; before or after doing what was asked) or drop the socket (``drop_socket``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from bots.messages import Messages
from testkit.fake_slack_ai import FakeAiSurface
from testkit.fake_slack_more import FakeSlackMore

_CLOCK = itertools.count(1)  # one clock for every fake: message ts stay unique across tests (and engine dedup)


@dataclass
class Call:
    """One Web API request as the fake received it."""

    method: str
    args: dict[str, Any]
    token: str | None
    at: float = field(default_factory=time.monotonic)


@dataclass
class Failure:
    status: int
    error: str
    retry_after: float | None
    acted: bool  # the call took effect before the failure (the client cannot tell)
    disconnect: bool  # no answer at all: the connection is closed


class FakeSlack:
    """See the module docstring."""

    def __init__(self, *, bot_user_id: str = "UBOT", bot_id: str = "BBOT", team_id: str = "T0001",
                 echo_bot_messages: bool = True, max_text: int = 4000,
                 rate_limits: dict[str, tuple[int, float]] | None = None) -> None:
        self.bot_token = "xoxb-1111-2222-fake"
        self.app_token = "xapp-1-A0001-3333-fake"
        self.bot_user_id, self.bot_id, self.team_id = bot_user_id, bot_id, team_id
        self.echo_bot_messages = echo_bot_messages
        self.max_text = max_text
        self.calls: list[Call] = []
        self.ephemeral: list[dict[str, Any]] = []  # chat.postEphemeral messages: channel, user, text, thread_ts
        # method -> (calls, seconds): Slack's rate tiers are per method and workspace; over it, 429 and Retry-After
        # in whole seconds. Off unless a test asks: tests compress time (edits every 0.25 s, not every second).
        self.rate_limits = rate_limits or {}
        self.limited: list[Call] = []  # the calls answered 429 for going over a rate limit
        self._recent_calls: dict[str, deque[float]] = defaultdict(deque)
        self.acks: dict[str, float] = {}  # envelope id -> when its ack arrived
        self.pushed: dict[str, float] = {}  # envelope id -> when it was sent
        self.messages: dict[str, list[dict[str, Any]]] = defaultdict(list)  # channel -> messages, oldest first
        self.connections = 0  # sockets opened (each got a hello)
        self._failures: dict[str, deque[Failure]] = defaultdict(deque)
        self._sockets: list[web.WebSocketResponse] = []
        self._socket_ready = asyncio.Event()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._echoes: set[asyncio.Task[str]] = set()
        self.port = 0
        self.ai = FakeAiSurface(self)  # chat.*Stream, assistant.threads.*, and the AI surface's events
        self.more = FakeSlackMore(self)  # files, slash commands, shortcuts

    # ---- lifecycle ----

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/link/", self._socket)
        self.more.routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        for task in list(self._echoes):
            task.cancel()
        await asyncio.gather(*self._echoes, return_exceptions=True)
        for ws in self._sockets:
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeSlack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    # ---- what tests arrange ----

    def fail(self, method: str, *, status: int = 429, error: str = "ratelimited", retry_after: float | None = 1,
             times: int = 1, acted: bool = False, disconnect: bool = False) -> None:
        """Answer the next ``times`` calls of ``method`` with an error status (and Retry-After), or close the
        connection without an answer (``disconnect``). With ``acted`` the call takes effect first, as when Slack
        posted a message but failed on the way back."""
        for _ in range(times):
            self._failures[method].append(Failure(status, error, retry_after, acted, disconnect))

    def next_ts(self) -> str:
        return f"{1_700_000_000 + next(_CLOCK)}.000100"

    def user_says(self, text: str, *, channel: str = "C0001", user: str = "U0001", thread_ts: str | None = None,
                  channel_type: str = "channel", files: list[dict[str, Any]] | None = None,
                  event_type: str = "message", name: str | None = None) -> dict[str, Any]:
        """Store a person's message in the channel and return its event, as Slack would send it. With ``name``
        the message carries the author's profile, as Slack adds it to messages people post."""
        ts = self.next_ts()
        message: dict[str, Any] = {"type": "message", "user": user, "text": text, "ts": ts, "team": self.team_id,
                                   "client_msg_id": str(uuid.uuid4())}
        if name:
            message["user_profile"] = {"avatar_hash": "g0", "image_72": "https://example.com/a.png",
                                       "first_name": name, "real_name": f"{name} Example", "display_name": name,
                                       "team": self.team_id, "name": name.lower(), "is_restricted": False,
                                       "is_ultra_restricted": False}
        if thread_ts:
            message["thread_ts"] = thread_ts
        if files:
            message["files"] = files
            message["subtype"] = "file_share"
        self.messages[channel].append(message)
        return self.event_for(message, channel, channel_type=channel_type, event_type=event_type)

    def event_for(self, message: dict[str, Any], channel: str, *, channel_type: str = "channel",
                  event_type: str = "message") -> dict[str, Any]:
        event = {**message, "type": event_type, "channel": channel, "event_ts": message["ts"]}
        if event_type == "message":
            event["channel_type"] = channel_type
        else:
            event.pop("subtype", None)
        return event

    def as_mention(self, event: dict[str, Any]) -> dict[str, Any]:
        """The ``app_mention`` copy of a message event that mentions the bot."""
        mention = {k: v for k, v in event.items() if k not in ("channel_type", "subtype")}
        mention["type"] = "app_mention"
        return mention

    def bot_said(self, text: str, *, channel: str = "C0001", thread_ts: str) -> str:
        """Store a message of the bot (e.g. from before a restart) in a thread."""
        ts = self.next_ts()
        self.messages[channel].append({"type": "message", "user": self.bot_user_id, "bot_id": self.bot_id,
                                       "text": text, "ts": ts, "thread_ts": thread_ts, "team": self.team_id})
        return ts

    def envelope(self, event: dict[str, Any], *, retry_attempt: int = 0,
                 envelope_id: str | None = None) -> dict[str, Any]:
        return {
            "envelope_id": envelope_id or str(uuid.uuid4()),
            "type": "events_api",
            "accepts_response_payload": False,
            "retry_attempt": retry_attempt,
            "retry_reason": "timeout" if retry_attempt else "",
            "payload": self.callback(event),
        }

    def callback(self, event: dict[str, Any]) -> dict[str, Any]:
        """The Events API body around an event (also what HTTP mode POSTs)."""
        return {
            "token": "verification-token", "team_id": self.team_id, "api_app_id": "A0001", "event": event,
            "type": "event_callback", "event_id": "Ev" + uuid.uuid4().hex[:10].upper(),
            "event_time": int(time.time()), "is_ext_shared_channel": False,
            "authorizations": [{"enterprise_id": None, "team_id": self.team_id, "user_id": self.bot_user_id,
                                "is_bot": True, "is_enterprise_install": False}],
        }

    async def push(self, event: dict[str, Any], *, retry_attempt: int = 0, socket: int = -1) -> str:
        """Send an event on the socket; returns its envelope id."""
        envelope = self.envelope(event, retry_attempt=retry_attempt)
        await self.push_raw(json.dumps(envelope), envelope["envelope_id"], socket=socket)
        return str(envelope["envelope_id"])

    async def push_raw(self, text: str, envelope_id: str | None = None, *, socket: int = -1) -> None:
        """Send ``text`` on the newest socket, or on the ``socket``-th opened: Slack spreads an app's events over
        its open connections (one a host when several ``engbot run`` share an app)."""
        await asyncio.wait_for(self._socket_ready.wait(), 10)
        if envelope_id is not None:
            self.pushed[envelope_id] = time.monotonic()
        await self._sockets[socket].send_str(text)

    async def press(self, message_ts: str, action_id: str, *, user: str = "U0001", channel: str = "C0001",
                    value: str | None = None, stale: bool = False) -> str:
        """Press a button (or a feedback button, with its ``value``) of the bot's message, as Slack sends it: an
        ``interactive`` envelope with a ``block_actions`` payload. Returns the envelope id (``acks`` says when it
        was acknowledged). The button must be on the message now, unless ``stale``: a client that still shows an
        older version of the message (or a button of a message the bot no longer knows)."""
        message = next(m for m in self.messages[channel] if m["ts"] == message_ts)
        element = _element(message.get("blocks", []), action_id)
        if element is None and stale:
            element = {"type": "button", "action_id": action_id, "value": "",
                       "text": {"type": "plain_text", "text": "?"}}
        assert element is not None, f"no {action_id} on message {message_ts}"
        action: dict[str, Any] = {"action_id": action_id, "block_id": "b1", "type": element["type"],
                                  "action_ts": f"{time.time():.6f}"}
        if element["type"] == "button":
            action.update(value=element.get("value", ""), text=element["text"])
        else:  # feedback_buttons
            assert value in (element["positive_button"]["value"], element["negative_button"]["value"]), value
            action["value"] = value
        payload = {
            "type": "block_actions", "user": {"id": user, "username": user.lower(), "team_id": self.team_id},
            "api_app_id": "A0001", "token": "verification-token", "trigger_id": f"{next(_CLOCK)}.{uuid.uuid4().hex}",
            "team": {"id": self.team_id, "domain": "fake"}, "is_enterprise_install": False,
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel, "is_ephemeral": False},
            "channel": {"id": channel, "name": "general"}, "message": dict(message),
            "response_url": f"http://127.0.0.1:{self.port}/respond/{uuid.uuid4().hex}", "actions": [action],
        }
        envelope_id = str(uuid.uuid4())
        envelope = {"envelope_id": envelope_id, "type": "interactive", "accepts_response_payload": False,
                    "payload": payload}
        await self.push_raw(json.dumps(envelope), envelope_id)
        return envelope_id

    async def drop_socket(self) -> None:
        """Close the current socket from the server side, as Slack does now and then."""
        self._socket_ready.clear()
        await self._sockets[-1].close()

    # ---- what tests inspect ----

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def thread(self, ts: str, channel: str = "C0001") -> list[dict[str, Any]]:
        """The thread's messages (parent first)."""
        return [m for m in self.messages[channel] if m["ts"] == ts or m.get("thread_ts") == ts]

    def bot_messages(self, thread_ts: str, channel: str = "C0001") -> list[dict[str, Any]]:
        return [m for m in self.thread(thread_ts, channel) if m.get("bot_id") == self.bot_id]

    def posts_in(self, thread_ts: str, channel: str = "C0001") -> list[Call]:
        return [c for c in self.calls_to("chat.postMessage")
                if c.args.get("thread_ts") == thread_ts and c.args.get("channel") == channel]

    async def wait_for(self, condition: Callable[[], object], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()
            if condition():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the fake Slack did not see what the test waited for")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))

    async def wait_final(self, thread_ts: str, channel: str = "C0001", *, after: str = "",
                         timeout: float = 60.0) -> str:
        """Wait until the bot's last message in the thread (posted after the message ``after``) holds neither a
        status nor the streaming cursor, and is not a stream still going; return its text."""

        def newest() -> dict[str, Any] | None:
            bot = [m for m in self.bot_messages(thread_ts, channel) if m["ts"] > after]
            return bot[-1] if bot else None

        await self.wait_for(lambda: (m := newest()) is not None and not _is_interim(m["text"])
                            and not self.ai.streaming(m["ts"]), timeout)
        return str(newest()["text"])  # type: ignore[index]

    # ---- the Web API ----

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            args.update(await request.json())
        elif request.can_read_body:
            args.update(await request.post())
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else args.pop("token", None)
        call = Call(method, args, token)
        self.calls.append(call)
        self._changed.set()
        if method in self.rate_limits:
            limit, window = self.rate_limits[method]
            recent, now = self._recent_calls[method], time.monotonic()
            while recent and now - recent[0] >= window:
                recent.popleft()
            if len(recent) >= limit:
                self.limited.append(call)
                retry_after = max(1, math.ceil(window - (now - recent[0])))
                return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                         headers={"Retry-After": str(retry_after)})
            recent.append(now)
        failures = self._failures.get(method)
        failure = failures.popleft() if failures else None
        if failure is not None and not failure.acted:
            return self._failure(request, failure)
        name = "_" + method.replace(".", "_")
        handler = getattr(self, name, None) or getattr(self.ai, name, None) or getattr(self.more, name, None)
        expected = self.app_token if method == "apps.connections.open" else self.bot_token
        if token != expected:
            return web.json_response({"ok": False, "error": "invalid_auth" if token else "not_authed"})
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        result: dict[str, Any] = await handler(args)
        if failure is not None:
            return self._failure(request, failure)
        return web.json_response(result)

    @staticmethod
    def _failure(request: web.Request, failure: Failure) -> web.Response:
        if failure.disconnect:
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError  # what aiohttp does to a handler whose client went away
        headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
        return web.json_response({"ok": False, "error": failure.error}, status=failure.status, headers=headers)

    async def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "https://fake.slack.com/", "team": "Fake", "user": "engbot",
                "team_id": self.team_id, "user_id": self.bot_user_id, "bot_id": self.bot_id, "is_enterprise_install":
                False}

    async def _apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/link/?ticket={uuid.uuid4()}"}

    async def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, text = str(args.get("channel", "")), str(args.get("text", ""))
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if len(text) > self.max_text:
            return {"ok": False, "error": "msg_too_long"}
        if (invalid := _invalid_blocks(_blocks(args))) is not None:
            return {"ok": False, "error": "invalid_blocks", "errors": [invalid]}
        message: dict[str, Any] = {"type": "message", "user": self.bot_user_id, "bot_id": self.bot_id,
                                   "text": text, "ts": self.next_ts(), "team": self.team_id}
        if blocks := _blocks(args):
            message["blocks"] = blocks
        if args.get("thread_ts"):
            message["thread_ts"] = str(args["thread_ts"])
        metadata = args.get("metadata")
        if isinstance(metadata, str):  # a form-encoded call sends it as JSON text
            metadata = json.loads(metadata)
        if isinstance(metadata, dict):
            message["metadata"] = metadata
        self.messages[channel].append(message)
        self.ai.replied(channel, message.get("thread_ts"))
        self.echo_message(message, channel)
        return {"ok": True, "channel": channel, "ts": message["ts"], "message": message}

    def echo_message(self, message: dict[str, Any], channel: str) -> None:
        """Send the bot's new message back as an event, as Slack does."""
        if self.echo_bot_messages and self._socket_ready.is_set():
            self._echo(self.event_for(message, channel))

    def echo_change(self, message: dict[str, Any], previous: dict[str, Any], channel: str) -> None:
        """Send a change of the bot's message back as a ``message_changed`` event, as Slack does."""
        self.changed()
        if self.echo_bot_messages and self._socket_ready.is_set():
            self._echo({"type": "message", "subtype": "message_changed", "hidden": True, "channel": channel,
                        "ts": self.next_ts(), "message": dict(message), "previous_message": previous})

    def changed(self) -> None:
        """Wake ``wait_for``: something a test may wait for happened."""
        self._changed.set()

    @staticmethod
    def blocks_of(args: dict[str, Any]) -> list[dict[str, Any]]:
        return _blocks(args)

    @staticmethod
    def invalid_blocks(blocks: list[dict[str, Any]]) -> str | None:
        return _invalid_blocks(blocks)

    async def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts, text = str(args.get("channel")), str(args.get("ts")), str(args.get("text", ""))
        if len(text) > self.max_text:
            return {"ok": False, "error": "msg_too_long"}
        if (invalid := _invalid_blocks(_blocks(args))) is not None:
            return {"ok": False, "error": "invalid_blocks", "errors": [invalid]}
        if (refused := self.ai.refuses_update(ts)) is not None:
            return {"ok": False, "error": refused}
        for message in self.messages[channel]:
            if message["ts"] == ts:
                previous = dict(message)
                message["text"] = text
                if "blocks" in args:  # an empty list takes the blocks away; no "blocks" keeps them
                    message["blocks"] = _blocks(args)
                    if not message["blocks"]:
                        del message["blocks"]
                self.ai.updated(ts)
                self.echo_change(message, previous, channel)
                return {"ok": True, "channel": channel, "ts": ts, "text": text}
        return {"ok": False, "error": "message_not_found"}

    async def _chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, user, text = str(args.get("channel", "")), str(args.get("user", "")), str(args.get("text", ""))
        if not channel or not user:
            return {"ok": False, "error": "channel_not_found" if not channel else "user_not_in_channel"}
        self.ephemeral.append({"channel": channel, "user": user, "text": text, "thread_ts": args.get("thread_ts")})
        return {"ok": True, "message_ts": self.next_ts()}

    async def _chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(args.get("channel")), str(args.get("ts"))
        for message in self.messages[channel]:
            if message["ts"] == ts:
                self.messages[channel].remove(message)
                if self.echo_bot_messages and self._socket_ready.is_set():
                    self._echo({"type": "message", "subtype": "message_deleted", "hidden": True, "channel": channel,
                                "ts": self.next_ts(), "deleted_ts": ts, "previous_message": message})
                return {"ok": True, "channel": channel, "ts": ts}
        return {"ok": False, "error": "message_not_found"}

    async def _conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        thread = self.thread(str(args.get("ts")), str(args.get("channel")))
        if not thread:
            return {"ok": False, "error": "thread_not_found"}
        if str(args.get("include_all_metadata")).lower() not in ("1", "true"):
            thread = [{k: v for k, v in m.items() if k != "metadata"} for m in thread]
        limit = int(args.get("limit") or 1000)
        start = int(args.get("cursor") or 0)
        page = thread[start:start + limit]
        more = start + limit < len(thread)
        return {"ok": True, "messages": page, "has_more": more,
                "response_metadata": {"next_cursor": str(start + limit) if more else ""}}

    def _echo(self, event: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._push_echo(event))
        self._echoes.add(task)
        task.add_done_callback(self._echoes.discard)

    async def _push_echo(self, event: dict[str, Any]) -> str:
        try:
            return await self.push(event)
        except (ConnectionError, TimeoutError):  # the socket closed (the test is ending): Slack would drop it too
            return ""

    # ---- Socket Mode ----

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.append(ws)
        self.connections += 1
        await ws.send_str(json.dumps({"type": "hello", "num_connections": 1,
                                      "debug_info": {"host": "fake", "approximate_connection_time": 3600},
                                      "connection_info": {"app_id": "A0001"}}))
        self._socket_ready.set()
        self._changed.set()
        async for frame in ws:
            if frame.type == WSMsgType.TEXT:
                with contextlib.suppress(ValueError):
                    data = json.loads(frame.data)
                    if isinstance(data, dict) and "envelope_id" in data:
                        self.acks[str(data["envelope_id"])] = time.monotonic()
                        self._changed.set()
        if self._sockets and self._sockets[-1] is ws:
            self._socket_ready.clear()
        return ws


def _is_interim(text: str) -> bool:
    """A placeholder, a streaming message, or a summary's progress."""
    return text.endswith(Messages.CURSOR) or text.startswith(tuple(
        t.split("{")[0] for t in (Messages.QUEUED, Messages.THINKING, Messages.SUMMARY_READING,
                                  Messages.SUMMARY_PARTS, Messages.SUMMARY_COMBINING)))


def _blocks(args: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``blocks`` argument (a form-encoded call sends it as JSON text)."""
    blocks = args.get("blocks")
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    return list(blocks) if isinstance(blocks, list) else []


def _element(blocks: list[dict[str, Any]], action_id: str) -> dict[str, Any] | None:
    for block in blocks:
        for element in block.get("elements", []):
            if element.get("action_id") == action_id:
                return dict(element)
    return None


def _invalid_blocks(blocks: list[dict[str, Any]]) -> str | None:
    """What Slack would refuse in ``blocks`` (the limits the bot's messages can run into), or None."""
    if len(blocks) > 50:
        return "no more than 50 items allowed [json-pointer:/blocks]"
    for i, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "section" and not 1 <= len(block.get("text", {}).get("text", "")) <= 3000:
            return f"must be between 1 and 3000 characters [json-pointer:/blocks/{i}/text/text]"
        if kind == "actions" and not 1 <= len(block.get("elements", [])) <= 25:
            return f"must have between 1 and 25 elements [json-pointer:/blocks/{i}/elements]"
        if kind == "context_actions" and not 1 <= len(block.get("elements", [])) <= 5:
            return f"must have between 1 and 5 elements [json-pointer:/blocks/{i}/elements]"
        for j, element in enumerate(block.get("elements", [])):
            where = f"/blocks/{i}/elements/{j}"
            if len(element.get("action_id", "")) > 255:
                return f"must be less than 256 characters [json-pointer:{where}/action_id]"
            if element.get("type") == "button" and (len(element.get("text", {}).get("text", "")) > 75
                                                    or len(element.get("value", "")) > 2000):
                return f"must be less than 76 characters [json-pointer:{where}/text/text]"
    return None
