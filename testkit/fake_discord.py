"""A fake Discord on 127.0.0.1: the REST routes discord.py calls and the gateway WebSocket, in one aiohttp app.

It keeps channels' messages (so history, edits and threads behave), records every REST request, and lets a test
push gateway dispatches (messages, slash commands, button presses) as Discord would. It holds the bot to Discord's
rules where they bite: an interaction answered after 3 s is unknown (10062), a second answer is refused (40060),
message content over 2,000 characters and components past their limits are an invalid form body (50035), and the
first follow-up of a deferred "thinking…" response replaces it, keeping its visibility. Payload builders are module
functions, so ``test_discord_events.py`` builds real discord.py objects from the same dicts.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import discord
from aiohttp import WSMsgType, web

Payload = dict[str, Any]

TOKEN = "MTAx.fake.bot-token-for-tests"
_ids = itertools.count(discord.utils.time_snowflake(datetime(2025, 1, 1, tzinfo=UTC)))


def snowflake() -> int:
    return next(_ids)


BOT_ID, APP_ID, GUILD_ID, CHANNEL_ID, DM_ID, COMMAND_ID = (snowflake() for _ in range(6))
ALICE_ID, BOB_ID, ROLE_ID, OTHER_CHANNEL_ID = (snowflake() for _ in range(4))
MESSAGE_CONTENT_INTENT = 1 << 15
CONTENT_MAX = 2000
INTERACTION_WINDOW_S = 3.0  # the first response to an interaction must come within this
EPHEMERAL, LOADING = 64, 128  # message flags


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def user(user_id: int, name: str, *, bot: bool = False) -> Payload:
    return {"id": str(user_id), "username": name, "global_name": name.title(), "discriminator": "0",
            "avatar": None, "bot": bot}


BOT = user(BOT_ID, "engbot", bot=True)
ALICE = user(ALICE_ID, "alice")
BOB = user(BOB_ID, "bob")


def member(user_payload: Payload, roles: tuple[int, ...] = ()) -> Payload:
    return {"user": user_payload, "roles": [str(r) for r in roles], "joined_at": now_iso(), "deaf": False,
            "mute": False, "flags": 0, "nick": None, "avatar": None, "premium_since": None, "pending": False,
            "communication_disabled_until": None, "permissions": "2248473465835073"}


def role(role_id: int, name: str, position: int) -> Payload:
    return {"id": str(role_id), "name": name, "permissions": "2248473465835073", "position": position, "color": 0,
            "hoist": False, "managed": False, "mentionable": True, "flags": 0}


def text_channel(channel_id: int = CHANNEL_ID, name: str = "general") -> Payload:
    return {"id": str(channel_id), "type": 0, "guild_id": str(GUILD_ID), "name": name, "position": 0,
            "permission_overwrites": [], "nsfw": False, "parent_id": None, "rate_limit_per_user": 0, "topic": None,
            "last_message_id": None, "flags": 0}


def thread_channel(thread_id: int, parent_id: int, owner_id: int, name: str) -> Payload:
    return {"id": str(thread_id), "type": 11, "guild_id": str(GUILD_ID), "parent_id": str(parent_id),
            "owner_id": str(owner_id), "name": name, "last_message_id": None, "message_count": 0,
            "member_count": 1, "rate_limit_per_user": 0, "flags": 0, "total_message_sent": 0,
            "thread_metadata": {"archived": False, "auto_archive_duration": 1440, "archive_timestamp": now_iso(),
                                "locked": False}}


def guild(channels: list[Payload] | None = None) -> Payload:
    return {
        "id": str(GUILD_ID), "name": "Test server", "icon": None, "owner_id": str(ALICE_ID), "unavailable": False,
        "roles": [role(GUILD_ID, "@everyone", 0), role(ROLE_ID, "engineers", 1)],
        "channels": channels or [text_channel(), text_channel(OTHER_CHANNEL_ID, "random")],
        "threads": [], "members": [member(BOT)], "member_count": 3, "emojis": [], "stickers": [], "features": [],
        "large": False, "joined_at": now_iso(), "voice_states": [], "presences": [], "stage_instances": [],
        "guild_scheduled_events": [], "afk_channel_id": None, "afk_timeout": 300, "verification_level": 0,
        "default_message_notifications": 0, "explicit_content_filter": 0, "mfa_level": 0, "system_channel_id": None,
        "system_channel_flags": 0, "premium_tier": 0, "preferred_locale": "en-US", "nsfw_level": 0,
        "premium_progress_bar_enabled": False,
    }


def message(channel_id: int, content: str, author: Payload = ALICE, *, in_guild: bool = True,
            mentions: tuple[Payload, ...] = (), roles: tuple[int, ...] = (), mention_roles: tuple[int, ...] = (),
            reference: Payload | None = None, files: Sequence[Payload] = (), type_: int = 0) -> Payload:
    """A MESSAGE_CREATE payload; ``mentions`` are the users ``content`` mentions (Discord resolves them);
    ``files`` are attachments (``FakeDiscord.attach``)."""
    data: Payload = {
        "id": str(snowflake()), "channel_id": str(channel_id), "author": author, "content": content,
        "timestamp": now_iso(), "edited_timestamp": None, "tts": False, "mention_everyone": False,
        "mentions": list(mentions), "mention_roles": [str(r) for r in mention_roles],
        "attachments": [dict(f) for f in files],
        "embeds": [], "pinned": False, "type": type_, "flags": 0,
    }
    if in_guild:
        data["guild_id"] = str(GUILD_ID)
        if not author.get("bot"):
            data["member"] = {k: v for k, v in member(author, roles).items() if k != "user"}
    if reference is not None:
        data["type"] = type_ or 19
        data["message_reference"] = {"message_id": reference["id"], "channel_id": reference["channel_id"],
                                     "guild_id": reference.get("guild_id")}
        # Discord resolves one level: the referenced message comes without its own referenced message
        data["referenced_message"] = {k: v for k, v in reference.items() if k != "referenced_message"}
    return data


def attachment(filename: str, size: int = 10, url: str = "https://cdn.invalid/f", content_type: str | None = None
               ) -> Payload:
    """An attachment as a message or an interaction carries it (``FakeDiscord.attach`` serves its bytes)."""
    data: Payload = {"id": str(snowflake()), "filename": filename, "size": size, "url": url, "proxy_url": url}
    if content_type:
        data["content_type"] = content_type
    return data


def mention(user_payload: Payload = BOT) -> str:
    return f"<@{user_payload['id']}>"


def interaction(prompt: str, *, channel: Payload | None = None, roles: tuple[int, ...] = (),
                in_guild: bool = True, file: Payload | None = None, user_payload: Payload = ALICE) -> Payload:
    """An INTERACTION_CREATE payload for ``/ask prompt:...`` (``file``: an attachment for its ``file`` option)."""
    options: list[Payload] = [{"name": "prompt", "type": 3, "value": prompt}]
    resolved: Payload = {}
    if file is not None:
        options.append({"name": "file", "type": 11, "value": file["id"]})
        resolved["attachments"] = {file["id"]: dict(file)}
    return command_interaction({"name": "ask", "type": 1, "options": options, "resolved": resolved},
                               channel=channel, roles=roles, in_guild=in_guild, user_payload=user_payload)


def subcommand(name: str, path: Sequence[str], options: dict[str, str] | None = None) -> Payload:
    """The data of a slash command run as ``/name path... option:value``, e.g. ``/engbot persona set text:...``:
    subcommand groups (type 2) and the subcommand (type 1) nest as options."""
    inner: list[Payload] = [{"name": k, "type": 3, "value": v} for k, v in (options or {}).items()]
    for i, part in enumerate(reversed(path)):
        inner = [{"name": part, "type": 1 if i == 0 else 2, "options": inner}]
    return {"name": name, "type": 1, "options": inner}


def message_command(name: str, target: Payload) -> Payload:
    """The data of a message's menu command (type 3) run on ``target``, which Discord sends resolved."""
    return {"name": name, "type": 3, "target_id": target["id"],
            "resolved": {"messages": {target["id"]: _rest_message(target)}}}


