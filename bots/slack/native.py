"""Slack's own streaming of an answer (``SLACK_STREAMING``): ``chat.startStream`` once there is text,
``chat.appendStream`` at most every ``stream_interval_s`` within the workspace's budget, ``chat.stopStream`` with
the answer's final controls as blocks. While no text is shown, the thread's status (``assistant.threads.setStatus``)
says the bot is thinking, or where the question is in the queue.

Whenever Slack refuses the stream (a start or a stop refused or rate limited, the message no longer streaming, a
state conflict), the answer goes on with edits, as ``bots/stream.py`` streams it everywhere else: in the streamed
message if there is one, else in a new one. Either way it ends with exactly one final state. The user's own stop
button in Slack (``stopped_by_user``) cancels the job; the answer ends as stopped.

slack_sdk's ``chat_stream`` helper is not used: it batches by size where we batch by time, and keeps the text of
a failed call in its buffer, so our retry of that text would send it twice. The three methods are called directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from bots.messages import Messages, queued_status
from bots.sink import Reply
from bots.slack.budget import EditBudget
from bots.slack.client import api_error, describe_error, retry_after
from bots.slack.events import control_blocks
from bots.slack.settings import SlackSettings, Streaming
from bots.slack.sink import SlackThread
from bots.stream import NO_CONTROLS, AnswerControls, MessageChain, StreamStyle, stream_reply
from bots.text import defuse_markdown, held_back, paginate, stream_cut
from engine.api import JobHandle
from engine.types import Done, Event, Failed, Queued, Started, TextPiece

log = logging.getLogger("engbot.slack")

# Refusals of chat.startStream that the next answer would meet too: SLACK_STREAMING=auto stops trying
PERMANENT_REFUSALS = frozenset({"unknown_method", "missing_scope", "not_allowed_token_type", "method_deprecated",
                                "feature_not_enabled", "access_denied", "not_allowed"})


class NativeStreaming:
    """Slack's own streaming for one adapter: whether an answer may stream natively, and the workspace's budgets
    for starting streams (tier 2) and appending to them (tier 4), which every answer shares."""

    def __init__(self, settings: SlackSettings, style: StreamStyle) -> None:
        self.mode: Streaming = settings.streaming
        self.style, self.interval_s, self.limit = style, settings.stream_interval_s, settings.stream_limit
        self.starts = EditBudget(*settings.start_budget)
        self.appends = EditBudget(*settings.append_budget)
        self.off_reason: str | None = None  # auto: Slack refused streaming for good (e.g. unknown_method)
        self.status_errors: set[str] = set()  # setStatus errors logged once

    def __repr__(self) -> str:
        return f"<NativeStreaming {self.mode}{' off: ' + self.off_reason if self.off_reason else ''}>"

    @property
    def on(self) -> bool:
        return self.mode != "edits" and self.off_reason is None

    def answer(self, thread: SlackThread, *, user: str, team: str | None, dm: bool) -> NativeStream | None:
        """A native stream for one answer in ``thread`` to ``user`` (the asker), or None: streaming is off, or
        there is no team to name as the recipient's (Slack requires both outside DMs)."""
        if not self.on or (team is None and not dm):
            return None
        return NativeStream(self, thread, user=user, team=team)

    def may_start(self) -> bool:
        return self.on and self.starts.try_acquire() is not None

    def refused(self, method: str, error: BaseException) -> None:
        """Slack refused ``method``: a 429 holds every start (or append) back for its Retry-After; a refusal that
        will not change turns SLACK_STREAMING=auto off."""
        wait = retry_after(error)
        if wait is not None:
            (self.appends if method == "chat.appendStream" else self.starts).pause(wait)
            return
        code = api_error(error)
        if self.mode == "auto" and method == "chat.startStream" and code in PERMANENT_REFUSALS:
            self.off_reason = code
            log.warning("Slack: chat.startStream refused (%s): answers stream by edits from now on "
                        "(SLACK_STREAMING=auto)", code)


