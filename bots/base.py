"""What every adapter shares: user-facing texts, rate limits, access lists, and streaming a reply by editing.

An adapter turns a platform event into a ``Job``, calls ``answer()`` with a ``Sink`` that can post and edit
messages on its platform, and is done: ``answer`` guarantees exactly one final reply per accepted job.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from bots.text import paginate
from engine.config import Env
from engine.engine import JobHandle, JobSubmitter
from engine.errors import DuplicateJob, EngineClosed, QueueFull
from engine.types import Done, Failed, Job, Queued, Role, Started, TextPiece, Turn

log = logging.getLogger("engbot.bots")


class Messages:
    """Every text the bot says about itself, in one place."""

    HELP = ("Hi! Ask me anything: mention me with your question, e.g. `@engbot What is a closure in Python?` "
            "I answer in the thread, and follow-ups in the thread continue the conversation.")
    THINKING = "_Thinking…_"
    QUEUED = "_Waiting for a free model worker: position {position} in the queue…_"
    BUSY = "I'm busy with other questions right now: please try again in a moment."
    RATE_LIMITED = "You're asking faster than I can answer: please wait {seconds} s and try again."
    EMPTY_ANSWER = "_(The model gave an empty answer. Try rephrasing the question.)_"
    FAILED = "⚠️ Sorry, something went wrong while answering. The error has been logged."
    TIMEOUT = "⚠️ Sorry, the answer took too long and was stopped ({reason})."
    PROMPT_TOO_LONG = "⚠️ {reason}"
    SHUTDOWN = "⚠️ I'm restarting and had to stop this answer: please ask again in a moment."
    CRASHED = "⚠️ The model worker crashed while answering. It has been restarted: please ask again."
    UNAVAILABLE = "⚠️ The bot is unavailable right now: please try again in a moment."
    NOT_ALLOWED = "Sorry, I'm not allowed to answer here."
    MOVED = "_(This answer ran longer than this message can be edited: it continues below.)_"
    RETRACTED = "_(Part of an answer that was started again: the answer is above.)_"
    NO_TEXT = "I can only read text: please type your question (files and images are not supported)."
    CURSOR = " ▌"


def failure_text(event: Failed) -> str:
    """The reply that replaces an answer that failed. Internal details stay in the log."""
    if event.kind == "timeout":
        return Messages.TIMEOUT.format(reason=event.reason)
    if event.kind == "prompt_too_long":
        return Messages.PROMPT_TOO_LONG.format(reason=event.reason)
    if event.kind == "shutdown":
        return Messages.SHUTDOWN
    if event.kind == "crashed":
        return Messages.CRASHED
    if event.kind == "busy":
        return Messages.BUSY
    return Messages.FAILED


class RateLimiter:
    """At most ``limit`` requests per user in a sliding window of ``period_s`` seconds; 0 disables it.

    Not asyncio-throttle: its Throttler makes callers wait for a slot, and a chat user over the limit must get a
    notice at once instead of a delayed answer.
    """

    def __init__(self, limit: int, period_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.period_s, self._clock = limit, period_s, clock
        self._hits: dict[str, deque[float]] = {}

    def check(self, user: str) -> float:
        """Record a request; 0 if allowed, else the seconds until the user may ask again."""
        if self.limit <= 0:
            return 0.0
        now = self._clock()
        hits = self._hits.setdefault(user, deque())
        while hits and now - hits[0] >= self.period_s:
            hits.popleft()
        if len(hits) >= self.limit:
            return max(0.1, self.period_s - (now - hits[0]))
        hits.append(now)
        if len(self._hits) > 10_000:  # forget idle users
            self._hits = {u: h for u, h in self._hits.items() if h and now - h[-1] < self.period_s}
        return 0.0


def rate_limit_from_environ(environ: Mapping[str, str]) -> RateLimiter:
    """The per-user limit shared by every adapter: RATE_LIMIT_PER_USER (default 5, 0 = off) requests per
    RATE_LIMIT_PERIOD_S (default 60) seconds. Raises ``ConfigError`` naming the variable on a bad value."""
    env = Env(environ)
    return RateLimiter(env.int("RATE_LIMIT_PER_USER", 5, lo=0, hi=100_000),
                       env.float("RATE_LIMIT_PERIOD_S", 60.0, lo=0.0, lo_open=True))


def allowed(value: str | None, allow_list: frozenset[str]) -> bool:
    """Empty allow-list: everyone."""
    return not allow_list or (value is not None and value in allow_list)


class Sink(Protocol):
    """Where a reply goes: one conversation on one platform."""

    async def post(self, text: str) -> str:
        """Post a new message in the conversation; return its id."""
        ...

    async def edit(self, message_id: str, text: str) -> None:
        """Replace the text of a message the bot posted."""
        ...

    async def delete(self, message_id: str) -> None:
        """Remove a message the bot posted (raises when the platform does not allow it)."""
        ...


@dataclass(frozen=True, slots=True)
class StreamStyle:
    limit: int  # characters per message as sent: the rendered text, with the cursor or a failure note
    edit_interval_s: float = 1.0
    render: Callable[[str], str] = lambda text: text


async def asubmit(engine: JobSubmitter, job: Job) -> JobHandle | str:
    """Submit (in-process, or through Redis), or say why not: the returned string is the reply to give at once."""
    try:
        return await engine.asubmit(job)
    except QueueFull:
        return Messages.BUSY
    except EngineClosed:
        return Messages.UNAVAILABLE
    except DuplicateJob:
        return ""  # the platform sent the event twice: the first copy is being answered


async def stream_reply(handle: JobHandle, sink: Sink, message_id: str, style: StreamStyle, *,
                       placeholder: str = "") -> Done | Failed:
    """Stream a job's answer into ``message_id`` (a placeholder), editing at most once per interval and
    continuing in new messages when the rendered text would pass ``style.limit``. Ends with exactly one final
    edit; returns the final event. Text is rendered only when it is about to be sent.

    ``placeholder`` is the text the message shows already, so an event that would show the same text (such as
    the queue position it was posted with) costs no edit.
    """
    current = ""  # model text of the current message (ids[-1]), not rendered
    shown = placeholder  # what the current message shows now
    last_edit = 0.0
    ids = [message_id]

    async def show(text: str, *, force: bool = False) -> None:
        nonlocal shown, last_edit
        now = time.monotonic()
        if text == shown or (not force and now - last_edit < style.edit_interval_s):
            return
        last_edit = now  # a failed edit waits its interval too
        try:
            await sink.edit(ids[-1], text)
            shown = text
        except Exception:
            log.exception("editing a reply failed")
            if force:  # the final text must arrive: post it instead
                await post(text)

    async def post(text: str) -> None:
        nonlocal shown, last_edit
        ids.append(await sink.post(text))
        shown, last_edit = text, time.monotonic()

    async def publish(suffix: str, empty: str, *, final: bool) -> None:
        """Show ``current`` rendered, then ``suffix``; continue in new messages while that is over the limit."""
        nonlocal current
        full, current, rendered = paginate(current, style.limit, style.render, reserve=len(suffix))
        text = rendered + suffix if rendered.strip() else empty
        if not full:
            await show(text, force=final)
            return
        await show(full[0], force=True)  # the current message is full: it gets its final text
        for head in full[1:]:
            await post(head)
        await post(text)

    async def restart() -> None:
        """Another attempt answers from the start: one clean reply again, in the first message."""
        nonlocal current, shown
        for extra in ids[1:]:
            await retract(sink, extra)
        del ids[1:]
        current, shown = "", ""
        await show(Messages.THINKING, force=True)

    async for event in handle:
        if isinstance(event, TextPiece):
            current += event.text
            if current.strip() and time.monotonic() - last_edit >= style.edit_interval_s:
                await publish(Messages.CURSOR, Messages.THINKING, final=False)
        elif isinstance(event, Started) and event.attempt > 1 and (current or len(ids) > 1):
            # QUEUE_BACKEND=redis: the worker host died, another one answers from the start
            await restart()
        elif isinstance(event, Queued):
            if not current and len(ids) == 1:
                await show(Messages.QUEUED.format(position=event.position))
        elif isinstance(event, Done):
            if len(ids) > 1 and not current.strip():
                # the answer ended with the message before: nothing came for the one opened for the rest
                await retract(sink, ids.pop())
            else:
                await publish("", Messages.EMPTY_ANSWER, final=True)
            return event
        elif isinstance(event, Failed):
            if event.kind not in ("cancelled", "prompt_too_long"):
                log.warning("job %s failed: %s: %s", handle.job.id[:8], event.kind, event.reason)
            note = failure_text(event)
            await publish("\n\n" + note, note, final=True)
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
        await sink.edit(message_id, Messages.RETRACTED)
    except Exception:
        log.exception("marking message %s of an abandoned answer failed", message_id)


@dataclass(frozen=True, slots=True)
class Said:
    """One message of a conversation, as an adapter reads it from a thread."""

    text: str
    speaker: str | None  # who wrote it: an id stable within the conversation; None for the bot itself
    name: str = ""  # what to call the speaker ("Ann", "@U0123ABCD"); the id when empty


def conversation(messages: Iterable[Said], max_chars: int = 24_000) -> tuple[Turn, ...]:
    """Turns from a thread's messages, oldest first: the bot's as assistant turns, everyone else's as user turns.

    When more than one person took part, each person's message starts with their name ("Ann: ..."), so the model
    knows who said what. Keeps the newest messages within ``max_chars`` (the engine trims to the exact token
    budget), merges consecutive messages of one side, and drops empty ones.
    """
    said = [m for m in messages if m.text.strip()]
    named = len({m.speaker for m in said if m.speaker is not None}) > 1
    turns: list[Turn] = []
    for message in said:
        text = message.text.strip()
        role: Role = "assistant" if message.speaker is None else "user"
        if named and message.speaker is not None:
            text = f"{message.name or message.speaker}: {text}"
        if turns and turns[-1].role == role:
            turns[-1] = Turn(role, f"{turns[-1].content}\n\n{text}")
        else:
            turns.append(Turn(role, text))
    kept: list[Turn] = []
    total = 0
    for turn in reversed(turns):
        total += len(turn.content)
        if kept and total > max_chars:
            break
        kept.append(turn)
    kept.reverse()
    while kept and kept[0].role != "user":
        kept.pop(0)
    return tuple(kept)


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Recent(Generic[K, V]):
    """A bounded map whose entries expire ``ttl_s`` seconds after they were written (oldest dropped first)."""

    def __init__(self, ttl_s: float, max_size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self.max_size, self._clock = ttl_s, max_size, clock
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def _expire(self) -> None:
        now = self._clock()
        while self._items and (len(self._items) > self.max_size or next(iter(self._items.values()))[0] <= now):
            self._items.popitem(last=False)

    def get(self, key: K) -> V | None:
        self._expire()
        item = self._items.get(key)
        return None if item is None else item[1]

    def put(self, key: K, value: V) -> None:
        self._items.pop(key, None)
        self._items[key] = (self._clock() + self.ttl_s, value)
        self._expire()

    def first_time(self, key: K, value: V) -> bool:
        """Record ``key``; False if it was recorded already (and not expired)."""
        if self.get(key) is not None:
            return False
        self.put(key, value)
        return True