def command_interaction(command: Payload, *, channel: Payload | None = None, roles: tuple[int, ...] = (),
                        in_guild: bool = True, user_payload: Payload = ALICE) -> Payload:
    """An INTERACTION_CREATE payload (type 2) for an application command whose data is ``command``."""
    interaction_id = snowflake()
    data: Payload = {
        "id": str(interaction_id), "application_id": str(APP_ID), "type": 2, "token": f"itoken-{interaction_id}",
        "version": 1, "app_permissions": "2248473465835073", "locale": "en-US", "entitlements": [],
        "attachment_size_limit": 8 * 1024 * 1024, "context": 0 if in_guild else 1,
        "data": {"id": str(COMMAND_ID), **command},
    }
    if in_guild:
        channel = channel or text_channel()
        data.update(guild_id=str(GUILD_ID), guild_locale="en-US", member=member(user_payload, roles),
                    authorizing_integration_owners={"0": str(GUILD_ID)})
    else:
        channel = channel or {"id": str(DM_ID), "type": 1, "recipients": [user_payload], "last_message_id": None}
        data.update(user=user_payload, authorizing_integration_owners={"0": str(user_payload["id"])})
    data["channel"], data["channel_id"] = channel, channel["id"]
    return data


def component_interaction(message_payload: Payload, custom_id: str, channel: Payload, *,
                          user_payload: Payload = ALICE, roles: tuple[int, ...] = ()) -> Payload:
    """An INTERACTION_CREATE payload for a press on a button of ``message_payload`` (type 3, component type 2): in
    a server the presser comes as ``member`` with their roles, in a DM as ``user``."""
    interaction_id = snowflake()
    in_guild = "guild_id" in channel
    data: Payload = {
        "id": str(interaction_id), "application_id": str(APP_ID), "type": 3, "token": f"itoken-{interaction_id}",
        "version": 1, "app_permissions": "2248473465835073", "locale": "en-US", "entitlements": [],
        "attachment_size_limit": 8 * 1024 * 1024, "context": 0 if in_guild else 1,
        "data": {"custom_id": custom_id, "component_type": 2},
        "message": _rest_message(message_payload), "channel": channel, "channel_id": channel["id"],
    }
    if in_guild:
        data.update(guild_id=str(GUILD_ID), guild_locale="en-US", member=member(user_payload, roles),
                    authorizing_integration_owners={"0": str(GUILD_ID)})
    else:
        data.update(user=user_payload, authorizing_integration_owners={"0": str(user_payload["id"])})
    return data


