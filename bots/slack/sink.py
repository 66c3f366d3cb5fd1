"""Where Slack replies go: ``SlackThread`` posts and edits the bot's messages in one thread (a ``Sink``),
``SlackTarget`` is one question's answer in that thread (an ``AnswerTarget``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from bots.limits import Recent
from bots.sink import Opened, Reply
from bots.slack.budget import EditBudget
from bots.slack.client import describe_error, outcome_unknown, read_thread
from bots.slack.events import BotIdentity, find_post, post_args, update_args
from bots.slack.settings import UPDATE_BUDGET
from bots.stream import AnswerStreamer

log = logging.getLogger("engbot.slack")

THREADS_TTL_S = 7 * 24 * 3600.0
POST_RECHECK_S = 1.0  # after a post with an unknown outcome, wait this long before reading the thread


class SlackThread:
    """A ``Sink``: posts and edits the bot's messages in one thread.

    ``chat.postMessage`` is not idempotent, so a post that fails in a way that leaves its outcome unknown (5xx,
    lost connection) is not simply sent again: the thread is read, and a message of the bot with that text, newer
    than ``after`` and not one ``posted`` knows, is taken as the post that arrived after all; if there is none,
    the post is sent once more.

    ``chat.update`` is rate tier 3: about 50 a minute for the whole workspace, however many answers stream at once.
    Every thread of one adapter shares ``update_budget`` (``budget.py``): an edit waits there for its turn instead
    of running into Slack's 429s.
    """

    def __init__(self, client: AsyncWebClient, channel: str, thread_ts: str, me: BotIdentity, *, after: str = "",
                 posted: Recent[tuple[str, str], bool] | None = None, update_budget: EditBudget | None = None,
                 with_controls: Recent[tuple[str, str], bool] | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        self.client, self.channel, self.thread_ts, self.me = client, channel, thread_ts, me
        self.metadata = metadata  # sent with every post (a summary's marks it as one)
        self.after = after
        self.posted: Recent[tuple[str, str], bool] = posted if posted is not None else Recent(THREADS_TTL_S, 20_000)
        # messages that show buttons (an edit without them must clear their blocks), shared across threads
        self.with_controls: Recent[tuple[str, str], bool] = with_controls if with_controls is not None \
            else Recent(THREADS_TTL_S, 20_000)
        self.update_budget = update_budget or EditBudget(*UPDATE_BUDGET)

    async def post(self, reply: Reply) -> str:
        text = reply.text
        args = post_args(self.channel, self.thread_ts, reply, self.metadata)
        try:
            response = await self.client.chat_postMessage(**args)
        except Exception as exc:
            if not outcome_unknown(exc):
                raise
            log.warning("Slack: posting in %s %s failed (%s): checking the thread before posting again",
                        self.channel, self.thread_ts, describe_error(exc))
            await asyncio.sleep(POST_RECHECK_S)
            try:
                history = await read_thread(self.client, self.channel, self.thread_ts)
            except Exception as read_error:
                log.warning("Slack: could not check thread %s %s (%s): not posting again, to post no duplicate",
                            self.channel, self.thread_ts, describe_error(read_error))
                raise exc from None
            found = find_post(history, self.me, text, after=self.after,
                              known=lambda ts: self.posted.get((self.channel, ts)) is not None)
            if found is not None:
                log.info("Slack: the message had been posted after all (%s)", found)
                self.posted.put((self.channel, found), True)
                return found
            response = await self.client.chat_postMessage(**args)
        ts = str(response["ts"])
        self.posted.put((self.channel, ts), True)
        if reply.controls:
            self.with_controls.put((self.channel, ts), True)
        return ts

    async def edit(self, message_id: str, reply: Reply, *, final: bool = False) -> None:
        """``chat.update``, within the workspace's budget for it (the caller waits its turn; a final edit first)."""
        key = (self.channel, message_id)
        had_controls = self.with_controls.get(key) is not None
        turn = await self.update_budget.acquire(final=final)
        try:
            await self.client.chat_update(**update_args(self.channel, message_id, reply, clear_blocks=had_controls))
        finally:
            self.update_budget.finished(turn)
        if reply.controls:
            self.with_controls.put(key, True)

    async def delete(self, message_id: str) -> None:
        await self.client.chat_delete(channel=self.channel, ts=message_id)


class SlackTarget:
    """One question's answer: notices and the placeholder go into ``thread``; ``on_reply`` hears of every message
    posted (the adapter remembers the thread as one the bot answers in). ``native`` offers Slack's own streaming
    for the answer (``native.py``), or None: then a placeholder is posted and edited."""

    def __init__(self, thread: SlackThread, on_reply: Callable[[], None], received: float, *,
                 native: Callable[[], AnswerStreamer | None] = lambda: None) -> None:
        self.thread, self.on_reply, self.received, self.native = thread, on_reply, received, native

    async def notice(self, text: str) -> None:
        await self.thread.post(Reply(text))
        self.on_reply()

    async def open(self, placeholder: Reply) -> Opened:
        stream = self.native()
        if stream is not None:  # no placeholder: the thread's status says "thinking" until the stream starts
            self.on_reply()
            return Opened(self.thread, "", placeholder, stream=stream)
        ts = await self.thread.post(placeholder)
        self.on_reply()
        log.debug("Slack: placeholder %.0f ms after the event", (time.monotonic() - self.received) * 1000)
        return Opened(self.thread, ts, placeholder)
