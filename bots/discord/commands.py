"""Discord's commands besides ``/ask``: ``/engbot persona set|show|reset`` (a channel's persona, admins only) and
the message context-menu command "Summarize thread". What they build is registered in the adapter's command
tree; the handlers run with the adapter's settings, channel settings and summaries."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import discord
from discord import app_commands

import bots.discord.events as ev
from bots.channels.command import PersonaCommand, run_command
from bots.channels.effective import Place
from bots.channels.lookup import ChannelSettings
from bots.discord.settings import DiscordSettings
from bots.discord.sink import CommandTarget
from bots.messages import Messages
from bots.summarize import Summaries, SummaryRequest

log = logging.getLogger("engbot.discord")

SUMMARIZE = "Summarize thread"
SUMMARY_LIMIT = 10_000  # messages of a thread or channel read for a summary at most
PERSONA_MAX = 4000


def place_of(channel: object, guild_id: int | None) -> Place:
    """Where a message or command is: a thread counts as its parent channel for the persona and settings."""
    parent = channel.parent_id if isinstance(channel, discord.Thread) else None
    return Place("discord", str(getattr(channel, "id", "")), guild=str(guild_id) if guild_id else None,
                 parent=str(parent) if parent else None, dm=guild_id is None)


class DiscordCommands:
    """The persona command group and the summary menu of one adapter."""

    def __init__(self, settings: DiscordSettings, channels: ChannelSettings, summaries: Summaries, *,
                 taking: Callable[[], bool], bot_id: Callable[[], int], ttl_s: float) -> None:
        self.settings, self.channels, self.summaries = settings, channels, summaries
        self.taking, self.bot_id, self.ttl_s = taking, bot_id, ttl_s

    def app_commands(self) -> list[app_commands.Group | app_commands.ContextMenu]:
        """``/engbot persona set|show|reset`` and the "Summarize thread" message command, for the tree."""
        engbot = app_commands.Group(name="engbot", description="engbot's settings in this channel")
        persona = app_commands.Group(name="persona", description="The system prompt answers get in this channel "
                                     "(admins)", parent=engbot)

        @app_commands.describe(text="The system prompt answers in this channel start from")
        async def set_persona(interaction: discord.Interaction, text: app_commands.Range[str, 1, PERSONA_MAX]
                              ) -> None:
            await self.persona(interaction, PersonaCommand("set", text.strip()))

        async def show_persona(interaction: discord.Interaction) -> None:
            await self.persona(interaction, PersonaCommand("show"))

        async def reset_persona(interaction: discord.Interaction) -> None:
            await self.persona(interaction, PersonaCommand("reset"))

        for name, callback, description in (("set", set_persona, "Set this channel's persona"),
                                            ("show", show_persona, "Show this channel's persona"),
                                            ("reset", reset_persona, "Remove this channel's persona")):
            persona.add_command(app_commands.Command(name=name, description=description, callback=callback))

        async def summarize(interaction: discord.Interaction, message: discord.Message) -> None:
            await self.summarize(interaction, message)

        return [engbot, app_commands.ContextMenu(name=SUMMARIZE, callback=summarize)]

    # ---- /engbot persona ----

    async def persona(self, interaction: discord.Interaction[Any], command: PersonaCommand) -> None:
        """Run a persona command; its reply only the one who ran it sees."""
        user = interaction.user
        admin = any(str(r) in self.settings.admin_roles for r in ev.role_ids(user))
        place = place_of(interaction.channel, interaction.guild_id)
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            text = await run_command(self.channels, place, command, user=str(user.id), admin=admin,
                                     admin_setting="DISCORD_ADMIN_ROLES", command_name="/engbot",
                                     mention=lambda u: f"<@{u}>")
        except Exception:
            log.exception("the persona command %s failed", interaction.id)
            text = Messages.FAILED
        await interaction.followup.send(text, ephemeral=True)

    # ---- Summarize thread ----

    async def summarize(self, interaction: discord.Interaction[Any], message: discord.Message) -> None:
        """The summary of the thread ``message`` is in (or starts), else of the channel from ``message`` on."""
        target = CommandTarget(interaction, self.ttl_s)
        if not self.taking():
            await target.notice(Messages.UNAVAILABLE)
            return
        user = interaction.user
        roles = ev.role_ids(user)
        channel = interaction.channel
        place = place_of(channel, interaction.guild_id)
        effective = await self.channels.effective(place)
        refusal = self.settings.access.refusal(interaction.guild_id, ev.channel_ids(channel), roles)
        if refusal or not effective.allows(str(user.id), [str(r) for r in roles]):
            log.info("refused a summary for user %s in %s: %s", user.id, place.channel,
                     refusal or "the channel's allowed_users/allowed_roles (ENGBOT_CONFIG)")
            await target.notice(Messages.SUMMARY_NOT_ALLOWED)
            return
        bot_id = self.bot_id()

        async def read() -> list[Any]:
            messages = await _thread_messages(message)
            return ev.said_of(messages, bot_id)

        request = SummaryRequest(user=str(user.id), source=f"message:{message.id}", read=read,
                                 system_prompt=effective.system_prompt, params=effective.params,
                                 budget=self.channels.budget_for(effective), thinking=effective.show_thinking,
                                 model=effective.job_model)
        try:
            await self.summaries.summarize(request, target)
        except Exception:
            log.exception("summarizing for interaction %s failed", interaction.id)


async def _thread_messages(message: discord.Message) -> list[discord.Message]:
    """Oldest first: the whole thread ``message`` is in, or the thread it started, else the channel's messages from
    ``message`` on."""
    channel = message.channel
    thread: discord.Thread | None = channel if isinstance(channel, discord.Thread) else None
    if thread is None and message.guild is not None:
        found = message.guild.get_channel_or_thread(message.id)  # a thread started from a message has its id
        thread = found if isinstance(found, discord.Thread) else None
    if thread is not None:
        messages = [m async for m in thread.history(limit=SUMMARY_LIMIT)]
        messages.reverse()
        if messages and messages[0].type is discord.MessageType.thread_starter_message:
            ref = messages[0].reference
            starter = ref.resolved if ref is not None and isinstance(ref.resolved, discord.Message) else None
            if starter is None and thread.id == message.id:
                starter = message  # (the thread was started from the message the command was run on)
            messages[:1] = [starter] if starter is not None else []
        return messages
    later = [m async for m in channel.history(limit=SUMMARY_LIMIT - 1, after=message, oldest_first=True)]
    return [message, *later]
