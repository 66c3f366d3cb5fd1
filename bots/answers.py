"""The answers the bot gave lately, as their buttons need them: who asked, the job behind the message, where it is
shown, and how it ended. Kept in memory, bounded: a press on an answer it no longer knows (after a restart, or a
day later) gets a clear word instead (``bots/presses.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bots.limits import Recent
from bots.messages import Messages
from bots.presses import Action, AnswerState
from bots.sink import Control, Sink
from bots.stream import MessageChain
from bots.thinking import ShowThinking
from engine.api import JobHandle
from engine.types import Done, Failed, FailureKind, GenParams, Turn

ANSWERS_TTL_S = 24 * 3600.0
ANSWERS_MAX = 5_000


@dataclass(eq=False)
class Answer:
    """One question's answer, through every Regenerate and Continue of it."""

    asker: str  # the platform's user id
    source: str  # the question's source (``bots.answer.Question``)
    turns: tuple[Turn, ...]  # the conversation as submitted
    system_prompt: str | None
    job_id: str  # the job behind the message now (its buttons name it)
    sink: Sink | None = None  # where it is shown, once its first message is
    chain: MessageChain = field(default_factory=lambda: MessageChain([], []))
    attempt: int = 1
    handle: JobHandle | None = None
    text: str = ""  # the whole answer so far, every Continue included
    final: Done | Failed | None = None
    stopped_by: str | None = None
    busy: bool = False  # a Regenerate or Continue is being started
    voted: set[str] = field(default_factory=set)  # who rated it (one vote each)
    params: GenParams | None = None  # the question's (its channel's settings), for another answer
    thinking: ShowThinking = "collapsed"  # SHOW_THINKING where it was asked
    notes: tuple[str, ...] = ()  # about the question's files, shown above every version of the answer
    on_stop: Callable[[], None] | None = None  # what Stop does instead of cancelling ``job_id`` (a summary's parts)
    model: str | None = None  # the model that answers it (Regenerate and Continue ask the same one)

    def state(self) -> AnswerState:
        cut = isinstance(self.final, Done) and self.final.finish_reason == "length"
        return AnswerState(asker=self.asker, running=self.final is None, cut=cut, busy=self.busy)

    def ended(self, event: Done | Failed) -> None:
        """The job behind it ended: keep its text for a Continue."""
        self.final = event
        self.text += event.text if isinstance(event, Done) else event.partial


class Answers:
    """Answers by job id: every job an answer had points to it (its buttons may name an older one)."""

    def __init__(self, ttl_s: float = ANSWERS_TTL_S, max_size: int = ANSWERS_MAX) -> None:
        self._by_job: Recent[str, Answer] = Recent(ttl_s, max_size)

    def __len__(self) -> int:
        return len(self._by_job)

    def add(self, answer: Answer) -> None:
        self._by_job.put(answer.job_id, answer)

    def get(self, job_id: str) -> Answer | None:
        return self._by_job.get(job_id)


class AnswerButtons:
    """The controls of one answer: Stop while it runs; once it ended, Regenerate, Continue (if it was cut at
    MAX_NEW_TOKENS) and feedback (if it answered)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer

    def live(self) -> tuple[Control, ...]:
        return (Control(Action.STOP, Messages.STOP, self.answer.job_id, "danger"),)

    def final(self, event: Done | Failed) -> tuple[Control, ...]:
        job = self.answer.job_id
        if isinstance(event, Failed):
            if event.kind in (FailureKind.PROMPT_TOO_LONG, FailureKind.SHUTDOWN):
                return ()  # another try would fail the same way, or the bot is going away
            return (Control(Action.REGENERATE, Messages.REGENERATE, job),)
        controls = [Control(Action.REGENERATE, Messages.REGENERATE, job)]
        if event.finish_reason == "length":
            controls.append(Control(Action.CONTINUE, Messages.CONTINUE, job, "primary"))
        controls += [Control(Action.GOOD, Messages.GOOD, job), Control(Action.BAD, Messages.BAD, job)]
        return tuple(controls)
