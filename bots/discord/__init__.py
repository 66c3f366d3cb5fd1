"""Discord: ``/ask``, mentions answered in a thread of their own, follow-ups in that thread, and DMs (discord.py).

Setup: docs/discord.md; settings: DISCORD_* in .env.example.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (the package itself imports nothing: its modules import each other, never it)
    from bots.channels.lookup import ChannelSettings
    from bots.discord.adapter import DiscordAdapter
    from bots.discord.settings import DiscordSettings
    from engine.api import Submitter


def settings_from_environ(environ: Mapping[str, str]) -> DiscordSettings | None:
    """None when Discord is not configured (no DISCORD_BOT_TOKEN)."""
    from bots.discord.settings import DiscordSettings

    return DiscordSettings.from_environ(environ)


def make_adapter(settings: DiscordSettings, submitter: Submitter,
                 channels: ChannelSettings | None = None) -> DiscordAdapter:
    from bots.discord.adapter import DiscordAdapter

    return DiscordAdapter(settings, submitter, channels)
