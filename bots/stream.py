"""Streaming an answer into the bot's messages: a placeholder edited about once a second, continued in new
messages past the platform's limit, ended by exactly one final edit."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bots.messages import EXPECTED_FAILURES, Messages, failure_text
from bots.sink import Control, Reply, Sink
from bots.text import paginate
from engine.api import JobHandle
from engine.types import Done, Failed, Queued, Started, TextPiece

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


async def stream_reply(handle: JobHandle, sink: Sink, message_id: str, style: StreamStyle, *,
                       placeholder: Reply | None = None, controls: AnswerControls = NO_CONTROLS) -> Done | Failed:
    """Stream a job's answer into ``message_id`` (a placeholder), editing at most once per interval and
    continuing in new messages when the rendered text would pass ``style.limit``. Ends with exactly one final
    edit; returns the final event. Text is rendered only when it is about to be sent.

    ``placeholder`` is what the message shows already, so an event that would show the same (such as the queue
    position it was posted with) costs no edit. The newest message carries ``controls.live()`` while the answer
    runs and ``controls.final(event)`` once it ended; earlier messages of a long answer carry none.
    """
    current = ""  # model text of the current message (ids[-1]), not rendered
    ids = [message_id]
    shown = [placeholder or Reply("")]  # what each message shows now
    last_edit = 0.0

    async def show(reply: Reply, *, force: bool = False) -> None:
        nonlocal last_edit
        now = time.monotonic()
        if reply == shown[-1] or (not force and now - last_edit < style.edit_interval_s):
            return
        last_edit = now  # a failed edit waits its interval too
        try:
            await sink.edit(ids[-1], reply)
            shown[-1] = reply
        except Exception:
            log.exception("editing a reply failed")
            if force:  # the final text must arrive: post it instead
                await post(reply)

    async def post(reply: Reply) -> None:
        nonlocal last_edit
        ids.append(await sink.post(reply))
        shown.append(reply)
        last_edit = time.monotonic()

    async def publish(suffix: str, empty: str, *, final: Done | Failed | None) -> None:
        """Show ``current`` rendered, then ``suffix``; continue in new messages while that is over the limit."""
        nonlocal current
        full, current, rendered = paginate(current, style.limit, style.render, reserve=len(suffix))
        text = rendered + suffix if rendered.strip() else empty
        last = Reply(text, controls.live() if final is None else controls.final(final))
        if not full:
            await show(last, force=final is not None)
            return
        await show(Reply(full[0]), force=True)  # the current message is full: it gets its final text
        for head in full[1:]:
            await post(Reply(head))
        await post(last)

    async def restart() -> None:
        """Another attempt answers from the start: one clean reply again, in the first message."""
        nonlocal current
        for extra in ids[1:]:
            await retract(sink, extra)
        del ids[1:], shown[1:]
        current, shown[0] = "", Reply("")
        await show(Reply(Messages.THINKING, controls.live()), force=True)

    async for event in handle:
        if isinstance(event, TextPiece):
            current += event.text
            if current.strip() and time.monotonic() - last_edit >= style.edit_interval_s:
                await publish(Messages.CURSOR, Messages.THINKING, final=None)
        elif isinstance(event, Started) and event.attempt > 1 and (current or len(ids) > 1):
            # QUEUE_BACKEND=redis: the host died, another one answers from the start
            await restart()
        elif isinstance(event, Queued):
            if not current and len(ids) == 1:
                await show(Reply(Messages.QUEUED.format(position=event.position), controls.live()))
        elif isinstance(event, Done):
            if len(ids) > 1 and not current.strip():
                # the answer ended with the message before: nothing came for the one opened for the rest
                await retract(sink, ids.pop())
                shown.pop()
                if controls.final(event):
                    await show(Reply(shown[-1].text, controls.final(event)), force=True)
            else:
                await publish("", Messages.EMPTY_ANSWER, final=event)
            return event
        elif isinstance(event, Failed):
            if event.kind not in EXPECTED_FAILURES:
                log.warning("job %s failed: %s: %s", handle.job.id[:8], event.kind, event.reason)
            note = failure_text(event)
            await publish("\n\n" + note, note, final=event)
            return event
    raise AssertionError("unreachable: every job ends with Done or Failed")


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
