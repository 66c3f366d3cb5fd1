"""Where Discord replies go: a channel, thread or DM (``ChannelSink``), or a slash command's response and its
follow-ups (``InteractionSink``); and the ``AnswerTarget`` of a mention (which opens a thread) and of ``/ask``."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import discord

from bots.discord.buttons import view
from bots.messages import Messages
from bots.sink import Opened, Reply

log = logging.getLogger("engbot.discord")

ORIGINAL = "@original"  # the message id of a slash command's (deferred) response


def components(reply: Reply) -> dict[str, Any]:
    """``send`` arguments for a reply's controls (none: no ``view`` argument at all)."""
    shown = view(reply)
    return {"view": shown} if shown is not None else {}


class ChannelSink:
    """Posts in a channel, thread or DM, and edits what it posted. ``reference`` makes the first post a reply."""

    def __init__(self, channel: discord.abc.Messageable, reference: discord.Message | None = None) -> None:
        self.channel, self.reference = channel, reference
        self._posted: dict[str, discord.Message] = {}

    async def post(self, reply: Reply) -> str:
        if self.reference is not None:
            message = await self.channel.send(reply.text, reference=self.reference, **components(reply))
            self.reference = None
        else:
            message = await self.channel.send(reply.text, **components(reply))
        self._posted[str(message.id)] = message
        return str(message.id)

    async def edit(self, message_id: str, reply: Reply, *, final: bool = False) -> None:
        await self._posted[message_id].edit(content=reply.text, view=view(reply))

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

    async def post(self, reply: Reply) -> str:
        if self._expired():
            channel = self.interaction.channel
            if not isinstance(channel, discord.abc.Messageable):
                raise RuntimeError("the interaction expired and its channel cannot be posted in")
            message: discord.Message = await channel.send(reply.text, **components(reply))
            self._in_channel.add(str(message.id))
        else:
            message = await self.interaction.followup.send(reply.text, wait=True, **components(reply))
        self._posted[str(message.id)] = message
        return str(message.id)

    async def edit(self, message_id: str, reply: Reply, *, final: bool = False) -> None:
        target = self._moved.get(message_id, message_id)
        if target in self._in_channel:
            await self._posted[target].edit(content=reply.text, view=view(reply))
        elif self._expired():
            # the token still has its last minute: point from the message it can no longer keep up to date
            with contextlib.suppress(discord.HTTPException):
                await self._edit_webhook(message_id, Reply(Messages.MOVED))
            self._moved[message_id] = await self.post(reply)
        else:
            await self._edit_webhook(target, reply)

    async def delete(self, message_id: str) -> None:
        if message_id == ORIGINAL:
            await self.interaction.delete_original_response()
            return
        target = self._moved.pop(message_id, message_id)
        await self._posted[target].delete()
        del self._posted[target]
        self._in_channel.discard(target)

    async def _edit_webhook(self, message_id: str, reply: Reply) -> None:
        if message_id == ORIGINAL:
            await self.interaction.edit_original_response(content=reply.text, view=view(reply))
        else:
            await self._posted[message_id].edit(content=reply.text, view=view(reply))


class MessageTarget:
    """The answer to a mention or DM: a new thread under the message in a server channel (the reply goes in the
    channel when no thread can be made), the thread or DM itself otherwise. The thread is made at the first
    reply, named after the question."""

    def __init__(self, message: discord.Message, thread_name: str) -> None:
        self.message, self.thread_name = message, thread_name
        self._sink: ChannelSink | None = None

    async def sink(self) -> ChannelSink:
        if self._sink is None:
            self._sink = await self._open_sink()
        return self._sink

    async def _open_sink(self) -> ChannelSink:
        message, channel = self.message, self.message.channel
        if message.guild is None or isinstance(channel, discord.Thread):
            return ChannelSink(channel)
        try:
            thread = await message.create_thread(name=self.thread_name)
        except (discord.HTTPException, ValueError) as exc:
            log.warning("could not create a thread in channel %s (%s): answering in the channel", channel.id, exc)
            return ChannelSink(channel, reference=message)
        return ChannelSink(thread)

    async def notice(self, text: str) -> None:
        await (await self.sink()).post(Reply(text))

    async def open(self, placeholder: Reply) -> Opened:
        sink = await self.sink()
        return Opened(sink, await sink.post(placeholder), placeholder)


class CommandTarget:
    """The answer to ``/ask``: notices are ephemeral (only the asker sees them); the answer goes into the deferred
    response ("thinking…"), then follow-ups, then channel messages once the token expires.

    Discord forgets an interaction not answered within 3 s (10062 "Unknown interaction"): the answer flow calls
    ``accept`` (the deferral) before it submits the job, which can take longer (a Redis queue)."""

    def __init__(self, interaction: discord.Interaction, ttl_s: float) -> None:
        self.interaction, self.ttl_s = interaction, ttl_s

    async def accept(self) -> None:
        await self.interaction.response.defer(thinking=True)  # Discord shows its own "thinking…", to everyone

    async def notice(self, text: str) -> None:
        if not self.interaction.response.is_done():
            await self.interaction.response.send_message(text, ephemeral=True)
            return
        # Deferred already. The first follow-up would replace "thinking…" and keep its visibility (everyone's):
        # take it away, then tell the asker alone.
        try:
            await self.interaction.delete_original_response()
        except discord.HTTPException as exc:
            log.warning("could not remove the thinking response of /ask %s: %s", self.interaction.id, exc)
        await self.interaction.followup.send(text, ephemeral=True)

    async def open(self, placeholder: Reply) -> Opened:
        if not self.interaction.response.is_done():
            await self.accept()
        return Opened(InteractionSink(self.interaction, time.monotonic() + self.ttl_s), ORIGINAL, Reply(""))
