"""The one answer flow (``bots.answer``) against an in-memory target: no Slack, no Discord, no model.

Every accepted question ends in exactly one outcome: a notice, or an answer that ends in one final edit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

import pytest

from bots.answer import AnswerFlow, Question
from bots.limits import RateLimiter
from bots.messages import Messages
from bots.sink import Control, Opened, Reply
from bots.stream import AnswerControls, MessageChain, StreamStyle
from engine.api import JobHandle
from engine.errors import DuplicateJob, EngineClosed, QueueFull
from engine.types import Done, Event, Failed, FailureKind, Job, TextPiece, Turn
from testkit.memory_sink import AcceptingTarget, MemoryTarget
from testkit.scripted import ScriptedEngine, answer

STYLE = StreamStyle(limit=200, edit_interval_s=0.01)
TEXT = "The capital of France is Paris."


class Refusing(ScriptedEngine):
    """Raises ``error`` for every job."""

    def __init__(self, error: Exception) -> None:
        super().__init__([])
        self.error = error

    async def submit(self, job: Job) -> JobHandle:
        raise self.error


class Deduplicating(ScriptedEngine):
    """Refuses a dedup key it has seen, as the engine does."""

    async def submit(self, job: Job) -> JobHandle:
        if any(j.dedup_key == job.dedup_key for j in self.jobs):
            raise DuplicateJob(str(job.dedup_key))
        return await super().submit(job)


READS: list[str] = []  # the sources whose conversation was read


def question(source: str = "C1:1.000", user: str = "U1") -> Question:
    async def turns() -> tuple[Turn, ...]:
        READS.append(source)
        return (Turn("user", "What is the capital of France?"),)

    return Question(user=user, source=source, turns=turns)


def flow(engine: ScriptedEngine, limit: int = 0, **kwargs: object) -> AnswerFlow:
    return AnswerFlow("test", engine, RateLimiter(limit, 60.0), STYLE, **kwargs)  # type: ignore[arg-type]


async def test_a_question_is_answered_in_its_placeholder_with_one_final_edit() -> None:
    engine, target = ScriptedEngine(answer(TEXT)), MemoryTarget()
    final = await flow(engine).answer(question(), target)
    assert isinstance(final, Done) and not target.notices and target.opened == 1
    assert list(target.sink.messages.values()) == [TEXT]
    assert target.sink.calls[0] == ("post", "1")  # the placeholder, then only edits of it
    assert {op for op, _ in target.sink.calls[1:]} == {"edit"}
    job = engine.jobs[0]
    assert (job.platform, job.dedup_key, job.turns[-1].content) == ("test", "test:C1:1.000",
                                                                     "What is the capital of France?")


async def test_over_the_rate_limit_the_user_gets_a_notice_and_the_thread_is_not_read() -> None:
    engine, target = ScriptedEngine(answer(TEXT)), MemoryTarget()
    answers = flow(engine, limit=1)
    assert isinstance(await answers.answer(question("C1:1"), target), Done)
    assert await answers.answer(question("C1:2"), target) is None
    assert target.notices == [Messages.RATE_LIMITED.format(seconds=60)]
    assert "C1:2" not in READS and len(engine.jobs) == 1
    # another user is not limited by the first
    assert isinstance(await answers.answer(question("C1:3", user="U2"), target), Done)


@pytest.mark.parametrize(("error", "notice"), [(QueueFull(1), Messages.BUSY), (EngineClosed("stopping"),
                                                                                Messages.UNAVAILABLE),
                                               (RuntimeError("a bug"), Messages.FAILED)])
async def test_a_refused_job_gets_one_notice_and_no_placeholder(error: Exception, notice: str) -> None:
    target = MemoryTarget()
    assert await flow(Refusing(error)).answer(question(), target) is None
    assert target.notices == [notice] and target.opened == 0


async def test_a_duplicate_delivery_gets_nothing_but_a_second_attempt_is_a_new_job() -> None:
    engine, target = Deduplicating(answer(TEXT)), MemoryTarget()
    answers = flow(engine)
    assert isinstance(await answers.answer(question(), target), Done)
    assert await answers.answer(question(), target) is None
    assert len(target.sink.messages) == 1 and not target.notices  # not a word for the duplicate
    assert isinstance(await answers.answer(replace(question(), attempt=2), target), Done)  # e.g. regenerate
    assert [j.dedup_key for j in engine.jobs] == ["test:C1:1.000", "test:C1:1.000#2"]


async def test_a_job_cancelled_by_its_id_keeps_its_text_and_says_stopped() -> None:
    engine, target = ScriptedEngine(answer("word " * 200), delay_s=0.005), MemoryTarget()
    answering = asyncio.create_task(flow(engine).answer(question(), target))
    while not any("word" in text for text in target.sink.messages.values()):
        await asyncio.sleep(0.005)
    assert engine.cancel(engine.jobs[0].id)  # from anywhere: a button, a shutdown
    final = await answering
    assert isinstance(final, Failed) and final.kind is FailureKind.CANCELLED
    shown = list(target.sink.messages.values())
    assert len(shown) == 1 and shown[0].startswith("word") and shown[0].endswith("\n\n" + Messages.STOPPED)


async def test_when_the_placeholder_cannot_be_posted_the_job_is_stopped_and_the_user_told() -> None:
    engine, target = ScriptedEngine(answer("word " * 200), delay_s=0.01), MemoryTarget(fail_open=True)
    assert await flow(engine).answer(question(), target) is None
    assert target.notices == [Messages.FAILED]
    assert engine.handles[0].done and isinstance(engine.handles[0].final, Failed)  # not left generating


class Buttons:
    def __init__(self, handle: JobHandle) -> None:
        self.job_id = handle.job.id

    def live(self) -> tuple[Control, ...]:
        return (Control("stop", "Stop", self.job_id, "danger"),)

    def final(self, event: Done | Failed) -> tuple[Control, ...]:
        return (Control("regenerate", "Regenerate", self.job_id),) if isinstance(event, Done) else ()


async def test_controls_show_while_the_answer_runs_and_change_when_it_ends() -> None:
    engine, target = ScriptedEngine(answer("word " * 100), delay_s=0.002), MemoryTarget()
    answers = flow(engine, controls=Buttons)
    answers.style = replace(STYLE, limit=120)  # a long answer: it continues in new messages
    assert isinstance(await answers.answer(question(), target), Done)
    job_id = engine.jobs[0].id
    controls = list(target.sink.controls.values())
    assert len(controls) > 1
    assert all(c == () for c in controls[:-1])  # only the newest message carries buttons
    assert controls[-1] == (Control("regenerate", "Regenerate", job_id),)
    # the placeholder was posted with the Stop button (the first message later lost it as the answer moved on)
    stop = MemoryTarget()
    engine = ScriptedEngine(answer(TEXT), delay_s=0.002)
    opened = asyncio.create_task(flow(engine, controls=Buttons).answer(question("C2:1"), stop))
    while not stop.sink.controls:
        await asyncio.sleep(0.001)
    assert stop.sink.controls["1"] == (Control("stop", "Stop", engine.jobs[0].id, "danger"),)
    await opened


class Submitting(ScriptedEngine):
    """Notes each submit in ``steps``."""

    def __init__(self, steps: list[str], script: list[Event]) -> None:
        super().__init__(script)
        self.steps = steps

    async def submit(self, job: Job) -> JobHandle:
        self.steps.append("submit")
        return await super().submit(job)


async def test_a_target_that_must_acknowledge_is_accepted_before_anything_that_can_wait() -> None:
    steps: list[str] = []

    async def turns() -> tuple[Turn, ...]:
        steps.append("read")
        return (Turn("user", "What is the capital of France?"),)

    answers = flow(Submitting(steps, answer(TEXT)), limit=1)
    target = AcceptingTarget(steps=steps)
    assert isinstance(await answers.answer(Question(user="U1", source="C1:1", turns=turns), target), Done)
    assert steps == ["accept", "read", "submit", "open"]
    steps.clear()  # over the rate limit: the notice goes at once, nothing is accepted
    assert await answers.answer(Question(user="U1", source="C1:2", turns=turns), target) is None
    assert steps == ["notice"] and target.notices == [Messages.RATE_LIMITED.format(seconds=60)]
    refused = AcceptingTarget(steps=steps)  # a notice after the acknowledgement still comes
    steps.clear()
    assert await flow(Refusing(QueueFull(1))).answer(question("C1:3"), refused) is None
    assert steps == ["accept", "notice"] and refused.notices == [Messages.BUSY] and refused.opened == 0
    plain = MemoryTarget()  # a target without ``accept`` is not asked to
    assert isinstance(await flow(ScriptedEngine(answer(TEXT))).answer(question("C1:4"), plain), Done)
class Streamer:
    """A platform's own streaming (``bots.stream.AnswerStreamer``) that shows the answer in one message of the
    target's sink once it ended; ``stop_after`` pieces in, it presses the platform's stop button."""

    def __init__(self, target: MemoryTarget, stop_after: int | None = None) -> None:
        self.target, self.stop_after = target, stop_after

    async def run(self, handle: JobHandle, chain: MessageChain, *, controls: AnswerControls,
                  failure: Callable[[Failed], str], stop: Callable[[], None]) -> Done | Failed:
        pieces = 0
        async for event in handle:
            if isinstance(event, TextPiece):
                pieces += 1
                if pieces == self.stop_after:
                    stop()
            if isinstance(event, Done | Failed):
                text = event.text if isinstance(event, Done) else event.partial + "\n\n" + failure(event)
                reply = Reply(text, controls.final(event))
                chain.ids.append(await self.target.sink.post(reply))
                chain.shown.append(reply)
                return event
        raise AssertionError("no final event")


class StreamingTarget(MemoryTarget):
    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.streamer = Streamer(self, stop_after)

    async def open(self, placeholder: Reply) -> Opened:
        self.opened += 1
        return Opened(self.sink, "", placeholder, stream=self.streamer)


async def test_a_target_that_streams_its_own_way_gets_the_answer_instead_of_edits() -> None:
    engine, target = ScriptedEngine(answer(TEXT)), StreamingTarget()
    answers = flow(engine)
    final = await answers.answer(question(), target)
    assert isinstance(final, Done) and list(target.sink.messages.values()) == [TEXT]
    assert target.sink.calls == [("post", "1")]  # no placeholder, no edits: the streamer's one message
    record = answers.answers.get(engine.jobs[0].id)
    assert record is not None and record.chain.ids == ["1"] and record.final is final  # for Regenerate


async def test_the_platforms_own_stop_button_cancels_the_job() -> None:
    engine, target = ScriptedEngine(answer(TEXT, size=2), delay_s=0.01), StreamingTarget(stop_after=3)
    final = await flow(engine).answer(question(), target)
    assert isinstance(final, Failed) and final.kind is FailureKind.CANCELLED
    assert engine.handles[0].final is final
    (shown,) = target.sink.messages.values()
    assert shown.endswith("\n\n" + Messages.STOPPED)
