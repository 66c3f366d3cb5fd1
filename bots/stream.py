"""Streaming an answer into the bot's messages: a placeholder edited about once a second, continued in new
messages past the platform's limit, ended by exactly one final edit."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bots.messages import EXPECTED_FAILURES, Messages, failure_text, queued_text
from bots.sink import Control, Reply, Sink
from bots.text import paginate
from engine.api import JobHandle
from engine.types import Done, Event, Failed, Queued, Started, TextPiece

log = logging.getLogger("engbot.bots")


@dataclass(frozen=True, slots=True)
class StreamStyle:
    limit: int  # characters per message as sent: the rendered text, with the cursor or a failure note
    edit_interval_s: float = 1.0
    render: Callable[[str], str] = lambda text: text


class AnswerControls(Protocol):
    """The buttons an answer shows: ``live`` while it is queued or streaming, ``final`` once it ended."""

    def live(self) -> tuple[Control, ...]: ...

    def final(self, event: Done | Failed) -> tuple[Control, ...]: ...


class _NoControls:
    def live(self) -> tuple[Control, ...]:
        return ()

    def final(self, event: Done | Failed) -> tuple[Control, ...]:
        return ()


NO_CONTROLS: AnswerControls = _NoControls()


class AnswerStreamer(Protocol):
    """A platform's own way of streaming an answer (Slack's ``chat.startStream``), used by the answer flow instead
    of ``stream_reply`` when a target's ``open()`` offers one (``Opened.stream``). Same contract: read the job's
    events to the end, show the answer, end it with exactly one final state (``controls.final(event)`` under it,
    ``failure(event)`` as the note of a failed one), return the final event. It fills ``chain`` (empty when
    given) with the messages the answer is shown in and what they show, so Regenerate and Continue can edit them.
    ``stop()`` cancels the job (the platform's own stop button was pressed)."""

    async def run(self, handle: JobHandle, chain: MessageChain, *, controls: AnswerControls,
                  failure: Callable[[Failed], str], stop: Callable[[], None]) -> Done | Failed: ...


@dataclass(eq=False)
class MessageChain:
    """The messages one answer is shown in, oldest first, what each shows, and the model text (not rendered) of
    the last one. An answer continued later (Continue) goes on in the same chain."""

    ids: list[str]
    shown: list[Reply]
    tail: str = ""
    closed: bool = False  # the last message is full: what comes next goes into a new message

    @classmethod
    def of(cls, message_id: str, shown: Reply | None = None) -> MessageChain:
        return cls([message_id], [shown or Reply("")])


async def stream_reply(handle: JobHandle, sink: Sink, message_id: str | MessageChain, style: StreamStyle, *,
                       placeholder: Reply | None = None, controls: AnswerControls = NO_CONTROLS,
                       failure: Callable[[Failed], str] = failure_text, pending: Event | None = None) -> Done | Failed:
    """Stream a job's answer into ``message_id`` (a placeholder, or the chain of an answer to go on with),
    editing at most once per interval and continuing in new messages when the rendered text would pass
    ``style.limit``. Ends with exactly one final edit; returns the final event. Text is rendered only when it
    is about to be sent; what the interval held back (text, a new queue position) is sent once it has passed.

    ``placeholder`` is what the message shows already, so an event that would show the same (such as the queue
    position it was posted with) costs no edit. The newest message carries ``controls.live()`` while the answer
    runs and ``controls.final(event)`` once it ended; earlier messages of a long answer carry none. ``failure``
    gives the note a failed answer ends with. ``pending``: an event of the job read already (by a platform's own
    streaming that hands the rest of the answer over to edits), handled before the ones still to come.
    """
    chain = message_id if isinstance(message_id, MessageChain) else MessageChain.of(message_id, placeholder)
    return await _Stream(handle, sink, chain, style, controls, failure).run(pending)


class _Stream:
    def __init__(self, handle: JobHandle, sink: Sink, chain: MessageChain, style: StreamStyle,
                 controls: AnswerControls, failure: Callable[[Failed], str]) -> None:
        self.handle, self.sink, self.chain, self.style = handle, sink, chain, style
        self.controls, self.failure = controls, failure
        self.current = chain.tail  # model text of the current message (chain.ids[-1]), not rendered
        self.last_edit = 0.0
        self.held: Reply | None = None  # a queue position the interval held back
        self.text_held = False  # text arrived that the interval held back

    async def run(self, pending: Event | None = None) -> Done | Failed:
        while True:
            event: Event | None
            if pending is not None:  # (an event a streamer had taken when it handed the answer over)
                event, pending = pending, None
            else:
                event = self.handle.next_nowait()  # all that came while we edited first: one edit shows it all
            if event is None:
                wait = self._flush_in()
                if wait is not None and wait <= 0:
                    await self._flush()
                    continue
                event = await self.handle.next(wait)
                if event is None:  # the interval passed with something held back: show it now
                    await self._flush()
                    continue
            final = await self._on(event)
            if final is not None:
                if not self.chain.closed:
                    self.chain.tail = self.current
                return final

    def _flush_in(self) -> float | None:
        if self.held is None and not self.text_held:
            return None
        return max(0.0, self.last_edit + self.style.edit_interval_s - time.monotonic())

    async def _flush(self) -> None:
        if self.text_held:
            self.text_held = False
            await self._publish(Messages.CURSOR, Messages.THINKING, final=None)
        elif self.held is not None:
            held, self.held = self.held, None
            await self._show(held)

    async def _on(self, event: Event) -> Done | Failed | None:
        chain = self.chain
        if isinstance(event, TextPiece):
            self.current += event.text
            self.held = None
            if self.current.strip():
                self.text_held = True  # shown once the interval has passed and no more text is waiting
        elif isinstance(event, Started) and event.attempt > 1 and (self.current or len(chain.ids) > 1):
            # QUEUE_BACKEND=redis: the host died, another one answers from the start
            await self._restart()
        elif isinstance(event, Queued):
            if not self.current and len(chain.ids) == 1:
                await self._show(Reply(queued_text(event.position, event.eta_s), self.controls.live()), hold=True)
        elif isinstance(event, Done):
            if len(chain.ids) > 1 and not self.current.strip():
                # the answer ended with the message before: nothing came for the one opened for the rest
                await retract(self.sink, chain.ids.pop())
                chain.shown.pop()
                chain.closed = True
                if self.controls.final(event):
                    await self._show(Reply(chain.shown[-1].text, self.controls.final(event)), force=True)
            else:
                await self._publish("", Messages.EMPTY_ANSWER, final=event)
            return event
        elif isinstance(event, Failed):
            if event.kind not in EXPECTED_FAILURES:
                log.warning("job %s failed: %s: %s", self.handle.job.id[:8], event.kind, event.reason)
            note = self.failure(event)
            await self._publish("\n\n" + note, note, final=event)
            return event
        return None

    async def _show(self, reply: Reply, *, force: bool = False, hold: bool = False) -> None:
        """Edit the newest message to ``reply``, unless the interval since the last edit has not passed (then
        nothing, or with ``hold`` later); ``force`` edits anyway (a final text), and posts it if the edit fails."""
        now = time.monotonic()
        if reply == self.chain.shown[-1]:
            self.held = None
            return
        if not force and now - self.last_edit < self.style.edit_interval_s:
            if hold:
                self.held = reply
            return
        self.held = None
        self.last_edit = now  # a failed edit waits its interval too
        try:
            await self.sink.edit(self.chain.ids[-1], reply, final=force)
            self.chain.shown[-1] = reply
            # the interval counts from the edit's end: one that waited its turn in a workspace budget is followed
            # by the text that came meanwhile all at once, not by one edit per piece
            self.last_edit = time.monotonic()
        except Exception:
            log.exception("editing a reply failed")
            if force:  # the final text must arrive: post it instead
                await self._post(reply)

    async def _post(self, reply: Reply) -> None:
        self.chain.ids.append(await self.sink.post(reply))
        self.chain.shown.append(reply)
        self.last_edit = time.monotonic()

    async def _publish(self, suffix: str, empty: str, *, final: Done | Failed | None) -> None:
        """Show ``current`` rendered, then ``suffix``; continue in new messages while that is over the limit."""
        full, self.current, rendered = paginate(self.current, self.style.limit, self.style.render,
                                                reserve=len(suffix))
        text = rendered + suffix if rendered.strip() else empty
        last = Reply(text, self.controls.live() if final is None else self.controls.final(final))
        if not full:
            await self._show(last, force=final is not None)
            return
        await self._show(Reply(full[0]), force=True)  # the current message is full: it gets its final text
        for head in full[1:]:
            await self._post(Reply(head))
        await self._post(last)

    async def _restart(self) -> None:
        """Another attempt answers from the start: one clean reply again, in the first message."""
        await restart(self.sink, self.chain)
        self.current = ""
        await self._show(Reply(Messages.THINKING, self.controls.live()), force=True)


async def restart(sink: Sink, chain: MessageChain) -> None:
    """Empty an answer's chain for an answer from the start: its later messages are retracted, the first stays
    (its text is replaced by the next edit)."""
    for extra in chain.ids[1:]:
        await retract(sink, extra)
    del chain.ids[1:], chain.shown[1:]
    chain.shown[0], chain.tail, chain.closed = Reply(""), "", False


async def retract(sink: Sink, message_id: str) -> None:
    """Take back a message that belongs to an abandoned attempt: delete it, or failing that, say so in it."""
    try:
        await sink.delete(message_id)
        return
    except Exception as exc:
        log.info("could not delete message %s of an abandoned answer (%s): marking it instead", message_id, exc)
    try:
        await sink.edit(message_id, Reply(Messages.RETRACTED))
    except Exception:
        log.exception("marking message %s of an abandoned answer failed", message_id)
