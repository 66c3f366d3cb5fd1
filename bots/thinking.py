"""Reasoning models think before they answer, between markers such as ``<think>…</think>``: that text is not the
answer. ``ThinkingSplitter`` tells the two apart as the text streams in; ``hide_thinking`` puts it between a job's
handle and whoever shows the answer, so the thinking is never posted as the answer:

    SHOW_THINKING=collapsed   a one-line note with the thinking's length instead of it (the default)
    SHOW_THINKING=off         nothing
    SHOW_THINKING=on          the thinking itself, between two marked lines, before the answer

While a model thinks and nothing is shown, the placeholder (or Slack's thread status) keeps saying "thinking…".
The final event's text is the answer alone, so a Continue goes on from the answer and never re-reads the
thinking; ``bots.notes.answer_only`` takes shown thinking out of a thread's history.

Thinking must open the answer (leading white space aside): a marker later in an answer is answer text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Literal

from bots.notes import THINKING_CLOSE, THINKING_CUT, THINKING_NOTE, THINKING_OPEN
from engine.api import JobFeed, JobHandle
from engine.config import Env
from engine.errors import ConfigError
from engine.types import Done, Event, Failed, TextPiece

ShowThinking = Literal["collapsed", "off", "on"]
SHOW_THINKING = ("collapsed", "off", "on")
# (opening, closing) markers of the reasoning models people run: DeepSeek-R1, Qwen3, QwQ (<think>), Magistral
# ([THINK]), some fine-tunes (<thinking>), Bespoke/OpenThinker (<|begin_of_thought|>)
KNOWN_TAGS: tuple[tuple[str, str], ...] = (
    ("<think>", "</think>"), ("<thinking>", "</thinking>"), ("[THINK]", "[/THINK]"),
    ("<|begin_of_thought|>", "<|end_of_thought|>"),
)
Part = tuple[Literal["thinking", "answer"], str]


def show_thinking_from_environ(environ: dict[str, str] | Env) -> ShowThinking:
    env = environ if isinstance(environ, Env) else Env(environ)
    value = env.choice("SHOW_THINKING", "collapsed", SHOW_THINKING)
    return "on" if value == "on" else "off" if value == "off" else "collapsed"


def tags_from_environ(environ: dict[str, str] | Env) -> tuple[tuple[str, str], ...]:
    """THINKING_TAGS: ``auto`` (the known markers) or an opening and a closing marker separated by a space."""
    env = environ if isinstance(environ, Env) else Env(environ)
    raw = env.raw("THINKING_TAGS") or "auto"
    if raw.lower() == "auto":
        return KNOWN_TAGS
    parts = raw.split()
    if len(parts) != 2 or parts[0] == parts[1]:
        raise ConfigError("THINKING_TAGS", raw, "expected auto, or the opening and the closing marker separated by "
                          "a space, such as <think> </think>")
    return ((parts[0], parts[1]),)


class ThinkingSplitter:
    """Splits a streamed answer into its thinking and the answer proper, piece by piece. Text that may still turn
    out to be a marker is held back until it is known."""

    def __init__(self, tags: Sequence[tuple[str, str]] = KNOWN_TAGS) -> None:
        self.tags = tuple(tags)
        self.state: Literal["start", "thinking", "answer"] = "start"
        self.close_tag = ""
        self.buffer = ""
        self.thinking = ""  # all of it so far
        self.answer_started = False

    @property
    def thought(self) -> bool:
        """The answer opened with thinking."""
        return bool(self.close_tag)

    def feed(self, piece: str) -> list[Part]:
        self.buffer += piece
        out: list[Part] = []
        if self.state == "start":
            head = self.buffer.lstrip()
            for opening, closing in self.tags:
                if head.startswith(opening):
                    self.state, self.close_tag = "thinking", closing
                    self.buffer = head[len(opening):].lstrip()
                    break
            else:
                if not head or any(opening.startswith(head) for opening, _ in self.tags):
                    return out  # (could still be a marker)
                self.state = "answer"
        if self.state == "thinking":
            at = self.buffer.find(self.close_tag)
            if at < 0:
                keep = _partial(self.buffer, self.close_tag)
                text, self.buffer = self.buffer[:len(self.buffer) - keep], self.buffer[len(self.buffer) - keep:]
                return self._thinking(text, out)
            self._thinking(self.buffer[:at], out)
            self.buffer = self.buffer[at + len(self.close_tag):].lstrip()
            self.state = "answer"
        if self.state == "answer" and self.thought and not self.answer_started:
            self.buffer = self.buffer.lstrip()  # (the blank lines between the thinking and the answer)
        if self.state == "answer" and self.buffer:
            out.append(("answer", self.buffer))
            self.buffer, self.answer_started = "", True
        return out

    def close(self) -> list[Part]:
        """The end of the text: whatever was held back."""
        text, self.buffer = self.buffer, ""
        if self.state == "thinking":
            return self._thinking(text, [])
        return [("answer", text)] if text else []

    def _thinking(self, text: str, out: list[Part]) -> list[Part]:
        if not self.thinking:
            text = text.lstrip()  # (the line break after the opening marker)
        if text:
            self.thinking += text
            out.append(("thinking", text))
        return out


def _partial(text: str, marker: str) -> int:
    """Length of the longest tail of ``text`` that begins ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def split_thinking(text: str, tags: Sequence[tuple[str, str]] = KNOWN_TAGS) -> tuple[str, str]:
    """(thinking, answer) of a whole text."""
    splitter = ThinkingSplitter(tags)
    parts = splitter.feed(text) + splitter.close()
    return splitter.thinking.strip(), "".join(t for kind, t in parts if kind == "answer")


