"""The one answer flow every platform shares: rate limit, job, submit, placeholder, stream, one final reply.

    flow = AnswerFlow("slack", submitter, limiter, style)
    await flow.answer(Question(user="U1", source="C1:1700000000.000100", turns=read_thread), target)

An adapter decides whether an event is a question (its ``events`` module), then hands it here with an
``AnswerTarget`` that knows where replies go. Every accepted question gets exactly one outcome: a notice (rate
limited, busy, unavailable), or an answer streamed into its placeholder that ends with one final edit, or, when
the platform fails us midway, a last attempt to say so. A duplicate delivery gets nothing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bots.limits import RateLimiter
from bots.messages import Messages
from bots.sink import AnswerTarget, Opened, Reply
from bots.stream import NO_CONTROLS, AnswerControls, StreamStyle, stream_reply
from engine.api import JobHandle, Submitter
from engine.errors import DuplicateJob, EngineClosed, QueueFull
from engine.types import Done, Failed, GenParams, Job, Turn


@dataclass(frozen=True, slots=True)
class Question:
    """One question to answer.

    ``source`` names what is answered, uniquely on the platform (``C0123:1700000000.000100``, ``message:42``):
    with ``attempt`` it makes the job's dedup key, so a platform's second delivery of one event is answered once,
    and a second attempt at the same question (regenerate) is a new job. ``turns`` reads the conversation (a
    thread's history): it runs only once the rate limit let the question through.
    """

    user: str  # who asks: the rate limit's key
    source: str
    turns: Callable[[], Awaitable[tuple[Turn, ...]]]
    attempt: int = 1
    params: GenParams | None = None
    system_prompt: str | None = None

    def dedup_key(self, platform: str) -> str:
        key = f"{platform}:{self.source}"
        return key if self.attempt == 1 else f"{key}#{self.attempt}"


class AnswerFlow:
    """Answers questions of one platform with ``submitter``."""

    def __init__(self, platform: str, submitter: Submitter, limiter: RateLimiter, style: StreamStyle, *,
                 controls: Callable[[JobHandle], AnswerControls] = lambda handle: NO_CONTROLS) -> None:
        self.platform, self.submitter, self.limiter, self.style = platform, submitter, limiter, style
        self.controls = controls
        self.log = logging.getLogger(f"engbot.{platform}")  # the platform's own log: its lines read as one story

    async def answer(self, question: Question, target: AnswerTarget) -> Done | Failed | None:
        """Answer ``question`` at ``target``; the final event, or None when no answer was started (a notice was
        given instead, or the question was a duplicate). Raises only what the target raised while giving a
        notice (the caller logs it)."""
        wait = self.limiter.check(question.user)
        if wait:
            self.log.info("user %s is over the rate limit", question.user)
            await target.notice(Messages.RATE_LIMITED.format(seconds=math.ceil(wait)))
            return None
        try:
            job = Job(turns=await question.turns(), params=question.params, platform=self.platform,
                      dedup_key=question.dedup_key(self.platform), system_prompt=question.system_prompt)
            handle = await self.submitter.submit(job)
        except DuplicateJob:
            return None  # the platform sent the event twice: the first copy is being answered
        except QueueFull:
            await target.notice(Messages.BUSY)
            return None
        except EngineClosed:
            await target.notice(Messages.UNAVAILABLE)
            return None
        except Exception:
            self.log.exception("a question from user %s could not be submitted", question.user)
            await self._say_failed(target, None)
            return None
        controls = self.controls(handle)
        opened: Opened | None = None
        try:
            text = Messages.QUEUED.format(position=handle.position) if handle.position else Messages.THINKING
            opened = await target.open(Reply(text, controls.live()))
            return await stream_reply(handle, opened.sink, opened.message_id, self.style, placeholder=opened.shown,
                                      controls=controls)
        except Exception:
            self.log.exception("answering job %s failed", job.id[:8])
            await self._say_failed(target, opened)
            return None
        finally:
            handle.cancel()  # no-op once answered; stops the generation when the answer could not be delivered

    async def _say_failed(self, target: AnswerTarget, opened: Opened | None) -> None:
        """The platform failed us midway: one last try to tell the user, in the placeholder if there is one."""
        try:
            if opened is not None:
                await opened.sink.edit(opened.message_id, Reply(Messages.FAILED))
            else:
                await target.notice(Messages.FAILED)
        except Exception as exc:
            self.log.warning("could not tell the user that the answer failed either: %s: %s", type(exc).__name__,
                             exc)