@dataclass
class Request:
    method: str
    path: str  # below the API root, e.g. /channels/1/messages
    query: dict[str, str]
    body: Any
    at: float = field(default_factory=time.monotonic)


Handler = Callable[[web.Request, "re.Match[str]", Any], Awaitable[web.StreamResponse]]


class FakeDiscord:
    """Start with ``await fake.start()``; point the adapter at ``api_url`` and ``gateway_url``."""

    def __init__(self, *, refuse_message_content: bool = False) -> None:
        self.refuse_message_content = refuse_message_content
        self.requests: list[Request] = []
        self.identifies: list[Payload] = []
        self.channels: dict[str, list[Payload]] = {}  # channel id -> messages, oldest first
        self.interactions: dict[str, Payload] = {}  # token -> interaction
        self.created: dict[str, float] = {}  # token -> when the interaction was sent (monotonic)
        self.callbacks: list[Payload] = []  # accepted interaction responses: {"type": 4|5|6|7, "data", "at"}
        self.refused: list[Payload] = []  # responses refused: {"interaction_id", "code", "at"}
        self.ephemeral: list[Payload] = []  # what only one user saw: {"interaction_id", "user_id", "content"}
        self.commands: list[Payload] = []
        self.threads: list[Payload] = []
        self.deleted: list[Payload] = []  # messages removed with DELETE
        self.members: dict[str, Payload] = {}  # user id -> guild member (GET /guilds/{id}/members/{user})
        self.files: dict[str, bytes] = {}  # attachment id -> its bytes, served at its (signed) URL
        self.downloads: list[tuple[str, bool]] = []  # (attachment id, served: the link had not expired)
        self.links = 1  # the signature of attachment links handed out now; older ones have expired
        self._faults: list[tuple[str, re.Pattern[str], int, float]] = []
        self._sockets: list[web.WebSocketResponse] = []
        self._seq = itertools.count(1)
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = [
            (method, re.compile(pattern + "$"), handler) for method, pattern, handler in (
                ("GET", r"/users/@me", self._me),
                ("GET", r"/oauth2/applications/@me", self._application),
                ("PUT", r"/applications/\d+(?:/guilds/\d+)?/commands", self._sync),
                ("POST", r"/interactions/(\d+)/([^/]+)/callback", self._callback),
                ("PATCH", r"/webhooks/\d+/([^/]+)/messages/(@original|\d+)", self._webhook_edit),
                ("DELETE", r"/webhooks/\d+/([^/]+)/messages/(@original|\d+)", self._webhook_delete),
                ("POST", r"/webhooks/\d+/([^/]+)", self._followup),
                ("POST", r"/channels/(\d+)/messages", self._post),
                ("PATCH", r"/channels/(\d+)/messages/(\d+)", self._edit),
                ("DELETE", r"/channels/(\d+)/messages/(\d+)", self._delete),
                ("GET", r"/channels/(\d+)/messages", self._history),
                ("GET", r"/channels/(\d+)/messages/(\d+)", self._get),
                ("POST", r"/channels/(\d+)/messages/(\d+)/threads", self._create_thread),
                ("GET", rf"/guilds/{GUILD_ID}/members/(\d+)", self._member),
            )
        ]
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        app.router.add_get("/attachments/{channel}/{file}/{name}", self._attachment)
        self._runner = web.AppRunner(app)
        self.port = 0

    # ---- lifecycle ----

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        for ws in self._sockets:
            await ws.close()
        await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # ---- what a test does ----

    def rate_limit_once(self, method: str, pattern: str, retry_after: float = 0.3) -> None:
        """Answer the next matching request with 429 and Retry-After, as Discord does."""
        self._faults.append((method, re.compile(pattern + "$"), 429, retry_after))

    def refuse_once(self, method: str, pattern: str, status: int = 403) -> None:
        """Answer the next matching request with an error, as when the bot lacks a permission."""
        self._faults.append((method, re.compile(pattern + "$"), status, 0.0))

    async def dispatch(self, event: str, data: Any) -> None:
        """Push a gateway dispatch to the connected client."""
        if event == "MESSAGE_CREATE" and isinstance(data, dict) and "id" in data:
            self._store(data)
        for ws in self._sockets:
            if not ws.closed:
                await ws.send_str(json.dumps({"op": 0, "t": event, "s": next(self._seq), "d": data}))

    def attach(self, filename: str, data: bytes, content_type: str | None = None) -> Payload:
        """An attachment whose bytes the fake's CDN serves, at a signed link that lasts until ``expire_links``."""
        file = attachment(filename, len(data), "", content_type)
        self.files[file["id"]] = data
        return self._signed(file, CHANNEL_ID)

    def expire_links(self) -> None:
        """Every attachment link handed out so far expires (Discord's links are signed for about a day): the CDN
        answers them 404; a message fetched again (REST) carries fresh ones."""
        self.links += 1

    def _signed(self, file: Payload, channel_id: int | str) -> Payload:
        url = (f"http://127.0.0.1:{self.port}/attachments/{channel_id}/{file['id']}/{file['filename']}"
               f"?ex={self.links:08x}&is=0&hm={'ab' * 16}")
        return {**file, "url": url, "proxy_url": url}

    async def _attachment(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["file"]
        fresh = request.query.get("ex") == f"{self.links:08x}" and file_id in self.files
        self.downloads.append((file_id, fresh))
        if not fresh:
            return web.Response(status=404, text="This content is no longer available.")
        return web.Response(body=self.files[file_id], content_type="application/octet-stream")

    async def say(self, channel_id: int, content: str, **kwargs: Any) -> Payload:
        """A user posts a message."""
        data = message(channel_id, content, **kwargs)
        await self.dispatch("MESSAGE_CREATE", data)
        return data

    async def ask(self, prompt: str, **kwargs: Any) -> Payload:
        """A user runs /ask."""
        data = interaction(prompt, **kwargs)
        await self._interact(data)
        return data

    async def press(self, message_payload: Payload, custom_id: str, *, user: Payload = ALICE,
                    roles: tuple[int, ...] = ()) -> Payload:
        """A user presses the button ``custom_id`` under a message the bot posted (as the message stands now)."""
        current = self._find(message_payload["id"]) or message_payload
        data = component_interaction(current, custom_id, self._channel(current["channel_id"]), user_payload=user,
                                     roles=roles)
        await self._interact(data)
        return data

    def told(self, user_id: int | str) -> list[str]:
        """What one user was told privately (ephemeral responses and follow-ups), oldest first."""
        by_user = {i["id"] for i in self.interactions.values() if _user_id(i) == str(user_id)}
        texts = [(c["at"], c["data"].get("content", "")) for c in self.callbacks
                 if c["interaction_id"] in by_user and c["data"].get("flags", 0) & EPHEMERAL]
        texts += [(e["at"], e["content"]) for e in self.ephemeral if e["user_id"] == str(user_id)]
        return [text for _, text in sorted(texts, key=lambda t: t[0])]

    async def _interact(self, data: Payload) -> None:
        self.interactions[data["token"]] = data
        self.created[data["token"]] = time.monotonic()
        await self.dispatch("INTERACTION_CREATE", data)

    def _channel(self, channel_id: str) -> Payload:
        """A channel's payload, as an interaction carries it."""
        thread = next((t for t in self.threads if t["id"] == channel_id), None)
        if thread is not None:
            return thread
        if channel_id == str(DM_ID):
            return {"id": channel_id, "type": 1, "recipients": [ALICE], "last_message_id": None}
        return text_channel(int(channel_id), "random" if channel_id == str(OTHER_CHANNEL_ID) else "general")

    def messages(self, channel_id: int | str) -> list[Payload]:
        return self.channels.get(str(channel_id), [])

    def bot_messages(self, channel_id: int | str) -> list[Payload]:
        return [m for m in self.messages(channel_id) if m["author"]["id"] == str(BOT_ID)]

    def calls(self, method: str, pattern: str) -> list[Request]:
        regex = re.compile(pattern + "$")
        return [r for r in self.requests if r.method == method and regex.match(r.path)]

    def callback_for(self, interaction_payload: Payload) -> Payload | None:
        return next((c for c in self.callbacks if c["interaction_id"] == interaction_payload["id"]), None)

    def original(self, interaction_payload: Payload) -> Payload | None:
        """The interaction's response message as it stands."""
        callback = self.callback_for(interaction_payload)
        return None if callback is None else self._find(callback["message_id"])

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while not (result := predicate()):
            if time.monotonic() > deadline:
                raise TimeoutError("the fake Discord did not see what the test waited for")
            await asyncio.sleep(0.02)
        return result

    # ---- REST ----

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        raw = await request.read()
        body = json.loads(raw) if raw and request.content_type == "application/json" else None
        self.requests.append(Request(request.method, path, dict(request.query), body))
        for i, (method, pattern, status, retry_after) in enumerate(self._faults):
            if method == request.method and pattern.match(path):
                del self._faults[i]
                if status != 429:
                    return _json({"message": "Missing Access", "code": 50001}, status=status)
                return _json({"message": "You are being rate limited.", "retry_after": retry_after,
                              "global": False}, status=429,
                             headers={"Retry-After": str(retry_after), "Via": "1.1 google",
                                      "X-RateLimit-Scope": "user"})
        if not path.startswith(("/webhooks/", "/interactions/")) and \
                request.headers.get("Authorization") != f"Bot {TOKEN}":
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        for method, pattern, handler in self._routes:
            match = pattern.match(path)
            if match and method == request.method:
                return await handler(request, match, body)
        return _json({"message": "404: Not Found", "code": 0}, status=404)

    async def _me(self, request: web.Request, match: re.Match[str], body: Any) -> web.StreamResponse:
        return _json(BOT)

    async def _application(self, request: web.Request, match: re.Match[str], body: Any) -> web.StreamResponse:
        return _json({"id": str(APP_ID), "name": "engbot", "description": "", "icon": None, "bot_public": True,
                      "bot_require_code_grant": False, "owner": ALICE, "verify_key": "0" * 64, "flags": 0,
                      "team": None, "bot": BOT})

    async def _sync(self, request: web.Request, match: re.Match[str], body: Any) -> web.StreamResponse:
        # Discord answers with every command and its description ("" for the commands of
        # a message's or a user's menu, which are sent without one)
        self.commands = [{"description": "", **c, "id": str(COMMAND_ID), "application_id": str(APP_ID),
                          "version": "1", "default_member_permissions": None, "type": c.get("type", 1)}
                         for c in body]
        return _json(self.commands)

    async def _callback(self, request: web.Request, match: re.Match[str], body: Any) -> web.StreamResponse:
        token, now = match.group(2), time.monotonic()
        source = self.interactions.get(token)
        refusal: tuple[int, str, int] | None = None
        if source is None or now - self.created[token] > INTERACTION_WINDOW_S:
            refusal = (10062, "Unknown interaction", 404)
        elif self.callback_for(source) is not None:
            refusal = (40060, "Interaction has already been acknowledged.", 400)
        if refusal is not None:
            code, text, status = refusal
            self.refused.append({"interaction_id": source["id"] if source else None, "type": body.get("type"),
                                 "code": code, "at": now})
            return _json({"message": text, "code": code}, status=status)
        assert source is not None
        data = body.get("data") or {}
        if (invalid := _invalid_form(data)) is not None:
            return invalid
        kind = body["type"]
        if kind in (6, 7):  # (deferred) update of the message the pressed button is on
            msg = self._find(source["message"]["id"]) if "message" in source else None
            if msg is None:
                return _json({"message": "Unknown Message", "code": 10008}, status=404)
            if kind == 7:
                self._update(msg["id"], data)
        else:
            msg = self._store(message(int(source["channel_id"]), data.get("content", ""), BOT,
                                      in_guild="guild_id" in source))
            msg.update(webhook_id=str(APP_ID), flags=data.get("flags", 0) | (LOADING if kind == 5 else 0))
            if data.get("components"):
                msg["components"] = data["components"]
        self.callbacks.append({"interaction_id": source["id"], "type": kind, "data": data,
                               "message_id": msg["id"], "at": now})
        resource: Payload = {"type": kind} if kind == 6 else {"type": kind, "message": _rest_message(msg)}
        return _json({"interaction": {"id": source["id"], "type": source["type"], "response_message_id": msg["id"],
                                      "response_message_loading": kind == 5,
                                      "response_message_ephemeral": bool(msg.get("flags", 0) & EPHEMERAL)},
                      "resource": resource})

    def _webhook_message(self, match: re.Match[str]) -> str | None:
        """The message a webhook route names (``@original``: the interaction's response), None if there is none."""
        token, message_id = match.groups()
        if message_id != "@original":
            return str(message_id)
        callback = self.callback_for(self.interactions[token])
        return None if callback is None else str(callback["message_id"])

    async def _webhook_edit(self, request: web.Request, match: re.Match[str], body: Any) -> web.StreamResponse:
        message_id = self._webhook_message(match)
        if message_id is None:
            return _json({"message": "Unknown Webhook", "code": 10015}, status=404)
        return self._update(message_id, body)

    async def _webhook_delete(self, request: web.Request, match: re.Match[str], body: Any) -> web.StreamResponse:
        message_id = self._webhook_message(match)
        if message_id is None:
            return _json({"message": "Unknown Webhook", "code": 10015}, status=404)
        return self._remove(message_id)

    async def _followup(self, request: web.Request, match: re.Match[str], body: Any) -> web.StreamResponse:
        source = self.interactions[match.group(1)]
        if (invalid := _invalid_form(body)) is not None:
            return invalid
        callback = self.callback_for(source)
        loading = self._find(callback["message_id"]) if callback is not None else None
        if loading is not None and loading.get("flags", 0) & LOADING:
            # the first follow-up of a deferred response resolves it: it replaces "thinking…", with its visibility
            return self._update(loading["id"], body)
        msg = message(int(source["channel_id"]), body.get("content", ""), BOT, in_guild="guild_id" in source)
        msg.update(webhook_id=str(APP_ID), flags=body.get("flags", 0) & EPHEMERAL)
        if body.get("components"):
            msg["components"] = body["components"]
        if msg["flags"] & EPHEMERAL:  # seen by the user alone: not in the channel
            self.ephemeral.append({"interaction_id": source["id"], "user_id": _user_id(source),
                                   "content": msg["content"], "message_id": msg["id"], "at": time.monotonic()})
        else:
            self._store(msg)
        return _json(_rest_message(msg))

    async def _post(self, request: web.Request, match: re.Match[str], body: Any) -> web.StreamResponse:
        channel_id = match.group(1)
        if (invalid := _invalid_form(body)) is not None:
            return invalid
        ref = body.get("message_reference")
        reference = self._find(ref["message_id"]) if ref else None
        msg = message(int(channel_id), body.get("content", ""), BOT, in_guild=channel_id != str(DM_ID),
                      reference=reference)
        if body.get("components"):
            msg["components"] = body["components"]
        await self.dispatch("MESSAGE_CREATE", msg)  # Discord echoes the bot's own messages on the gateway
        return _json(msg)

    async def _edit(self, request: web.Request, match: re.Match[str], body: Any) -> web.StreamResponse:
        return self._update(match.group(2), body)

    async def _delete(self, request: web.Request, match: re.Match[str], body: Any) -> web.StreamResponse:
        return self._remove(match.group(2))

    async def _history(self, request: web.Request, match: re.Match[str], body: Any) -> web.StreamResponse:
        limit = min(100, int(request.query.get("limit", 50)))  # Discord's most a page
        if "after" in request.query:  # the first ``limit`` after it, sent newest first all the same
            after = int(request.query["after"])
            later = [m for m in self.messages(match.group(1)) if int(m["id"]) > after][:limit]
            return _json([_rest_message(m) for m in reversed(later)])
        before = int(request.query.get("before", 1 << 63))
        older = [m for m in self.messages(match.group(1)) if int(m["id"]) < before]
        return _json([_rest_message(m) for m in reversed(older)][:limit])  # newest first, as Discord sends them

    async def _get(self, request: web.Request, match: re.Match[str], body: Any) -> web.StreamResponse:
        found = self._find(match.group(2))
        if found is None:
            return _json({"message": "Unknown Message", "code": 10008}, status=404)
        fresh = [self._signed(a, found["channel_id"]) if a["id"] in self.files else a for a in found["attachments"]]
        return _json({**_rest_message(found), "attachments": fresh})  # with links signed now

    async def _member(self, request: web.Request, match: re.Match[str], body: Any) -> web.StreamResponse:
        found = self.members.get(match.group(1))
        return _json(found) if found else _json({"message": "Unknown Member", "code": 10007}, status=404)

    async def _create_thread(self, request: web.Request, match: re.Match[str], body: Any) -> web.StreamResponse:
        channel_id, message_id = match.groups()
        starter = self._find(message_id)
        if starter is None:
            return _json({"message": "Unknown Message", "code": 10008}, status=404)
        thread = thread_channel(int(message_id), int(channel_id), BOT_ID, body["name"])
        self.threads.append(thread)
        starter_notice = message(int(message_id), "", starter["author"], type_=21, reference=starter)
        self._store(starter_notice)
        await self.dispatch("THREAD_CREATE", {**thread, "newly_created": True})
        return _json(thread)

    def _store(self, msg: Payload) -> Payload:
        if self._find(msg["id"]) is None:  # a dispatch sent twice is still one message
            self.channels.setdefault(msg["channel_id"], []).append(msg)
        if "member" in msg:  # the server's members, as far as the test has shown them
            self.members[msg["author"]["id"]] = {**msg["member"], "user": msg["author"]}
        return msg

    def _find(self, message_id: str) -> Payload | None:
        return next((m for msgs in self.channels.values() for m in msgs if m["id"] == message_id), None)

    def _remove(self, message_id: str) -> web.StreamResponse:
        found = self._find(message_id)
        if found is None:
            return _json({"message": "Unknown Message", "code": 10008}, status=404)
        self.channels[found["channel_id"]].remove(found)
        self.deleted.append(found)
        return web.Response(status=204)

    def _update(self, message_id: str, body: Any) -> web.StreamResponse:
        found = self._find(message_id)
        if found is None:
            return _json({"message": "Unknown Message", "code": 10008}, status=404)
        if (invalid := _invalid_form(body)) is not None:
            return invalid
        if "content" in body:
            found["content"] = body["content"]
        if "components" in body:  # an empty list takes them away; no key keeps them
            found["components"] = body["components"]
        found["flags"] = found.get("flags", 0) & ~LOADING
        found["edited_timestamp"] = now_iso()
        found.setdefault("edits", []).append((time.monotonic(), body.get("content")))
        return _json({k: v for k, v in found.items() if k != "edits"})

    # ---- gateway ----

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None}))
        async for frame in ws:
            if frame.type is not WSMsgType.TEXT:
                break
            payload = json.loads(frame.data)
            if payload["op"] == 1:
                await ws.send_str(json.dumps({"op": 11, "d": None, "s": None, "t": None}))
            elif payload["op"] == 2:
                self.identifies.append(payload["d"])
                if payload["d"]["token"] != TOKEN:
                    await ws.close(code=4004, message=b"Authentication failed.")
                elif self.refuse_message_content and payload["d"]["intents"] & MESSAGE_CONTENT_INTENT:
                    await ws.close(code=4014, message=b"Disallowed intent(s).")
                else:
                    await self.dispatch("READY", {
                        "v": 10, "user": BOT, "guilds": [{"id": str(GUILD_ID), "unavailable": True}],
                        "session_id": "fake-session", "resume_gateway_url": self.gateway_url,
                        "application": {"id": str(APP_ID), "flags": 0}, "shard": [0, 1],
                    })
                    await self.dispatch("GUILD_CREATE", guild())
        return ws