class _Shown:
    """One job's events as shown: the thinking replaced as ``mode`` says, the final text the answer alone."""

    def __init__(self, mode: ShowThinking, tags: Sequence[tuple[str, str]], preamble: str = "") -> None:
        self.mode, self.splitter, self.preamble = mode, ThinkingSplitter(tags), preamble
        self.answer = ""
        self.opened = self.closed = False

    def on(self, event: Event) -> list[Event]:
        return self._first(self._on(event))

    def _first(self, events: list[Event]) -> list[Event]:
        """The preamble goes before the first text shown, or before the end when there is none."""
        if self.preamble and any(isinstance(e, TextPiece | Done | Failed) for e in events):
            events.insert(0, TextPiece(self.preamble))
            self.preamble = ""
        return events

    def _on(self, event: Event) -> list[Event]:
        if isinstance(event, TextPiece):
            return self._parts(self.splitter.feed(event.text))
        if isinstance(event, Done | Failed):
            out = self._parts(self.splitter.close(), end=True)
            if not self.splitter.thought:
                out.append(event)  # (no thinking: its text is the answer)
            elif isinstance(event, Done):
                out.append(Done(self.answer, event.prompt_tokens, event.completion_tokens, event.finish_reason,
                                event.queue_wait_s, event.time_to_first_token_s, event.duration_s))
            else:
                out.append(Failed(event.kind, event.reason, self.answer))
            return out
        return [event]

    def _parts(self, parts: list[Part], *, end: bool = False) -> list[Event]:
        out: list[Event] = []
        for kind, text in parts:
            if kind == "thinking":
                if self.mode == "on":
                    out.append(TextPiece(text if self.opened else THINKING_OPEN + "\n" + text))
                    self.opened = True
                continue
            out += self._end_of_thinking()
            self.answer += text
            out.append(TextPiece(text))
        if end and self.splitter.thought and not self.closed:
            out += self._end_of_thinking(cut=True)
        return out

    def _end_of_thinking(self, *, cut: bool = False) -> list[Event]:
        if self.closed or not self.splitter.thought:
            return []
        self.closed = True
        words = len(self.splitter.thinking.split())
        if self.mode == "on":
            return [TextPiece(("" if self.opened else THINKING_OPEN + "\n") + "\n" + THINKING_CLOSE + "\n\n")]
        if self.mode == "collapsed":
            return [TextPiece((THINKING_CUT if cut else THINKING_NOTE).format(words=f"{words:,}") + "\n\n")]
        return []


_relays: set[asyncio.Task[None]] = set()


def hide_thinking(handle: JobHandle, mode: ShowThinking, tags: Sequence[tuple[str, str]] = KNOWN_TAGS, *,
                  preamble: str = "") -> JobHandle:
    """A handle of the same job whose events show the thinking as ``mode`` says (see the module docstring), and
    ``preamble`` (notes about the question, ``bots.notes.notes_block``) before the first text shown. The final
    event's text is the answer alone. Cancelling the handle cancels the job."""
    feed = JobFeed(handle.job, lambda job_id: handle.cancel())
    feed.handle.submitted_at = handle.submitted_at
    shown = _Shown(mode, tags, preamble)

    async def relay() -> None:
        async for event in handle:
            for out in shown.on(event):
                feed.emit(out)

    if handle.position:  # a queue position the submitter reported at once (the caller reads it before any event)
        feed.handle.position, feed.handle.eta_s = handle.position, handle.eta_s
    task = asyncio.get_running_loop().create_task(relay(), name=f"thinking-{handle.job.id[:8]}")
    _relays.add(task)
    task.add_done_callback(_relays.discard)
    return feed.handle