class ThreadStatus:
    """The status line under a thread (``assistant.threads.setStatus``): "engbot is thinking…". Its failures never
    reach the answer: they are logged (each kind once at info, then at debug)."""

    def __init__(self, thread: SlackThread, errors: set[str]) -> None:
        self.thread, self.errors = thread, errors
        self.shown: tuple[str, str | None] = ("", None)

    async def show(self, status: str, detail: str | None = None) -> None:
        if (status, detail) == self.shown:
            return
        try:
            await self.thread.client.assistant_threads_setStatus(
                channel_id=self.thread.channel, thread_ts=self.thread.thread_ts, status=status,
                loading_messages=[detail] if detail else None)
            self.shown = (status, detail)
        except Exception as exc:
            kind = api_error(exc) or type(exc).__name__
            level = logging.DEBUG if kind in self.errors else logging.INFO
            self.errors.add(kind)
            log.log(level, "Slack: could not set the thread's status (%s); the answer goes on", describe_error(exc))

    async def clear(self) -> None:
        if self.shown[0]:
            await self.show("")


@dataclass(frozen=True, slots=True)
class _Edits:
    """Go on with edits; ``pending``: an event read already."""

    pending: Event | None = None


class NativeStream:
    """One answer streamed natively (a ``bots.stream.AnswerStreamer``); see the module docstring."""

    def __init__(self, streaming: NativeStreaming, thread: SlackThread, *, user: str, team: str | None) -> None:
        self.streaming, self.thread, self.user, self.team = streaming, thread, user, team
        self.client = thread.client
        self.status = ThreadStatus(thread, streaming.status_errors)
        self.interval_s, self.limit = streaming.interval_s, streaming.limit
        self.room = streaming.limit - 4  # (a code block cut at the limit is closed with a fence)
        self.text = ""  # model text of the current message (shown or to show)
        self.sent = 0  # how much of it the stream holds
        self.ts: str | None = None  # the current message, once the stream made it
        self.live = False  # the stream takes more text (not stopped, by us, Slack or the user)
        self.abandoned = False  # its stop failed in a way that leaves it streaming: it cannot be edited
        self.last_append = self.retry_at = 0.0
        self.held_status: tuple[str, str | None] | None = None
        self.last_status = 0.0
        self.handle: JobHandle | None = None
        self.chain = MessageChain([], [])
        self.controls: AnswerControls = NO_CONTROLS
        self.failure: Callable[[Failed], str] = lambda event: ""
        self.stop_job: Callable[[], None] = lambda: None

    async def run(self, handle: JobHandle, chain: MessageChain, *, controls: AnswerControls,
                  failure: Callable[[Failed], str], stop: Callable[[], None]) -> Done | Failed:
        self.handle, self.chain, self.controls, self.failure, self.stop_job = handle, chain, controls, failure, stop
        try:
            return await self._run(handle)
        except Exception:
            await self.status.clear()  # (the answer flow tells the user; the status must not say "thinking" on)
            raise

    async def _run(self, handle: JobHandle) -> Done | Failed:
        await self._want_status(handle.position, handle.eta_s)
        events = aiter(handle)
        upcoming: asyncio.Future[Event] | None = None
        outcome: Done | Failed | _Edits | None = None
        try:
            while outcome is None:
                if upcoming is None:
                    upcoming = asyncio.ensure_future(anext(events))
                done, _ = await asyncio.wait({upcoming}, timeout=self._wake_in())
                if done:
                    event, upcoming = upcoming.result(), None
                    outcome = await self._on(event)
                else:
                    outcome = await self._tick()
        finally:
            read = await _take_back(upcoming)
        if isinstance(outcome, _Edits):
            return await self._edits(outcome.pending or read)
        await self.status.clear()
        return outcome

    # ---- events ----

    async def _on(self, event: Event) -> Done | Failed | _Edits | None:
        if isinstance(event, TextPiece):
            self.text += event.text
            if self.ts is None:
                return await self._start() if self._ready().strip() else None
            if not self.live:
                return None  # (stopped by the user: the job's end comes next)
            if len(self.text) > self.room:
                return await self._next_message()
            if time.monotonic() >= max(self.last_append + self.interval_s, self.retry_at):
                return await self._append()
            return None
        if isinstance(event, Done | Failed):
            return await self._end(event)
        if isinstance(event, Started) and event.attempt > 1 and (self.text or self.chain.ids):
            return _Edits(event)  # QUEUE_BACKEND=redis: another host answers from the start
        if self.ts is None and not self.chain.ids:
            if isinstance(event, Queued):
                await self._want_status(event.position, event.eta_s)
            elif isinstance(event, Started):
                await self._want_status(0, None)
        return None

    async def _tick(self) -> Done | Failed | _Edits | None:
        """The interval passed with something held back: a status, or text to append."""
        now = time.monotonic()
        if self.held_status is not None and now >= self.last_status + self.interval_s:
            held, self.held_status = self.held_status, None
            self.last_status = now
            await self.status.show(*held)
        if self.live and self._ready() and now >= max(self.last_append + self.interval_s, self.retry_at):
            return await self._append()
        return None

    def _wake_in(self) -> float | None:
        due = []
        if self.held_status is not None:
            due.append(self.last_status + self.interval_s)
        if self.live and self._ready():
            due.append(max(self.last_append + self.interval_s, self.retry_at))
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _ready(self, *, final: bool = False) -> str:
        """The text the stream does not hold yet, less an unfinished ``<...`` (unless it is the end)."""
        rest = self.text[self.sent:min(len(self.text), self.room)]
        return rest if final else rest[:len(rest) - held_back(rest)]

    async def _want_status(self, position: int, eta_s: float | None) -> None:
        wanted = (Messages.STATUS_WAITING, queued_status(position, eta_s)) if position else \
            (Messages.STATUS_THINKING, None)
        if time.monotonic() - self.last_status >= self.interval_s:
            self.held_status, self.last_status = None, time.monotonic()
            await self.status.show(*wanted)
        else:
            self.held_status = wanted

    # ---- the stream ----

    async def _start(self, *, final: bool = False) -> _Edits | None:
        """A new message, streamed, with the text so far."""
        first = self._ready(final=final)
        if not self.streaming.may_start():
            log.debug("Slack: no stream started now (start budget used up, or paused after a 429): this answer "
                      "streams by edits")
            return _Edits()
        try:
            response = await self.client.chat_startStream(
                channel=self.thread.channel, thread_ts=self.thread.thread_ts, markdown_text=defuse_markdown(first),
                recipient_user_id=self.user, recipient_team_id=self.team)
            ts = response.get("ts")
            if not isinstance(ts, str) or not ts:
                raise ValueError("chat.startStream answered without a ts")
        except Exception as exc:
            self.streaming.refused("chat.startStream", exc)
            log.info("Slack: chat.startStream failed (%s): this answer streams by edits", describe_error(exc))
            return _Edits()
        self.ts, self.live, self.sent, self.last_append = ts, True, len(first), time.monotonic()
        self.held_status = None
        self.chain.ids.append(ts)
        self.chain.shown.append(Reply(""))
        self.thread.posted.put((self.thread.channel, ts), True)
        await self.status.clear()
        return None

    async def _append(self) -> _Edits | None:
        assert self.ts is not None
        chunk = self._ready()
        if not chunk:
            return None
        turn = self.streaming.appends.try_acquire()
        if turn is None:
            self.retry_at = time.monotonic() + self.interval_s  # the workspace's appends are used up: more later
            return None
        try:
            await self.client.chat_appendStream(channel=self.thread.channel, ts=self.ts,
                                                markdown_text=defuse_markdown(chunk))
        except Exception as exc:
            return self._append_failed(exc)
        finally:
            self.streaming.appends.finished(turn)
        self.sent += len(chunk)
        self.last_append = time.monotonic()
        return None

    def _append_failed(self, error: BaseException) -> _Edits | None:
        """An append failed: retry later (429), stop the job (the user's stop button), or go on by edits."""
        code = api_error(error)
        if code == "stopped_by_user":
            self._user_stopped()
            return None
        self.streaming.refused("chat.appendStream", error)
        if (wait := retry_after(error)) is not None:
            self.retry_at = time.monotonic() + max(wait, self.interval_s)
            return None
        if code == "message_not_in_streaming_state":
            self.live = False  # (Slack ended it: nothing to stop, its message can be edited)
        log.info("Slack: chat.appendStream failed (%s): this answer goes on by edits", describe_error(error))
        return _Edits()

    def _stop_failed(self, error: BaseException) -> None:
        """A stop failed. A message that is no longer streaming can be edited; one whose stream is in a state we
        do not know (rate limited, a conflict, an error) is given up: the answer goes on in a new message."""
        code = api_error(error)
        self.streaming.refused("chat.stopStream", error)
        self.live = False
        if code == "stopped_by_user":
            self._user_stopped()
        elif code != "message_not_in_streaming_state":
            self.abandoned = True
        log.info("Slack: chat.stopStream failed (%s): this answer goes on by edits", describe_error(error))

    def _user_stopped(self) -> None:
        self.live = False
        log.info("Slack: the asker stopped the answer in %s %s", self.thread.channel, self.thread.thread_ts)
        self.stop_job()  # its end (cancelled) comes as the job's last event

    async def _next_message(self) -> _Edits | None:
        """The message holds ``limit`` characters: stop it at a good place and go on in a new one."""
        assert self.ts is not None
        head, rest = stream_cut(self.text, self.sent, self.limit)
        try:
            await self.client.chat_stopStream(channel=self.thread.channel, ts=self.ts,
                                              markdown_text=defuse_markdown(head) or None)
        except Exception as exc:
            self._stop_failed(exc)
            return _Edits()
        self.chain.shown[-1] = Reply(self.streaming.style.render((self.text[:self.sent] + head).rstrip()))
        self.text, self.sent, self.ts, self.live = rest, 0, None, False
        return await self._start() if self._ready().strip() else None

    async def _end(self, event: Done | Failed) -> Done | Failed | _Edits:
        """The job ended: stop the stream with the rest of the text and the final controls (or, with no text at
        all, post the final reply)."""
        note = "\n\n" + self.failure(event) if isinstance(event, Failed) else ""
        if self.ts is None and not self.text.strip() and not self.chain.ids:
            text = self.failure(event) if isinstance(event, Failed) else Messages.EMPTY_ANSWER
            reply = Reply(text, self.controls.final(event))
            self.chain.ids.append(await self.thread.post(reply))
            self.chain.shown.append(reply)
            return event
        while True:
            if self.ts is None and (not self.text.strip() or await self._start(final=True) is not None):
                return _Edits(event)
            if not self.live:
                return _Edits(event)
            if len(self.text) <= self.room:
                break
            if await self._next_message() is not None:
                return _Edits(event)
        assert self.ts is not None
        controls = self.controls.final(event)
        try:
            await self.client.chat_stopStream(
                channel=self.thread.channel, ts=self.ts,
                markdown_text=defuse_markdown(self._ready(final=True) + note) or None,
                blocks=control_blocks(controls) or None)
        except Exception as exc:
            self._stop_failed(exc)
            return _Edits(event)
        self.live = False
        shown = self.streaming.style.render(self.text.rstrip()) + self.streaming.style.render(note)
        self.chain.shown[-1], self.chain.tail = Reply(shown, controls), self.text
        # a message longer than an edit may be: a Continue goes on in a new message
        self.chain.closed = len(shown) + len(Messages.CURSOR) > self.streaming.style.limit
        if controls:
            self.thread.with_controls.put((self.thread.channel, self.ts), True)
        return event

    # ---- by edits, from here on ----

    async def _edits(self, pending: Event | None) -> Done | Failed:
        """Go on as ``bots.stream`` does: edits of the streamed message, or of a new one."""
        assert self.handle is not None
        chain, style = self.chain, self.streaming.style
        if self.ts is not None and self.live:
            try:  # end the stream, so its message can be edited
                await self.client.chat_stopStream(channel=self.thread.channel, ts=self.ts)
                self.live = False
            except Exception as exc:
                self._stop_failed(exc)
        if self.ts is not None and self.abandoned:  # its stream is stuck: the answer goes on in a new message
            try:
                await self.thread.delete(self.ts)
            except Exception as exc:
                log.info("Slack: could not delete the stuck stream %s (%s)", self.ts, describe_error(exc))
            del self.chain.ids[-1], self.chain.shown[-1]
            self.ts = None
        if self.ts is None:
            full, _, shown = paginate(self.text, style.limit, style.render, reserve=len(Messages.CURSOR))
            text = shown + Messages.CURSOR if shown.strip() and not full else Messages.THINKING
            placeholder = Reply(text, self.controls.live())
            chain.ids.append(await self.thread.post(placeholder))
            chain.shown.append(placeholder)
            if pending is None and text == Messages.THINKING and self.text.strip():
                pending = TextPiece("")  # shows the text so far at once
        else:
            chain.shown[-1] = Reply(style.render(self.text[:self.sent].rstrip()))
            if pending is None and self.text[self.sent:].strip():
                pending = TextPiece("")
        chain.tail, chain.closed = self.text, False
        self.held_status = None
        await self.status.clear()
        return await stream_reply(self.handle, self.thread, chain, style, controls=self.controls,
                                  failure=self.failure, pending=pending)


async def _take_back(upcoming: asyncio.Future[Event] | None) -> Event | None:
    """Stop waiting for the next event; the event, if it had come already (it must not be lost)."""
    if upcoming is None:
        return None
    if not upcoming.done():
        upcoming.cancel()
        await asyncio.wait({upcoming})
    if upcoming.cancelled() or upcoming.exception() is not None:
        return None
    return upcoming.result()
