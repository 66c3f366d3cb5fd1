"""The one answer flow every platform shares: rate limit, job, submit, placeholder, stream, one final reply; and
what the buttons under an answer do (Stop, Regenerate, Continue, feedback).

    flow = AnswerFlow("slack", submitter, limiter, style)
    await flow.answer(Question(user="U1", source="C1:1700000000.000100", turns=read_thread), target)
    await flow.press(Press(Action.STOP, job_id, user="U1"), tell=ephemeral_reply)

An adapter decides whether an event is a question (its ``events`` module), then hands it here with an
``AnswerTarget`` that knows where replies go. Every accepted question gets exactly one outcome: a notice (rate
limited, busy, unavailable), or an answer streamed into its placeholder that ends with one final edit, or, when
the platform fails us midway, a last attempt to say so. A duplicate delivery gets nothing. Every press gets
exactly one outcome too: what it asked for, or a word to the presser alone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bots.answers import Answer, AnswerButtons, Answers
from bots.limits import RateLimiter
from bots.messages import Messages, failure_text, queued_text
from bots.metrics import feedback_counter
from bots.notes import notes_block
from bots.presses import FEEDBACK, Action, Press, Refuse, judge
from bots.sink import Accepting, AnswerTarget, Opened, Reply
from bots.stream import AnswerControls, MessageChain, StreamStyle, restart, stream_reply
from bots.thinking import KNOWN_TAGS, ShowThinking, hide_thinking
from engine.api import JobHandle, Submitter
from engine.errors import DuplicateJob, EngineClosed, QueueFull
from engine.types import Done, Failed, FailureKind, GenParams, Job, Turn

Tell = Callable[[str], Awaitable[None]]  # a word to one person only (an ephemeral message)


@dataclass(frozen=True, slots=True)
class Asked:
    """What ``Question.turns`` may return instead of the bare turns: the conversation, and notes shown above the
    answer (a file that was cut or skipped)."""

    turns: tuple[Turn, ...]
    notes: tuple[str, ...] = ()


class Unanswerable(Exception):
    """Raised by ``Question.turns`` when there is nothing to answer (say, only files, none readable): ``str(exc)``
    is the notice the asker gets instead."""


@dataclass(frozen=True, slots=True)
class Question:
    """One question to answer.

    ``source`` names what is answered, uniquely on the platform (``C0123:1700000000.000100``, ``message:42``):
    with ``attempt`` it makes the job's dedup key, so a platform's second delivery of one event is answered once,
    and a second attempt at the same question (regenerate) is a new job. ``turns`` reads the conversation (a
    thread's history, the question's files): it runs only once the rate limit let the question through, and may
    return ``Asked`` (with notes) or raise ``Unanswerable``. ``system_prompt`` and ``params`` are the channel's
    (``bots.channels``; None: the engine's own), ``thinking`` how a reasoning model's thinking is shown.
    """

    user: str  # who asks: the rate limit's key, the one who may steer the answer
    source: str
    turns: Callable[[], Awaitable[tuple[Turn, ...] | Asked]]
    attempt: int = 1
    params: GenParams | None = None
    system_prompt: str | None = None
    thinking: ShowThinking = "collapsed"
    model: str | None = None  # which of the engine's models answers (a channel's setting); None: the default

    def dedup_key(self, platform: str) -> str:
        return dedup_key(platform, self.source, self.attempt)


def dedup_key(platform: str, source: str, attempt: int) -> str:
    key = f"{platform}:{source}"
    return key if attempt == 1 else f"{key}#{attempt}"


class AnswerFlow:
    """Answers questions of one platform with ``submitter``. With ``controls=None`` (the default) every answer
    gets its buttons and is kept in ``answers`` for their presses; a function instead gives each answer the
    controls it returns (and presses find nothing)."""

    def __init__(self, platform: str, submitter: Submitter, limiter: RateLimiter, style: StreamStyle, *,
                 controls: Callable[[JobHandle], AnswerControls] | None = None,
                 mention: Callable[[str], str] = lambda user: user, answers: Answers | None = None,
                 thinking_tags: tuple[tuple[str, str], ...] = KNOWN_TAGS) -> None:
        self.platform, self.submitter, self.limiter, self.style = platform, submitter, limiter, style
        self.controls, self.mention, self.thinking_tags = controls, mention, thinking_tags
        self.answers = answers if answers is not None else Answers()
        self.log = logging.getLogger(f"engbot.{platform}")  # the platform's own log: its lines read as one story

    # ---- a question ----

    async def answer(self, question: Question, target: AnswerTarget) -> Done | Failed | None:
        """Answer ``question`` at ``target``; the final event, or None when no answer was started (a notice was
        given instead, or the question was a duplicate). Raises only what the target raised while accepting the
        question or giving a notice (the caller logs it)."""
        if not await self.admit(question.user, target.notice):
            return None
        if isinstance(target, Accepting):
            await target.accept()  # before anything that can wait: reading the thread, a submit over Redis
        try:
            read = await question.turns()
            asked = read if isinstance(read, Asked) else Asked(read)
            turns = asked.turns
            job = Job(turns=turns, params=question.params, platform=self.platform,
                      dedup_key=question.dedup_key(self.platform), system_prompt=question.system_prompt,
                      user=f"{self.platform}:{question.user}", model=question.model)
        except Unanswerable as exc:
            await target.notice(str(exc))
            return None
        except Exception:
            self.log.exception("the conversation of a question from user %s could not be read", question.user)
            await self._say_failed(target, None, None)
            return None
        submitted = await self.submit(job, target.notice)
        if submitted is None:
            return None
        handle = hide_thinking(submitted, question.thinking, self.thinking_tags, preamble=notes_block(asked.notes))
        opened: Opened | None = None
        chain: MessageChain | None = None
        record: Answer | None = None
        try:
            if self.controls is not None:
                controls = self.controls(handle)
            else:
                record = Answer(question.user, question.source, turns, question.system_prompt, job.id,
                                attempt=question.attempt, handle=handle, params=question.params,
                                thinking=question.thinking, notes=asked.notes, model=question.model)
                controls = AnswerButtons(record)
            opened = await target.open(Reply(_placeholder(handle), controls.live()))
            chain = MessageChain.of(opened.message_id, opened.shown) if opened.message_id else MessageChain([], [])
            if record is not None:
                record.sink, record.chain = opened.sink, chain
                self.answers.add(record)
            if opened.stream is not None:  # the platform's own streaming
                final = await opened.stream.run(handle, chain, controls=controls, failure=self.failure_for(record),
                                                stop=lambda: self._stopped_natively(job.id))
            else:
                final = await stream_reply(handle, opened.sink, chain, self.style, controls=controls,
                                           failure=self.failure_for(record))
            if record is not None:
                record.ended(final)
            return final
        except Exception:
            self.log.exception("answering job %s failed", job.id[:8])
            await self._say_failed(target, opened, chain)
            return None
        finally:
            handle.cancel()  # no-op once answered; stops the generation when the answer could not be delivered

    # ---- a press on an answer's button ----

    async def press(self, press: Press, tell: Tell) -> None:
        """Do what a press asks, or tell the presser why not. The platform has acknowledged the press already;
        this may take as long as an answer (Regenerate and Continue stream one)."""
        record = self.answers.get(press.job_id)
        if record is not None and press.job_id != record.job_id:  # a button of a version since replaced
            await tell(Messages.PRESS_ENDED)
            return
        verdict = judge(press, record.state() if record is not None else None)
        if isinstance(verdict, Refuse):
            self.log.info("a %s press on job %s by user %s did nothing: %s", press.action, press.job_id[:8],
                          press.user, verdict.text)
            await tell(verdict.text)
            return
        assert record is not None
        if press.action is Action.STOP:
            record.stopped_by = press.user
            self.log.info("job %s stopped by user %s", record.job_id[:8], press.user)
            if record.on_stop is not None:
                record.on_stop()
            else:
                self.submitter.cancel(record.job_id)  # the answer's own stream shows it, with the text so far
        elif press.action in FEEDBACK:
            if press.user in record.voted:
                await tell(Messages.VOTED)
                return
            record.voted.add(press.user)
            feedback_counter(self.submitter.metrics.registry).labels(self.platform, press.action).inc()
            self.log.info("feedback %s on job %s", press.action, press.job_id[:8])  # (never the text)
            await tell(Messages.THANKS)
        else:
            record.busy = True
            try:
                await self._again(record, press, tell)
            finally:
                record.busy = False

    async def _again(self, record: Answer, press: Press, tell: Tell) -> None:
        """Regenerate (another answer instead of this one) or Continue (go on where it was cut), in the same
        messages, as a new job that obeys the rate limit and the queue."""
        if not await self.admit(press.user, tell):
            return
        attempt = record.attempt + 1
        continuing = press.action is Action.CONTINUE
        job = Job(turns=record.turns, params=record.params, platform=self.platform,
                  system_prompt=record.system_prompt, dedup_key=dedup_key(self.platform, record.source, attempt),
                  user=f"{self.platform}:{record.asker}", prefill=record.text if continuing else "",
                  resample=not continuing, model=record.model)
        submitted = await self.submit(job, tell)
        if submitted is None:
            return
        handle = hide_thinking(submitted, record.thinking, self.thinking_tags,
                               preamble="" if continuing else notes_block(record.notes))
        self.log.info("job %s: %s of job %s by user %s", job.id[:8], press.action, record.job_id[:8], press.user)
        record.job_id, record.attempt, record.handle = job.id, attempt, handle
        record.final = record.stopped_by = None
        self.answers.add(record)
        record.busy = False  # (the new job runs: Stop may be pressed on it now)
        controls = AnswerButtons(record)
        sink, chain = record.sink, record.chain
        assert sink is not None
        try:
            if continuing and chain.closed:  # the last message is full: go on in a new one
                placeholder = Reply(_placeholder(handle), controls.live())
                chain.ids.append(await sink.post(placeholder))
                chain.shown.append(placeholder)
                chain.tail, chain.closed = "", False
            elif continuing:  # the text stays; a Stop button and a cursor say it goes on
                going_on = Reply(chain.shown[-1].text + Messages.CURSOR, controls.live())
                await sink.edit(chain.ids[-1], going_on)
                chain.shown[-1] = going_on
            else:
                record.text = ""
                await restart(sink, chain)
                placeholder = Reply(_placeholder(handle), controls.live())
                await sink.edit(chain.ids[0], placeholder)
                chain.shown[0] = placeholder
            final = await stream_reply(handle, sink, chain, self.style, controls=controls,
                                       failure=self.failure_for(record))
            record.ended(final)
        except Exception:
            self.log.exception("answering job %s failed", job.id[:8])
        finally:
            handle.cancel()

    # ---- shared steps ----

    async def admit(self, user: str, tell: Tell) -> bool:
        """Whether ``user`` is within the rate limit; if not, ``tell`` them how long to wait."""
        wait = self.limiter.check(user)
        if wait:
            self.log.info("user %s is over the rate limit", user)
            await tell(Messages.RATE_LIMITED.format(seconds=math.ceil(wait)))
        return not wait

    async def submit(self, job: Job, tell: Tell) -> JobHandle | None:
        """Submit ``job``; None (and ``tell`` says why: busy, unavailable) when it was not taken."""
        try:
            return await self.submitter.submit(job)
        except DuplicateJob:
            return None  # the platform sent the event twice: the first copy is being answered
        except QueueFull:
            await tell(Messages.BUSY)
        except EngineClosed:
            await tell(Messages.UNAVAILABLE)
        except Exception:
            self.log.exception("job %s could not be submitted", job.id[:8])
            await tell(Messages.FAILED)
        return None

    def failure_for(self, record: Answer | None) -> Callable[[Failed], str]:
        """The note a failed answer ends with (a Stop names who pressed it)."""
        def text(event: Failed) -> str:
            if event.kind is FailureKind.CANCELLED and record is not None and record.stopped_by is not None:
                return Messages.STOPPED_BY.format(who=self.mention(record.stopped_by))
            return failure_text(event)

        return text

    def _stopped_natively(self, job_id: str) -> None:
        """The platform's own stop button (not ours) was pressed on an answer: the job stops."""
        self.log.info("job %s stopped by its asker (the platform's stop button)", job_id[:8])
        self.submitter.cancel(job_id)

    async def _say_failed(self, target: AnswerTarget, opened: Opened | None, chain: MessageChain | None) -> None:
        """The platform failed us midway: one last try to tell the user, in the answer's last message if there is
        one."""
        try:
            if opened is not None and chain is not None and chain.ids:
                await opened.sink.edit(chain.ids[-1], Reply(Messages.FAILED))
            else:
                await target.notice(Messages.FAILED)
        except Exception as exc:
            self.log.warning("could not tell the user that the answer failed either: %s: %s", type(exc).__name__,
                             exc)


def _placeholder(handle: JobHandle) -> str:
    return queued_text(handle.position, handle.eta_s) if handle.position else Messages.THINKING
