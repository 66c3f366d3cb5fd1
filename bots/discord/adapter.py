"""The Discord adapter: ``/ask``, mentions answered in a thread of their own, follow-ups in that thread, and DMs;
each question answered through the shared answer flow (``bots/answer.py``), and presses on the buttons under its
answers (``buttons.py``) handed to the same flow.

    adapter = DiscordAdapter(settings, submitter)
    await adapter.start()            # returns once the gateway sent READY
    ...
    await adapter.stop_intake(); await submitter.stop(); await adapter.close()

Network code only: every decision about an event is made in ``events.py``, replies go through ``sink.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import discord
from discord import app_commands
from discord.webhook.async_ import async_context

import bots.discord.events as ev
from bots.answer import AnswerFlow, Asked, Question
from bots.channels.effective import Effective
from bots.channels.lookup import ChannelSettings
from bots.decisions import Ignore, Notice
from bots.discord.buttons import AnswerButton
from bots.discord.client import RebasedHTTPClient, RebasedWebhookAdapter, guarded
from bots.discord.commands import DiscordCommands, place_of
from bots.discord.files import incoming
from bots.discord.settings import DiscordSettings
from bots.discord.sink import CommandTarget, MessageTarget
from bots.limits import RateLimiter, Recent
from bots.messages import Messages
from bots.stream import StreamStyle
from bots.summarize import Summaries
from engine.api import Submitter
from engine.config import mask
from engine.errors import ConfigError
from engine.types import Turn

log = logging.getLogger("engbot.discord")

# the bot has no voice: spare the log discord.py's warnings about missing voice libraries
discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False

MESSAGE_LIMIT = 1900  # characters as sent (cursor and closing fence included), of Discord's 2,000
INTERACTION_TTL_S = 14 * 60.0  # an interaction token lasts 15 minutes: keep one for the last edits
HISTORY_LIMIT = 50
REPLY_CHAIN_LIMIT = 10
START_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 30.0
MEMBER_ROLES_TTL_S = 300.0  # how long a thread participant's roles are trusted (DISCORD_ALLOWED_ROLES)


class _Client(discord.Client):
    def __init__(self, adapter: DiscordAdapter, *, message_content: bool) -> None:
        intents = discord.Intents.default()
        intents.message_content = message_content
        settings = adapter.settings
        super().__init__(intents=intents, allowed_mentions=discord.AllowedMentions.none(),
                         guild_ready_timeout=settings.guild_ready_timeout_s)
        self.adapter = adapter
        # replaces the HTTP client discord.py just built, before anything has used it
        self.http = self._connection.http = RebasedHTTPClient(self.loop, api_url=settings.api_url,
                                                              gateway_url=settings.gateway_url)
        # discord.py lets an exception in a payload parser end the connection: one bad payload would stop the bot
        parsers = self._connection.parsers
        for event, parse in parsers.items():
            parsers[event] = guarded(event, parse)
        self.tree = app_commands.CommandTree(self)
        self.tree.add_command(app_commands.Command(name="ask", description="Ask the model a question",
                                                   callback=adapter.ask))
        for command in adapter.commands.app_commands():  # /engbot persona ..., "Summarize thread"
            self.tree.add_command(command)

    async def setup_hook(self) -> None:
        self.add_dynamic_items(AnswerButton)  # presses on any message's buttons, sent before a restart too
        guild = discord.Object(self.adapter.settings.guild_id) if self.adapter.settings.guild_id else None
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        try:
            commands = await self.tree.sync(guild=guild)
        except discord.HTTPException as exc:
            log.error("could not register the commands (%s): was the bot invited with the applications.commands "
                      "scope?", exc)
        else:
            log.info("registered %s in %s", ", ".join(("/" if c.type is discord.AppCommandType.chat_input else "")
                                                      + c.name for c in commands),
                     f"server {guild.id}" if guild else "every server (may take up to an hour to appear)")

    async def on_ready(self) -> None:
        self.adapter._ready.set()

    async def on_message(self, message: discord.Message) -> None:
        await self.adapter.on_message(message)

    async def pressed(self, interaction: discord.Interaction[Any], custom_id: str) -> None:
        await self.adapter.pressed(interaction, custom_id)


class DiscordAdapter:
    """One Discord bot connection answering with ``submitter``."""

    name = "discord"

    def __init__(self, settings: DiscordSettings, submitter: Submitter, channels: ChannelSettings | None = None
                 ) -> None:
        self.settings, self.submitter = settings, submitter
        self.channels = channels or ChannelSettings()  # what applies in each channel (ENGBOT_CONFIG, personas)
        self.access = settings.access
        self.flow = AnswerFlow(ev.PLATFORM, submitter,
                               RateLimiter(settings.rate_limit_per_user, settings.rate_limit_period_s),
                               StreamStyle(limit=MESSAGE_LIMIT),
                               mention=lambda user: f"<@{user}>",  # (allowed_mentions is none: it pings nobody)
                               thinking_tags=self.channels.tags)
        self.interaction_ttl_s = INTERACTION_TTL_S
        self.commands = DiscordCommands(settings, self.channels, Summaries(self.flow), taking=lambda: self._intake,
                                        bot_id=self._bot_id, ttl_s=INTERACTION_TTL_S)
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
        context.run(async_context.set, RebasedWebhookAdapter(self.settings.api_url))
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

    def _bot_id(self) -> int:
        assert self._client is not None and self._client.user is not None
        return self._client.user.id

    async def _effective(self, channel: object, guild_id: int | None, user: discord.abc.User) -> Effective | None:
        """The settings of ``channel``; None (logged) when its allowed users or roles (ENGBOT_CONFIG) leave
        ``user`` out."""
        effective = await self.channels.effective(place_of(channel, guild_id))
        if effective.allows(str(user.id), [str(r) for r in ev.role_ids(user)]):
            return effective
        log.info("not answering user %s in channel %s: not in its allowed_users or allowed_roles (ENGBOT_CONFIG)",
                 user.id, getattr(channel, "id", "?"))
        return None

    # ---- /ask ----

    @app_commands.describe(prompt="Your question", file="A text file or PDF to ask about")
    async def ask(self, interaction: discord.Interaction, prompt: app_commands.Range[str, 1, 6000],
                  file: discord.Attachment | None = None) -> None:
        """``/ask prompt:<text> [file:<attachment>]``: a thinking response at once, then the answer streamed into
        it."""
        target = CommandTarget(interaction, self.interaction_ttl_s)
        if not self._intake:
            await target.notice(Messages.UNAVAILABLE)
            return
        channels = ev.channel_ids(interaction.channel) or [i for i in (interaction.channel_id,) if i]
        decision = ev.decide_command(prompt, self.access, guild_id=interaction.guild_id, channels=channels,
                                     roles=ev.role_ids(interaction.user))
        if isinstance(decision, Notice):
            if decision.reason:
                log.info("refused /ask %s from user %s: %s", interaction.id, interaction.user.id, decision.reason)
            await target.notice(decision.text)
            return
        effective = await self._effective(interaction.channel, interaction.guild_id, interaction.user)
        if effective is None:
            await target.notice(Messages.NOT_ALLOWED)
            return
        bot_id = self._bot_id()
        text = ev.readable(decision.prompt, bot_id, ev.Names.lookup(interaction.guild, ev.mentioned_ids(prompt)))

        async def turns() -> Asked:
            question, notes = text, tuple[str, ...]()
            if file is not None:
                question, notes = await self.channels.with_files(text, incoming([file]), effective)
            return Asked(ev.turns_for([], question, bot_id, interaction.user, max_chars=effective.history_chars),
                         notes)

        question = Question(user=str(interaction.user.id), source=f"interaction:{interaction.id}", turns=turns,
                            system_prompt=effective.job_system_prompt, params=effective.job_params,
                            thinking=effective.show_thinking, model=effective.job_model)
        with self._in_flight():
            try:
                await self.flow.answer(question, target)
            except Exception:
                log.exception("answering /ask %s failed", interaction.id)

    # ---- a press on an answer's button ----

    async def pressed(self, interaction: discord.Interaction[Any], custom_id: str) -> None:
        """Acknowledge a press at once (a deferred update: the message stays as it is), then do what it asks
        through the answer flow; whatever is said about it, only the presser sees (after ``stop_intake``: that the
        bot is unavailable). A press on an id that is not ours is ignored. Never raises."""
        user = interaction.user
        press = ev.press_of(custom_id, user.id, ev.role_ids(user), self.settings.admin_roles)
        if press is None:
            log.warning("ignored a press on a button that is not ours: %r", custom_id[:100])
            return
        try:
            await interaction.response.defer()  # within Discord's 3 s, before anything that can wait
        except discord.HTTPException as exc:
            log.warning("could not acknowledge a %s press on job %s (%s): Discord tells the user it failed",
                        press.action, press.job_id[:8], exc)
            return

        async def tell(text: str) -> None:
            await interaction.followup.send(text, ephemeral=True)

        with self._in_flight():
            try:
                if not self._intake:
                    await tell(Messages.UNAVAILABLE)
                    return
                await self.flow.press(press, tell)
            except Exception:
                log.exception("a %s press on job %s by user %s failed", press.action, press.job_id[:8], user.id)
                try:
                    await tell(Messages.FAILED)
                except Exception as exc:
                    log.warning("could not tell the presser either: %s: %s", type(exc).__name__, exc)

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
        if isinstance(decision, Ignore):
            if decision.log:
                log.info("ignored message %s from user %s in channel %s: %s", message.id, message.author.id,
                         channel.id, decision.reason)
            return
        prompt = decision.prompt if not isinstance(decision, Notice) else ""
        names = [a.filename for a in message.attachments]
        target = MessageTarget(message, ev.thread_name(prompt or ", ".join(names)))
        with self._in_flight():
            try:
                if isinstance(decision, Notice):
                    await target.notice(decision.text)
                    return
                effective = await self._effective(channel, message.guild.id if message.guild else None,
                                                  message.author)
                if effective is None:
                    return
                answer_to = effective

                async def turns() -> Asked:
                    question, notes = prompt, tuple[str, ...]()
                    if message.attachments:
                        files = incoming(list(message.attachments), lambda: channel.fetch_message(message.id))
                        question, notes = await self.channels.with_files(prompt, files, answer_to)
                    return Asked(await self._turns(message, question, bot_id, answer_to.history_chars), notes)

                await self.flow.answer(Question(user=str(message.author.id), source=f"message:{message.id}",
                                                turns=turns, system_prompt=effective.job_system_prompt,
                                                params=effective.job_params, thinking=effective.show_thinking,
                                                model=effective.job_model),
                                       target)
            except Exception:
                log.exception("answering message %s failed", message.id)

    async def _turns(self, message: discord.Message, prompt: str, bot_id: int, max_chars: int) -> tuple[Turn, ...]:
        earlier = await self._earlier(message) if max_chars else []
        authors = await self._allowed_authors(message.guild, earlier)
        return ev.turns_for(earlier, prompt, bot_id, message.author, authors=authors, max_chars=max_chars)

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
