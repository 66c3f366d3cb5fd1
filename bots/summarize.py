"""Summing up a whole thread ("Summarize thread": Slack's message shortcut, Discord's context-menu command).

A thread that fits the model's context is summarized by one job. A longer one is cut into parts
(``bots/summary.py``): each part is summarized by a job of its own, several at once (the batching engine decodes
them side by side), then the summaries are summarized, in rounds until one prompt holds them all. Every job goes
through the same submitter, queue and per-user fairness as a question; the request obeys the rate limit once. The
placeholder says how far it is ("summarizing 4 parts… (1 of 4 done)") and carries Stop, which cancels every part
running; the last summary streams into it like an answer, with the answer's buttons.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from bots.answer import AnswerFlow
from bots.answers import Answer, AnswerButtons
from bots.conversation import Said
from bots.messages import Messages, failure_text
from bots.presses import Action
from bots.sink import Accepting, AnswerTarget, Control, Opened, Reply
from bots.stream import MessageChain, stream_reply
from bots.summary import PROMPT_FRAME, combine_prompt, group, halve, part_prompt, split_parts, transcript
from bots.thinking import ShowThinking, hide_thinking, split_thinking
from bots.tokens import BYTES_PER_TOKEN, ContextBudget, estimate_tokens
from engine.api import JobHandle
from engine.errors import EngineClosed, QueueFull
from engine.types import Done, Failed, FailureKind, GenParams, Job, Turn

log = logging.getLogger("engbot.summaries")

PARALLEL = 6  # part jobs submitted at once (more wait in our own list, not in the shared queue)
MAX_ROUNDS = 6  # rounds of combining summaries (each at least halves them)
PART_TOKENS = 200  # the longest a part's summary may be
# The prompt of the last step (the whole thread, or all the summaries) streams into the placeholder as the answer
# and cannot be halved and retried: it is planned with this share of the budget, as token counts are estimates
# (digits and identifiers take more tokens a byte than prose).
FINAL_SHARE = (2, 3)


@dataclass(frozen=True, slots=True)
class SummaryRequest:
    """Summarize a thread for ``user``. ``read`` gives the thread's messages, oldest first; ``source`` names the
    thread (for the log and the answer's record)."""

    user: str
    source: str
    read: Callable[[], Awaitable[Sequence[Said]]]
    system_prompt: str
    params: GenParams
    budget: ContextBudget
    thinking: ShowThinking = "collapsed"
    model: str | None = None  # which of the engine's models summarizes (the channel's); None: the default


class _Piece:
    """Lines summarized by one job, and their summary once it is made."""

    __slots__ = ("lines", "summary")

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.summary: str | None = None


class _Stopped(Exception):
    pass


class _Ended(Exception):
    def __init__(self, event: Failed) -> None:
        super().__init__(event.reason)
        self.event = event


class Summaries:
    """Summaries of threads, through ``flow``'s submitter, rate limit and answer records."""

    def __init__(self, flow: AnswerFlow, parallel: int = PARALLEL) -> None:
        self.flow, self.parallel = flow, parallel

    async def summarize(self, request: SummaryRequest, target: AnswerTarget) -> Done | Failed | None:
        """Post the summary of a thread at ``target`` (progress first, then the summary streamed); the final event,
        or None when there was nothing to summarize or a notice was given instead."""
        flow = self.flow
        if not await flow.admit(request.user, target.notice):
            return None
        if isinstance(target, Accepting):
            await target.accept()
        run_id = uuid.uuid4().hex
        record = Answer(request.user, request.source, (), request.system_prompt, run_id, params=request.params,
                        thinking=request.thinking, model=request.model)
        running: dict[str, JobHandle] = {}
        stopped = asyncio.Event()

        def stop() -> None:
            stopped.set()
            for handle in list(running.values()):
                handle.cancel()

        record.on_stop = stop
        flow.answers.add(record)
        stop_button = (Control(Action.STOP, Messages.STOP, run_id, "danger"),)
        opened = await target.open(Reply(Messages.SUMMARY_READING, stop_button))
        if not opened.message_id:
            raise RuntimeError("a summary needs a target that shows a placeholder")
        progress = _Progress(opened, stop_button, flow.style.edit_interval_s)
        try:
            said = await request.read()
        except Exception:
            log.exception("reading the thread %s to summarize failed", request.source)
            await progress.end(Messages.SUMMARY_UNREADABLE)
            return None
        lines = transcript(said)
        if not lines:
            await progress.end(Messages.SUMMARY_EMPTY)
            return None
        room = request.budget.prompt_tokens(request.params.max_new_tokens) - estimate_tokens(request.system_prompt)
        budget_bytes = max(256, room * BYTES_PER_TOKEN - PROMPT_FRAME)
        final_bytes = budget_bytes * FINAL_SHARE[0] // FINAL_SHARE[1]
        part_params = replace(request.params, max_new_tokens=max(32, min(request.params.max_new_tokens,
                                                                          PART_TOKENS, room // 4)))
        whole = "\n".join(lines)
        parts = [lines] if len(whole.encode()) <= final_bytes else split_parts(lines, budget_bytes)
        log.info("summary %s of %s: %d messages in %d parts", run_id[:8], request.source, len(lines), len(parts))
        try:
            if len(parts) == 1:
                prompt = part_prompt(parts[0], 1, 1)
            else:
                def parts_shown(done: int, total: int) -> Awaitable[None]:
                    return progress.show(Messages.SUMMARY_PARTS.format(parts=total, done=done))

                summaries = await self._run(parts, lambda p, k, n, first: part_prompt(p, k, n), request,
                                            part_params, running, stopped, parts_shown)
                for _ in range(MAX_ROUNDS):
                    if len(combine_prompt(summaries).encode()) <= final_bytes + PROMPT_FRAME or len(summaries) < 3:
                        break
                    combining = Messages.SUMMARY_COMBINING.format(count=len(summaries))

                    async def show(done: int, total: int, text: str = combining) -> None:
                        await progress.show(text)

                    summaries = await self._run(group(summaries, budget_bytes),
                                                lambda p, k, n, first: combine_prompt(p, first), request,
                                                part_params, running, stopped, show)
                await progress.show(Messages.SUMMARY_COMBINING.format(count=len(summaries)), force=True)
                prompt = combine_prompt(summaries)
        except _Stopped:
            await progress.end(Messages.STOPPED_BY.format(who=flow.mention(record.stopped_by or request.user)))
            return Failed(FailureKind.CANCELLED, "stopped")
        except _Ended as ended:
            await progress.end(failure_text(ended.event))
            return ended.event
        return await self._final(prompt, request, record, opened, progress)

    async def _run(self, pieces: Sequence[list[str]], render: Callable[[list[str], int, int, int], str],
                   request: SummaryRequest, params: GenParams, running: dict[str, JobHandle],
                   stopped: asyncio.Event, shown: Callable[[int, int], Awaitable[None]]) -> list[str]:
        """Summarize each piece (its lines: transcript lines or summaries) with a job of its own, at most
        ``parallel`` submitted at once; their summaries in order. ``render(lines, k, n, first)`` makes piece k of
        n's prompt (``first``: the number of its first line in the whole). The byte budget is an estimate: a piece
        the engine finds too long for the context is halved and its halves run instead. Raises ``_Stopped`` (Stop
        pressed) or ``_Ended`` (a part failed, or the queue stayed full)."""
        order = [_Piece(list(lines)) for lines in pieces]
        waiting = list(order)
        tasks: dict[asyncio.Task[Done | Failed], tuple[_Piece, JobHandle]] = {}
        await shown(0, len(order))
        try:
            while waiting or tasks:
                if stopped.is_set():
                    raise _Stopped
                while waiting and len(tasks) < self.parallel:
                    piece = waiting[0]
                    at = order.index(piece)
                    first = 1 + sum(len(p.lines) for p in order[:at])
                    job = Job(turns=(Turn("user", render(piece.lines, at + 1, len(order), first)),), params=params,
                              system_prompt=request.system_prompt, platform=self.flow.platform,
                              user=f"{self.flow.platform}:{request.user}", model=request.model)
                    try:
                        handle = await self.flow.submitter.submit(job)
                    except QueueFull:
                        if tasks:
                            break  # one of ours makes room when it ends
                        raise _Ended(Failed(FailureKind.BUSY, "the queue is full")) from None
                    except EngineClosed:
                        raise _Ended(Failed(FailureKind.SHUTDOWN, "the bot is unavailable")) from None
                    running[job.id] = handle
                    tasks[asyncio.ensure_future(handle.result())] = (waiting.pop(0), handle)
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    piece, handle = tasks.pop(task)
                    running.pop(handle.job.id, None)
                    event = task.result()
                    if isinstance(event, Failed):
                        if stopped.is_set() or event.kind is FailureKind.CANCELLED:
                            raise _Stopped
                        halves = halve(piece.lines) if event.kind is FailureKind.PROMPT_TOO_LONG else None
                        if halves is None:
                            raise _Ended(event)
                        log.info("a part of %s was too long for the context: summarizing it in %d pieces",
                                 request.source, len(halves))
                        smaller = [_Piece(h) for h in halves]
                        at = order.index(piece)
                        order[at:at + 1] = smaller
                        waiting[0:0] = smaller
                        continue
                    piece.summary = split_thinking(event.text, self.flow.thinking_tags)[1].strip() or "(nothing)"
                await shown(sum(p.summary is not None for p in order), len(order))
        finally:
            for task, (_, handle) in tasks.items():
                handle.cancel()
                task.cancel()
            running.clear()
        return [p.summary or "" for p in order]

    async def _final(self, prompt: str, request: SummaryRequest, record: Answer, opened: Opened,
                     progress: _Progress) -> Done | Failed | None:
        """The summary of everything, streamed into the placeholder as an answer (Regenerate redoes this step)."""
        flow = self.flow
        turns = (Turn("user", prompt),)
        job = Job(turns=turns, params=request.params, system_prompt=request.system_prompt, platform=flow.platform,
                  user=f"{flow.platform}:{request.user}", model=request.model)
        submitted = await flow.submit(job, progress.end)
        if submitted is None:
            return None
        handle = hide_thinking(submitted, request.thinking, flow.thinking_tags)
        record.job_id, record.turns, record.handle, record.on_stop = job.id, turns, handle, None
        flow.answers.add(record)
        chain = MessageChain.of(opened.message_id, progress.shown)
        record.sink, record.chain = opened.sink, chain
        try:
            final = await stream_reply(handle, opened.sink, chain, flow.style, controls=AnswerButtons(record),
                                       failure=flow.failure_for(record))
        finally:
            handle.cancel()
        record.ended(final)
        return final


class _Progress:
    """The placeholder's progress line: edited at most once an interval (unless forced), with Stop under it."""

    def __init__(self, opened: Opened, controls: tuple[Control, ...], interval_s: float) -> None:
        self.opened, self.controls, self.interval_s = opened, controls, interval_s
        self.shown = opened.shown
        self.last = 0.0

    async def show(self, text: str, *, force: bool = False) -> None:
        reply = Reply(text, self.controls)
        if reply == self.shown or (not force and time.monotonic() - self.last < self.interval_s):
            return
        self.last = time.monotonic()
        try:
            await self.opened.sink.edit(self.opened.message_id, reply)
            self.shown = reply
        except Exception as exc:
            log.warning("could not show a summary's progress: %s: %s", type(exc).__name__, exc)

    async def end(self, text: str) -> None:
        """The last word in the placeholder (no buttons)."""
        self.shown = Reply(text)
        await self.opened.sink.edit(self.opened.message_id, self.shown, final=True)
