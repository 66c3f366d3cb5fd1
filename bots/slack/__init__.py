"""Slack: mentions, DMs and follow-ups in threads the bot answered in, over Socket Mode or HTTP (slack-bolt).

Setup: docs/slack.md; settings: SLACK_* in .env.example.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (the package itself imports nothing: its modules import each other, never it)
    from bots.channels.lookup import ChannelSettings
    from bots.slack.adapter import SlackAdapter
    from bots.slack.settings import SlackSettings
    from engine.api import Submitter


def settings_from_environ(environ: Mapping[str, str]) -> SlackSettings | None:
    """None when Slack is not configured (no SLACK_BOT_TOKEN or SLACK_APP_TOKEN)."""
    from bots.slack.settings import SlackSettings

    return SlackSettings.from_environ(environ)


def make_adapter(settings: SlackSettings, submitter: Submitter,
                 channels: ChannelSettings | None = None) -> SlackAdapter:
    from bots.slack.adapter import SlackAdapter

    return SlackAdapter(settings, submitter, channels)