def _rest_message(msg: Payload) -> Payload:
    """A message as REST returns it: the author's ``member`` (and with it their roles) is sent on the gateway
    only."""
    return {k: v for k, v in msg.items() if k not in ("member", "edits")}


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py parses a body as JSON only when the content type is exactly application/json (no charset)
    return web.Response(body=json.dumps(data).encode(), status=status,
                        headers={"Content-Type": "application/json", **(headers or {})})


def _user_id(interaction_payload: Payload) -> str:
    """Who sent an interaction: the member's user in a server, the user in a DM."""
    presser: Payload = (interaction_payload.get("member") or {}).get("user") or interaction_payload["user"]
    return str(presser["id"])


def _invalid_form(body: Any) -> web.Response | None:
    """Discord's 50035 for content over 2,000 characters and components past their limits: 5 action rows of 5
    buttons, ``custom_id`` 1-100 characters, labels up to 80."""
    content = body.get("content") if isinstance(body, dict) else None
    if isinstance(content, str) and len(content) > CONTENT_MAX:
        return _json({"message": "Invalid Form Body", "code": 50035,
                      "errors": {"content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH",
                                                          "message": "Must be 2000 or fewer in length."}]}}},
                     status=400)
    rows = body.get("components") if isinstance(body, dict) else None
    if not rows:
        return None
    buttons = [b for row in rows for b in row.get("components", [])]
    if len(rows) > 5 or any(len(row.get("components", [])) > 5 for row in rows) or any(
            not 1 <= len(b.get("custom_id", "")) <= 100 or len(b.get("label", "")) > 80 for b in buttons):
        return _json({"message": "Invalid Form Body", "code": 50035}, status=400)
    return None
