"""The buttons of an answer through the answer flow (``bots.answer``), against an in-memory target and a scripted
submitter: what each press does, and that a press that may not do anything only tells the presser why."""

from __future__ import annotations

import asyncio

from bots.answer import AnswerFlow, Question
from bots.limits import RateLimiter
from bots.messages import Messages
from bots.presses import Action, Press
from bots.stream import StreamStyle
from engine.types import Done, Failed, FailureKind, Turn
from testkit.memory_sink import MemoryTarget
from testkit.scripted import ScriptedEngine, answer

STYLE = StreamStyle(limit=200, edit_interval_s=0.01)


def question(user: str = "U1") -> Question:
    async def turns() -> tuple[Turn, ...]:
        return (Turn("user", "Tell me about rain."),)

    return Question(user=user, source="C1:1.000", turns=turns)


class Told:
    """What a presser was told (ephemeral messages)."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def __call__(self, text: str) -> None:
        self.texts.append(text)


def actions(target: MemoryTarget, message_id: str = "1") -> list[str]:
    return [c.action for c in target.sink.controls[message_id]]


async def test_an_answer_has_stop_while_it_runs_then_regenerate_and_feedback() -> None:
    engine, target = ScriptedEngine(answer("Rain is water falling from clouds.")), MemoryTarget()
    flow = AnswerFlow("test", engine, RateLimiter(0, 60), STYLE)
    final = await flow.answer(question(), target)
    assert isinstance(final, Done)
    assert actions(target) == [Action.REGENERATE, Action.GOOD, Action.BAD]  # no Continue: it was not cut
    assert flow.answers.get(engine.jobs[0].id) is not None


async def test_stop_by_the_asker_keeps_the_text_and_names_who_stopped() -> None:
    engine, target = ScriptedEngine(answer("word " * 300), delay_s=0.005), MemoryTarget()
    flow = AnswerFlow("test", engine, RateLimiter(0, 60), STYLE, mention=lambda user: f"@{user}")
    answering = asyncio.create_task(flow.answer(question(), target))
    while "word" not in target.sink.messages.get("1", ""):
        await asyncio.sleep(0.005)
    assert actions(target) == [Action.STOP]
    job = engine.jobs[0].id
    stranger, asker = Told(), Told()
    await flow.press(Press(Action.STOP, job, "U2"), stranger)
    assert stranger.texts == [Messages.PRESS_NOT_YOURS.format(what="stop")] and not answering.done()
    await flow.press(Press(Action.STOP, job, "U1"), asker)
    final = await answering
    assert isinstance(final, Failed) and final.kind is FailureKind.CANCELLED and asker.texts == []
    text = target.sink.messages["1"]
    assert text.startswith("word") and text.endswith("\n\n" + Messages.STOPPED_BY.format(who="@U1"))
    assert actions(target) == [Action.REGENERATE]
    again = Told()
    await flow.press(Press(Action.STOP, job, "U1"), again)
    assert again.texts == [Messages.PRESS_ENDED]


async def test_regenerate_streams_another_answer_into_the_same_message_as_a_new_job() -> None:
    engine, target = ScriptedEngine(answer("First answer.")), MemoryTarget()
    engine.scripts = [answer("First answer."), answer("A different second answer.")]
    flow = AnswerFlow("test", engine, RateLimiter(0, 60), STYLE)
    await flow.answer(question(), target)
    told = Told()
    await flow.press(Press(Action.REGENERATE, engine.jobs[0].id, "U1"), told)
    assert told.texts == [] and target.sink.messages == {"1": "A different second answer."}
    first, second = engine.jobs
    assert second.resample and second.turns == first.turns and second.dedup_key == "test:C1:1.000#2"
    assert [c.value for c in target.sink.controls["1"]] == [second.id] * 3  # the buttons name the new job
    old = Told()
    await flow.press(Press(Action.REGENERATE, first.id, "U1"), old)  # a button of the replaced version
    assert old.texts == [Messages.PRESS_ENDED] and len(engine.jobs) == 2


async def test_continue_goes_on_in_the_same_message_from_where_it_was_cut() -> None:
    engine, target = ScriptedEngine([]), MemoryTarget()
    engine.scripts = [answer("The bicycle has two", finish_reason="length"), answer(" wheels and pedals.")]
    flow = AnswerFlow("test", engine, RateLimiter(0, 60), STYLE)
    await flow.answer(question(), target)
    assert Action.CONTINUE in actions(target)
    strangers = Told()
    await flow.press(Press(Action.CONTINUE, engine.jobs[0].id, "U9"), strangers)
    assert strangers.texts == [Messages.PRESS_NOT_YOURS.format(what="continue")]
    await flow.press(Press(Action.CONTINUE, engine.jobs[0].id, "U1"), Told())
    assert target.sink.messages == {"1": "The bicycle has two wheels and pedals."}
    continued = engine.jobs[1]
    assert continued.prefill == "The bicycle has two" and not continued.resample
    assert Action.CONTINUE not in actions(target)  # it ended by itself this time


async def test_feedback_is_counted_once_per_person_and_never_before_the_answer_is_there() -> None:
    engine, target = ScriptedEngine(answer("Paris.")), MemoryTarget()
    flow = AnswerFlow("test", engine, RateLimiter(0, 60), STYLE)
    await flow.answer(question(), target)
    job = engine.jobs[0].id
    anyone, again = Told(), Told()
    await flow.press(Press(Action.GOOD, job, "U5"), anyone)
    await flow.press(Press(Action.BAD, job, "U5"), again)
    assert anyone.texts == [Messages.THANKS] and again.texts == [Messages.VOTED]
    registry = engine.metrics.registry
    assert registry.get_sample_value("engbot_feedback_total", {"platform": "test", "value": "good"}) == 1.0
    assert registry.get_sample_value("engbot_feedback_total", {"platform": "test", "value": "bad"}) is None


async def test_a_press_on_an_answer_it_does_not_know_says_so() -> None:
    flow = AnswerFlow("test", ScriptedEngine([]), RateLimiter(0, 60), STYLE)
    told = Told()
    await flow.press(Press(Action.REGENERATE, "0123abcd", "U1"), told)  # e.g. from before a restart
    assert told.texts == [Messages.PRESS_UNKNOWN]


async def test_regenerate_obeys_the_rate_limit() -> None:
    engine, target = ScriptedEngine(answer("One.")), MemoryTarget()
    flow = AnswerFlow("test", engine, RateLimiter(1, 60), STYLE)
    await flow.answer(question(), target)
    told = Told()
    await flow.press(Press(Action.REGENERATE, engine.jobs[0].id, "U1"), told)
    assert told.texts == [Messages.RATE_LIMITED.format(seconds=60)] and len(engine.jobs) == 1


async def test_the_questions_model_answers_it_and_its_regenerations() -> None:
    engine, target = ScriptedEngine(answer("First answer.")), MemoryTarget()
    engine.scripts = [answer("First answer."), answer("Second answer.")]
    flow = AnswerFlow("test", engine, RateLimiter(0, 60), STYLE)
    asked = question()
    await flow.answer(Question(asked.user, asked.source, asked.turns, model="code"), target)
    await flow.press(Press(Action.REGENERATE, engine.jobs[0].id, "U1"), Told())
    assert [job.model for job in engine.jobs] == ["code", "code"]
