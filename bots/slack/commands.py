"""Slack's commands besides questions: the ``/engbot`` slash command (a channel's persona) and the "Summarize
thread" message shortcut (callback id ``engbot_summarize``). Both are acknowledged by the adapter within Slack's
3 s before they get here."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from bots.channels.command import parse_command, run_command
from bots.channels.effective import Place
from bots.channels.lookup import ChannelSettings
from bots.conversation import Said
from bots.messages import Messages
from bots.slack.client import describe_error, read_thread
from bots.slack.events import (
    USER_SUBTYPES,
    BotIdentity,
    bot_text_for_history,
    is_from_bot,
    plain_text,
    speaker_names,
)
from bots.slack.settings import SlackSettings
from bots.slack.sink import SlackTarget, SlackThread
from bots.summarize import Summaries, SummaryRequest

log = logging.getLogger("engbot.slack")

COMMAND = "/engbot"
SUMMARIZE_CALLBACK = "engbot_summarize"
SUMMARY_PAGES = 50  # conversations.replies pages of 200: up to 10,000 messages of a thread are summarized


def _field(body: Mapping[str, Any], *path: str) -> str:
    value: Any = body
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value if isinstance(value, str) else ""


def thread_said(history: Sequence[Any], me: BotIdentity, allowed_users: frozenset[str] = frozenset()) -> list[Said]:
    """A thread's messages as the summary reads them: people's (only ``allowed_users``' when set) with their
    names, the bot's answers without notes and thinking; other bots and Slack's bookkeeping left out."""
    names = speaker_names(history)
    said: list[Said] = []
    for item in history:
        if not isinstance(item, Mapping) or not isinstance(item.get("text"), str):
            continue
        if is_from_bot(item, me):
            said.append(Said(plain_text(bot_text_for_history(item["text"]), names=names), None))
            continue
        user = item.get("user")
        if item.get("subtype") not in (None, *USER_SUBTYPES) or item.get("bot_id") is not None:
            continue
        if isinstance(user, str) and (not allowed_users or user in allowed_users):
            said.append(Said(plain_text(item["text"], me.user_id, names), user, names.get(user, "@" + user)))
    return said


class SlackCommands:
    """The slash command and the message shortcut of one adapter."""

    def __init__(self, settings: SlackSettings, channels: ChannelSettings, summaries: Summaries, *,
                 client: Callable[[], AsyncWebClient], me: Callable[[], BotIdentity],
                 thread: Callable[[str, str], SlackThread]) -> None:
        self.settings, self.channels, self.summaries = settings, channels, summaries
        self.client, self.me, self.thread = client, me, thread

    async def persona(self, body: Mapping[str, Any], respond: Callable[..., Any]) -> None:
        """``/engbot persona set|show|reset``: the reply only the admin who ran it sees."""
        user, channel = _field(body, "user_id"), _field(body, "channel_id")
        place = Place("slack", channel, guild=_field(body, "team_id") or None, dm=channel.startswith("D"))
        text = await run_command(self.channels, place, parse_command(_field(body, "text")), user=user,
                                 admin=user in self.settings.admin_users, admin_setting="SLACK_ADMIN_USERS",
                                 command_name=_field(body, "command") or COMMAND, mention=lambda u: f"<@{u}>")
        await respond(text=text, response_type="ephemeral")

    async def summarize(self, body: Mapping[str, Any]) -> None:
        """"Summarize thread" on a message: the summary of its whole thread, posted in that thread."""
        received = time.monotonic()
        user, channel = _field(body, "user", "id"), _field(body, "channel", "id")
        ts = _field(body, "message", "ts") or _field(body, "message_ts")
        thread_ts = _field(body, "message", "thread_ts") or ts
        if not (user and channel and ts):
            log.warning("Slack: skipped a malformed message shortcut")
            return
        place = Place("slack", channel, guild=_field(body, "team", "id") or None, dm=channel.startswith("D"))
        effective = await self.channels.effective(place)
        policy = self.settings
        if (policy.allowed_channels and not place.dm and channel not in policy.allowed_channels) or (
                policy.allowed_users and user not in policy.allowed_users) or not effective.allows(user):
            log.info("Slack: not summarizing %s %s for user %s: not allowed here", channel, thread_ts, user)
            await self._tell(channel, user, thread_ts, Messages.SUMMARY_NOT_ALLOWED)
            return
        client, me = self.client(), self.me()

        async def read() -> list[Said]:
            history = await read_thread(client, channel, thread_ts, pages=SUMMARY_PAGES)
            return thread_said(history, me, policy.allowed_users)

        request = SummaryRequest(user=user, source=f"{channel}:{thread_ts}", read=read,
                                 system_prompt=effective.system_prompt, params=effective.params,
                                 budget=self.channels.budget_for(effective), thinking=effective.show_thinking,
                                 model=effective.job_model)
        target = SlackTarget(self.thread(channel, thread_ts), lambda: None, received)
        await self.summaries.summarize(request, target)

    async def _tell(self, channel: str, user: str, thread_ts: str, text: str) -> None:
        try:
            await self.client().chat_postEphemeral(channel=channel, user=user, text=text, thread_ts=thread_ts)
        except Exception as exc:
            log.info("Slack: could not tell user %s: %s", user, describe_error(exc))
