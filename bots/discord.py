"""The Discord adapter: ``/ask``, mentions answered in a thread of their own, follow-ups in that thread, and DMs.

Network code only; every decision about an event is made in ``bots/discord_events.py``.

    adapter = DiscordAdapter(settings, engine)
    await adapter.start()            # returns once the gateway sent READY
    ...
    await adapter.stop_intake(); await engine.stop(); await adapter.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import discord
from discord import app_commands
from discord.gateway import DiscordWebSocket
from discord.http import HTTPClient, Route
from discord.webhook.async_ import AsyncWebhookAdapter, async_context

from bots import discord_events as ev
from bots.base import Messages, RateLimiter, Recent, StreamStyle, asubmit, rate_limit_from_environ, stream_reply
from engine.config import Env, mask
from engine.engine import JobHandle, JobSubmitter
from engine.errors import ConfigError
from engine.types import Job

log = logging.getLogger("engbot.discord")

# the bot has no voice: spare the log discord.py's warnings about missing voice libraries
discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False

DEFAULT_API_URL = Route.BASE
DEFAULT_GATEWAY_URL = str(DiscordWebSocket.DEFAULT_GATEWAY)
MESSAGE_LIMIT = 1900  # characters as sent (cursor and closing fence included), of Discord's 2,000
INTERACTION_TTL_S = 14 * 60.0  # an interaction token lasts 15 minutes: keep one for the last edits
HISTORY_LIMIT = 50
REPLY_CHAIN_LIMIT = 10
START_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 30.0
MEMBER_ROLES_TTL_S = 300.0  # how long a thread participant's roles are trusted (DISCORD_ALLOWED_ROLES)
ORIGINAL = "@original"  # the id stream_reply edits first for /ask: the deferred response


@dataclass(frozen=True, slots=True)
class DiscordSettings:
    """The Discord settings, validated. The token stays out of ``repr``."""

    bot_token: str = field(repr=False)
    api_url: str = DEFAULT_API_URL
    gateway_url: str = DEFAULT_GATEWAY_URL
    guild_id: int | None = None  # sync /ask to this server only (instant) instead of globally
    allowed_guilds: frozenset[str] = frozenset()
    allowed_channels: frozenset[str] = frozenset()
    allowed_roles: frozenset[str] = frozenset()
    rate_limit_per_user: int = 5
    rate_limit_period_s: float = 60.0
    guild_ready_timeout_s: float = 2.0  # how long READY waits for the servers' data; not a setting, tests shorten it

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> DiscordSettings | None:
        """None when DISCORD_BOT_TOKEN is unset or empty; ``ConfigError`` naming the variable for a bad value."""
        env = Env(environ)
        token = env.raw("DISCORD_BOT_TOKEN")
        if not token:
            return None
        if any(c.isspace() for c in token):
            raise ConfigError("DISCORD_BOT_TOKEN", mask("DISCORD_BOT_TOKEN", token),
                              "a bot token has no spaces: copy it alone from the Bot page of the Developer Portal")
        rate = rate_limit_from_environ(environ)
        guild = _ids(env, "DISCORD_GUILD_ID")
        if len(guild) > 1:
            raise ConfigError("DISCORD_GUILD_ID", env.raw("DISCORD_GUILD_ID"), "expected one server id")
        return cls(
            bot_token=token,
            api_url=_url(env, "DISCORD_API_URL", DEFAULT_API_URL, ("http://", "https://")),
            gateway_url=_url(env, "DISCORD_GATEWAY_URL", DEFAULT_GATEWAY_URL, ("ws://", "wss://")),
            guild_id=int(next(iter(guild))) if guild else None,
            allowed_guilds=_ids(env, "DISCORD_ALLOWED_GUILDS"),
            allowed_channels=_ids(env, "DISCORD_ALLOWED_CHANNELS"),
            allowed_roles=_ids(env, "DISCORD_ALLOWED_ROLES"),
            rate_limit_per_user=rate.limit,
            rate_limit_period_s=rate.period_s,
        )

    @property
    def access(self) -> ev.Access:
        return ev.Access(self.allowed_guilds, self.allowed_channels, self.allowed_roles)


def _ids(env: Env, name: str) -> frozenset[str]:
    ids = frozenset(part.strip() for part in (env.raw(name) or "").split(",") if part.strip())
    if not all(i.isdigit() for i in ids):
        raise ConfigError(name, env.raw(name), "expected Discord ids (numbers; in Discord turn on Developer Mode, "
                          "then right-click > Copy ID), separated by commas")
    return ids


def _url(env: Env, name: str, default: str, schemes: tuple[str, ...]) -> str:
    url = env.raw(name) or default
    if not url.startswith(schemes):
        raise ConfigError(name, url, "expected a URL starting with " + " or ".join(schemes))
    return url.rstrip("/") if name == "DISCORD_API_URL" else url


# ---- pointing one client at other servers ----
# Route.BASE and DiscordWebSocket.DEFAULT_GATEWAY are class attributes: setting them would move every client in
# the process. These two overrides move the REST calls, the gateway and the interaction webhooks of one client.


def _rebase(url: str, default: str, base: str) -> str:
    return base + url[len(default):] if base != default and url.startswith(default) else url


class _HTTPClient(HTTPClient):
    def __init__(self, loop: asyncio.AbstractEventLoop, *, api_url: str, gateway_url: str) -> None:
        super().__init__(loop)
        self.api_url, self.gateway_url = api_url, gateway_url

    async def request(self, route: Route, **kwargs: Any) -> Any:
        route.url = _rebase(route.url, DEFAULT_API_URL, self.api_url)
        return await super().request(route, **kwargs)

    async def ws_connect(self, url: str, *, compress: int = 0) -> aiohttp.ClientWebSocketResponse:
        return await super().ws_connect(_rebase(url, DEFAULT_GATEWAY_URL, self.gateway_url), compress=compress)


class _WebhookAdapter(AsyncWebhookAdapter):
    """Interaction responses and follow-ups go through this (a context variable), not through the HTTP client."""

    def __init__(self, api_url: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.api_url = api_url

    async def request(self, route: Route, session: aiohttp.ClientSession, **kwargs: Any) -> Any:
        route.url = _rebase(route.url, DEFAULT_API_URL, self.api_url)
        return await super().request(route, session, **kwargs)


def _guarded(event: str, parse: Callable[[Any], None]) -> Callable[[Any], None]:
    def guarded(data: Any) -> None:
        try:
            parse(data)
        except Exception:
            log.exception("ignored a malformed %s payload from the gateway", event)

    return guarded


class _Client(discord.Client):
    def __init__(self, adapter: DiscordAdapter, *, message_content: bool) -> None:
        intents = discord.Intents.default()
        intents.message_content = message_content
        settings = adapter.settings
        super().__init__(intents=intents, allowed_mentions=discord.AllowedMentions.none(),
                         guild_ready_timeout=settings.guild_ready_timeout_s)
        self.adapter = adapter
        # replaces the HTTP client discord.py just built, before anything has used it
        self.http = self._connection.http = _HTTPClient(self.loop, api_url=settings.api_url,
                                                        gateway_url=settings.gateway_url)
        # discord.py lets an exception in a payload parser end the connection: one bad payload would stop the bot
        parsers = self._connection.parsers
        for event, parse in parsers.items():
            parsers[event] = _guarded(event, parse)
        self.tree = app_commands.CommandTree(self)
        self.tree.add_command(app_commands.Command(name="ask", description="Ask the model a question",
                                                   callback=adapter.ask))

    async def setup_hook(self) -> None:
        guild = discord.Object(self.adapter.settings.guild_id) if self.adapter.settings.guild_id else None
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        try:
            commands = await self.tree.sync(guild=guild)
        except discord.HTTPException as exc:
            log.error("could not register the /ask command (%s): was the bot invited with the applications.commands "
                      "scope?", exc)
        else:
            log.info("registered %s in %s", ", ".join("/" + c.name for c in commands),
                     f"server {guild.id}" if guild else "every server (may take up to an hour to appear)")

    async def on_ready(self) -> None:
        self.adapter._ready.set()

    async def on_message(self, message: discord.Message) -> None:
        await self.adapter.on_message(message)


# ---- where a reply goes ----


class ChannelSink:
    """Posts in a channel, thread or DM, and edits what it posted. ``reference`` makes the first post a reply."""

    def __init__(self, channel: discord.abc.Messageable, reference: discord.Message | None = None) -> None:
        self.channel, self.reference = channel, reference
        self._posted: dict[str, discord.Message] = {}

    async def post(self, text: str) -> str:
        if self.reference is not None:
            message = await self.channel.send(text, reference=self.reference)
            self.reference = None
        else:
            message = await self.channel.send(text)
        self._posted[str(message.id)] = message
        return str(message.id)

    async def edit(self, message_id: str, text: str) -> None:
        await self._posted[message_id].edit(content=text)

    async def delete(self, message_id: str) -> None:
        await self._posted[message_id].delete()
        del self._posted[message_id]


class InteractionSink:
    """Edits the deferred response and posts follow-ups while the interaction token lives; after that, moves the
    answer to plain channel messages (edits of a message the token can no longer reach post a new one)."""

    def __init__(self, interaction: discord.Interaction, expires_at: float) -> None:
        self.interaction, self.expires_at = interaction, expires_at
        self._posted: dict[str, discord.Message] = {}
        self._in_channel: set[str] = set()
        self._moved: dict[str, str] = {}  # webhook message id -> channel message now showing its text

    def _expired(self) -> bool:
        return time.monotonic() >= self.expires_at

    async def post(self, text: str) -> str:
        if self._expired():
            channel = self.interaction.channel
            if not isinstance(channel, discord.abc.Messageable):
                raise RuntimeError("the interaction expired and its channel cannot be posted in")
            message: discord.Message = await channel.send(text)
            self._in_channel.add(str(message.id))
        else:
            message = await self.interaction.followup.send(text, wait=True)
        self._posted[str(message.id)] = message
        return str(message.id)

    async def edit(self, message_id: str, text: str) -> None:
        target = self._moved.get(message_id, message_id)
        if target in self._in_channel:
            await self._posted[target].edit(content=text)
        elif self._expired():
            # the token still has its last minute: point from the message it can no longer keep up to date
            with contextlib.suppress(discord.HTTPException):
                await self._edit_webhook(message_id, Messages.MOVED)
            self._moved[message_id] = await self.post(text)
        else:
            await self._edit_webhook(target, text)

    async def delete(self, message_id: str) -> None:
        if message_id == ORIGINAL:
            await self.interaction.delete_original_response()
            return
        target = self._moved.pop(message_id, message_id)
        await self._posted[target].delete()
        del self._posted[target]
        self._in_channel.discard(target)

    async def _edit_webhook(self, message_id: str, text: str) -> None:
        if message_id == ORIGINAL:
            await self.interaction.edit_original_response(content=text)
        else:
            await self._posted[message_id].edit(content=text)


# ---- the adapter ----


class DiscordAdapter:
    """One Discord bot connection answering with ``engine``."""

    name = "discord"

    def __init__(self, settings: DiscordSettings, engine: JobSubmitter) -> None:
        self.settings, self.engine = settings, engine
        self.access = settings.access
        self.rate_limiter = RateLimiter(settings.rate_limit_per_user, settings.rate_limit_period_s)
        self.style = StreamStyle(limit=MESSAGE_LIMIT)
        self.interaction_ttl_s = INTERACTION_TTL_S
        self.message_content = True  # False once the gateway refused the privileged intent
        self._client: _Client | None = None
        self._runner: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._intake = True
        self._closing = False
        self._replies: set[asyncio.Task[Any]] = set()
        self._member_roles: Recent[tuple[int, int], tuple[int, ...]] = Recent(MEMBER_ROLES_TTL_S, 10_000)

    def __repr__(self) -> str:
        return f"<DiscordAdapter connected={self.connected} in_flight={self.in_flight} intake={self._intake}>"

    # ---- lifecycle ----

    async def start(self) -> None:
        """Log in, register /ask, connect to the gateway; return once READY.

        Raises ``ConfigError`` naming DISCORD_BOT_TOKEN when Discord refuses the token, ``ConnectionError`` when
        Discord cannot be reached, ``TimeoutError`` when READY does not come.
        """
        try:
            await self._connect(message_content=True)
        except discord.PrivilegedIntentsRequired:
            log.warning(
                "Discord refused the privileged message-content intent: turn on 'Message Content Intent' on the Bot "
                "page of the Developer Portal. Until then /ask, mentions and DMs work, but follow-ups in a thread "
                "must mention the bot.")
            self.message_content = False
            await self._connect(message_content=False)
        client = self._client
        assert client is not None and client.user is not None and client.application_id is not None
        log.info("Discord: connected as %s (id %d). Invite URL: %s", client.user, client.user.id,
                 ev.invite_url(client.application_id))

    async def _connect(self, *, message_content: bool) -> None:
        self._ready.clear()
        client = self._client = _Client(self, message_content=message_content)
        context = contextvars.copy_context()
        context.run(async_context.set, _WebhookAdapter(self.settings.api_url))
        runner = asyncio.create_task(client.start(self.settings.bot_token), name="engbot-discord", context=context)
        ready = asyncio.create_task(self._ready.wait())
        try:
            await asyncio.wait({runner, ready}, timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if self._ready.is_set():
            self._runner = runner
            runner.add_done_callback(self._connection_ended)
            return
        await client.close()
        if not runner.done():
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            raise TimeoutError(f"Discord sent no READY within {START_TIMEOUT_S:.0f} s ({self.settings.gateway_url})")
        exc = runner.exception()
        if isinstance(exc, discord.LoginFailure):
            raise ConfigError("DISCORD_BOT_TOKEN", mask("DISCORD_BOT_TOKEN", self.settings.bot_token),
                              "Discord refused this token: copy it again from the Bot page of the Developer Portal")
        if isinstance(exc, OSError | aiohttp.ClientError):
            raise ConnectionError(f"could not reach Discord at {self.settings.api_url}: {exc}") from exc
        assert exc is not None
        raise exc

    def _connection_ended(self, task: asyncio.Task[None]) -> None:
        if not self._closing and not task.cancelled() and task.exception() is not None:
            log.error("the Discord connection ended", exc_info=task.exception())

    @property
    def in_flight(self) -> int:
        """Replies being streamed now."""
        return len(self._replies)

    @property
    def connected(self) -> bool:
        """Logged in, READY received, and the gateway connection open now."""
        client = self._client
        return (client is not None and client.is_ready() and not client.is_closed() and client.ws is not None
                and client.ws.open)

    async def stop_intake(self) -> None:
        """Take no new questions: /ask says the bot is unavailable, messages are ignored."""
        self._intake = False

    async def close(self) -> None:
        """Wait for the replies in flight (up to DRAIN_TIMEOUT_S), then disconnect.

        Call it once the engine has stopped: its shutdown ends every answer with a final edit. A reply still
        streaming after DRAIN_TIMEOUT_S is cancelled, with its job.
        """
        self._intake, self._closing = False, True
        if self._replies:
            _, late = await asyncio.wait(set(self._replies), timeout=DRAIN_TIMEOUT_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await asyncio.gather(self._runner, return_exceptions=True)

    @contextlib.contextmanager
    def _in_flight(self) -> Iterator[None]:
        task = asyncio.current_task()
        assert task is not None
        self._replies.add(task)
        try:
            yield
        finally:
            self._replies.discard(task)

    async def _stream(self, handle: JobHandle, sink: ChannelSink | InteractionSink, placeholder_id: str) -> None:
        try:
            await stream_reply(handle, sink, placeholder_id, self.style)
        finally:
            handle.cancel()  # no-op once answered; stops the generation when the reply could not be delivered

    def _rate_limited(self, user_id: int) -> str | None:
        wait = self.rate_limiter.check(str(user_id))
        return Messages.RATE_LIMITED.format(seconds=math.ceil(wait)) if wait else None

    # ---- /ask ----

    @app_commands.describe(prompt="Your question")
    async def ask(self, interaction: discord.Interaction, prompt: app_commands.Range[str, 1, 6000]) -> None:
        """``/ask prompt:<text>``: a thinking response at once, then the answer streamed into it."""
        async def say(text: str) -> None:
            await interaction.response.send_message(text, ephemeral=True)

        if not self._intake:
            await say(Messages.UNAVAILABLE)
            return
        channels = ev.channel_ids(interaction.channel) or [i for i in (interaction.channel_id,) if i]
        decision = ev.decide_command(prompt, self.access, guild_id=interaction.guild_id, channels=channels,
                                     roles=ev.role_ids(interaction.user))
        if isinstance(decision, ev.Notice):
            if decision.reason:
                log.info("refused /ask %s from user %s: %s", interaction.id, interaction.user.id, decision.reason)
            await say(decision.text)
            return
        notice = self._rate_limited(interaction.user.id)
        if notice:
            await say(notice)
            return
        assert self._client is not None and self._client.user is not None
        bot_id = self._client.user.id
        text = ev.readable(decision.prompt, bot_id, ev.Names.lookup(interaction.guild, ev.mentioned_ids(prompt)))
        job = ev.make_job(ev.turns_for([], text, bot_id, interaction.user), f"interaction:{interaction.id}")
        outcome = await asubmit(self.engine, job)
        if isinstance(outcome, str):
            if outcome:
                await say(outcome)
            return
        with self._in_flight():
            try:
                await interaction.response.defer(thinking=True)
                await self._stream(outcome, InteractionSink(interaction, time.monotonic() + self.interaction_ttl_s),
                                   ORIGINAL)
            except Exception:
                outcome.cancel()
                log.exception("answering /ask %s failed", interaction.id)

    # ---- mentions, threads, DMs ----

    async def on_message(self, message: discord.Message) -> None:
        """Answer a DM, a mention (in a new thread), or any message in a thread the bot created."""
        client = self._client
        if not self._intake or client is None or client.user is None:
            return
        bot_id = client.user.id
        channel = message.channel
        bot_thread = isinstance(channel, discord.Thread) and channel.owner_id == bot_id
        decision = ev.decide_message(message, bot_id, self.access, bot_thread=bot_thread)
        if isinstance(decision, ev.Ignore):
            if decision.log:
                log.info("ignored message %s from user %s in channel %s: %s", message.id, message.author.id,
                         channel.id, decision.reason)
            return
        with self._in_flight():
            try:
                await self._answer(message, decision, bot_id)
            except Exception:
                log.exception("answering message %s failed", message.id)

    async def _answer(self, message: discord.Message, decision: ev.Notice | ev.Ask, bot_id: int) -> None:
        reply: JobHandle | str
        if isinstance(decision, ev.Notice):
            reply = decision.text
        else:
            reply = self._rate_limited(message.author.id) or await asubmit(self.engine, await self._job(
                message, decision.prompt, bot_id))
            if reply == "":
                return  # a duplicate of a message being answered
        try:
            sink = await self._sink_for(message, decision.prompt if isinstance(decision, ev.Ask) else "")
            if isinstance(reply, str):
                await sink.post(reply)
                return
            placeholder = await sink.post(Messages.QUEUED.format(position=reply.position) if reply.position
                                          else Messages.THINKING)
        except BaseException:
            if isinstance(reply, JobHandle):
                reply.cancel()
            raise
        await self._stream(reply, sink, placeholder)

    async def _job(self, message: discord.Message, prompt: str, bot_id: int) -> Job:
        earlier = await self._earlier(message)
        authors = await self._allowed_authors(message.guild, earlier)
        turns = ev.turns_for(earlier, prompt, bot_id, message.author, authors=authors)
        return ev.make_job(turns, f"message:{message.id}")

    async def _allowed_authors(self, guild: discord.Guild | None,
                               earlier: list[discord.Message]) -> frozenset[int] | None:
        """With DISCORD_ALLOWED_ROLES, who of the people in ``earlier`` holds an allowed role (their messages may
        reach the model); None when everyone may."""
        if not self.access.roles:
            return None
        roles: dict[int, tuple[int, ...]] = {}
        for m in earlier:
            if not m.author.bot and m.author.id not in roles:
                roles[m.author.id] = await self._roles_of(guild, m.author)
        return ev.allowed_authors(self.access, roles)

    async def _roles_of(self, guild: discord.Guild | None, author: discord.abc.User) -> tuple[int, ...]:
        """An author's role ids. Messages read through REST come without them: ask for the member (cached for a
        few minutes). Someone who left, or whose roles cannot be read, holds none."""
        if guild is None:
            return ()
        if isinstance(author, discord.Member) and author.guild.id == guild.id:
            return tuple(ev.role_ids(author))
        key = (guild.id, author.id)
        cached = self._member_roles.get(key)
        if cached is not None:
            return cached
        try:
            member = await guild.fetch_member(author.id)
        except discord.NotFound:
            roles: tuple[int, ...] = ()
        except discord.HTTPException as exc:
            log.warning("could not read the roles of user %s (%s): leaving their messages out", author.id, exc)
            return ()
        else:
            roles = tuple(ev.role_ids(member))
        self._member_roles.put(key, roles)
        return roles

    async def _sink_for(self, message: discord.Message, prompt: str) -> ChannelSink:
        channel = message.channel
        if message.guild is None or isinstance(channel, discord.Thread):
            return ChannelSink(channel)
        try:
            thread = await message.create_thread(name=ev.thread_name(prompt))
        except (discord.HTTPException, ValueError) as exc:
            log.warning("could not create a thread in channel %s (%s): answering in the channel", channel.id, exc)
            return ChannelSink(channel, reference=message)
        return ChannelSink(thread)

    async def _earlier(self, message: discord.Message) -> list[discord.Message]:
        """The messages before ``message`` in its conversation, oldest first: the thread's or DM's history, else
        the chain of messages it replies to."""
        try:
            return await self._fetch_earlier(message)
        except discord.HTTPException as exc:  # e.g. no Read Message History here: answer without the context
            log.warning("could not read the conversation of message %s: %s", message.id, exc)
            return []

    async def _fetch_earlier(self, message: discord.Message) -> list[discord.Message]:
        channel = message.channel
        if isinstance(channel, discord.Thread | discord.DMChannel):
            earlier = [m async for m in channel.history(limit=HISTORY_LIMIT, before=message)]
            earlier.reverse()
            if earlier and earlier[0].type is discord.MessageType.thread_starter_message:
                parent = channel.parent if isinstance(channel, discord.Thread) else None
                starter = await self._referenced(earlier[0], parent)
                earlier[:1] = [starter] if starter else []
            return earlier
        chain: list[discord.Message] = []
        current: discord.Message | None = message
        while current is not None and len(chain) < REPLY_CHAIN_LIMIT:
            current = await self._referenced(current, channel)
            if current is not None:
                chain.append(current)
        chain.reverse()
        return chain

    @staticmethod
    async def _referenced(message: discord.Message, channel: object) -> discord.Message | None:
        ref = message.reference
        if ref is None:
            return None
        if isinstance(ref.resolved, discord.Message):
            return ref.resolved
        if ref.message_id is None or not isinstance(channel, discord.abc.Messageable):
            return None
        try:
            return await channel.fetch_message(ref.message_id)
        except discord.HTTPException:
            return None
