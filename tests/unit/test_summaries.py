"""Thread summaries (``bots.summary``, ``bots.summarize``) on a scripted submitter: a thread cut into parts that fit,
parts summarized side by side, summaries combined in rounds, progress shown, Stop stopping every part."""

from __future__ import annotations

import asyncio

from bots.answer import AnswerFlow
from bots.conversation import Said
from bots.limits import RateLimiter
from bots.messages import Messages
from bots.presses import Action, Press
from bots.stream import StreamStyle
from bots.summarize import Summaries, SummaryRequest
from bots.summary import combine_prompt, group, halve, part_prompt, split_parts, transcript
from bots.tokens import ContextBudget
from engine.api import JobHandle
from engine.errors import QueueFull
from engine.types import Done, Failed, FailureKind, GenParams, Job
from testkit.memory_sink import MemoryTarget
from testkit.scripted import ScriptedEngine, answer, started

STYLE = StreamStyle(limit=2000, edit_interval_s=0.0)


def thread(n: int) -> list[Said]:
    return [Said(f"message {i}: " + "words " * 20, None if i % 5 == 4 else f"U{i % 3}", f"User{i % 3}")
            for i in range(n)]


def request(n: int, context: int = 1024, user: str = "U1") -> SummaryRequest:
    async def read() -> list[Said]:
        return thread(n)

    return SummaryRequest(user=user, source="C1:1.0", read=read, system_prompt="You are helpful.",
                          params=GenParams(max_new_tokens=64), budget=ContextBudget(context))


def test_a_transcript_names_who_said_what_and_parts_fit_their_budget() -> None:
    lines = transcript([Said("hi  there\n", "U1", "Ann"), Said("hello", None), Said("  ", "U2")])
    assert lines == ["Ann: hi there", "Assistant: hello"]
    parts = split_parts([f"line {i} " + "x" * 90 for i in range(50)], 1000)
    assert all(len("\n".join(p).encode()) <= 1000 for p in parts) and sum(map(len, parts)) == 50
    assert split_parts(["y" * 5000], 1000)[0][0].endswith(" […]")
    assert "part 2 of 3" in part_prompt(["a"], 2, 3) and "part" not in part_prompt(["a"], 1, 1).split("\n")[0]
    assert "Part 3: b" in combine_prompt(["a", "b"], first=2)
    assert [len(g) for g in group(["s" * 300] * 5, 700)] == [2, 3]


async def test_a_long_thread_is_summarized_in_parts_side_by_side_then_combined() -> None:
    engine, target = ScriptedEngine(answer("A short summary."), delay_s=0.01), MemoryTarget()
    flow = AnswerFlow("test", engine, RateLimiter(0, 60), STYLE)
    final = await Summaries(flow).summarize(request(200), target)
    assert isinstance(final, Done) and final.text == "A short summary."
    parts = [j for j in engine.jobs if "Here is part" in j.turns[0].content]
    assert len(parts) >= 4 and all(j.user == "test:U1" and j.system_prompt == "You are helpful." for j in parts)
    assert all(j.params is not None and j.params.max_new_tokens <= 64 for j in engine.jobs)
    assert "Here are summaries" in engine.jobs[-1].turns[0].content
    texts = list(target.sink.messages.values())
    assert texts == ["A short summary."]  # the placeholder, now the summary
    edits = [c for c in target.sink.calls if c[0] == "edit"]
    assert len(edits) >= 3
    record = flow.answers.get(engine.jobs[-1].id)
    assert record is not None and record.turns == engine.jobs[-1].turns  # Regenerate redoes the last step


async def test_progress_is_shown_while_the_parts_run() -> None:
    engine, target = ScriptedEngine(answer("Summary."), delay_s=0.02), MemoryTarget()
    flow = AnswerFlow("test", engine, RateLimiter(0, 60), STYLE)
    seen: list[str] = []
    original = target.sink.edit

    async def edit(message_id: str, reply: object, *, final: bool = False) -> None:
        seen.append(reply.text)  # type: ignore[attr-defined]
        await original(message_id, reply, final=final)  # type: ignore[arg-type]

    target.sink.edit = edit  # type: ignore[method-assign]
    await Summaries(flow).summarize(request(200), target)
    parts = sum("Here is part" in j.turns[0].content for j in engine.jobs)
    assert f"_Summarizing {parts} parts… (0 of {parts} done)_" in seen
    assert f"_Summarizing {parts} parts… ({parts} of {parts} done)_" in seen
    assert any(text.startswith("_Combining ") for text in seen)


async def test_stop_cancels_every_part_and_says_who_stopped_it() -> None:
    engine, target = ScriptedEngine(answer("x " * 400, size=1), delay_s=0.01), MemoryTarget()
    flow = AnswerFlow("test", engine, RateLimiter(0, 60), STYLE)
    told: list[str] = []

    async def tell(text: str) -> None:
        told.append(text)

    running = asyncio.create_task(Summaries(flow).summarize(request(200), target))
    while len(engine.jobs) < 2:
        await asyncio.sleep(0.01)
    stop = next(c for c in target.sink.controls["1"] if c.action == Action.STOP)
    await flow.press(Press(Action.STOP, stop.value, "U1"), tell)
    final = await asyncio.wait_for(running, 10)
    assert isinstance(final, Failed) and final.kind is FailureKind.CANCELLED and not told
    assert all(h.final is not None and isinstance(h.final, Failed) for h in engine.handles)
    assert target.sink.messages["1"] == Messages.STOPPED_BY.format(who="U1")
    assert not any("Here are summaries" in j.turns[0].content for j in engine.jobs)


class SmallQueue(ScriptedEngine):
    """Takes at most two jobs at a time, as a full shared queue would."""

    async def submit(self, job: Job) -> JobHandle:
        if self.running >= 2:
            raise QueueFull(2)
        return await super().submit(job)


async def test_a_full_queue_makes_parts_wait_their_turn_not_fail() -> None:
    engine, target = SmallQueue(answer("Summary."), delay_s=0.01), MemoryTarget()
    flow = AnswerFlow("test", engine, RateLimiter(0, 60), STYLE)
    final = await Summaries(flow).summarize(request(120), target)
    assert isinstance(final, Done) and len(engine.jobs) >= 4


async def test_the_rate_limit_counts_a_summary_once_and_an_empty_thread_says_so() -> None:
    engine, target = ScriptedEngine(answer("S.")), MemoryTarget()
    flow = AnswerFlow("test", engine, RateLimiter(1, 60), STYLE)
    assert isinstance(await Summaries(flow).summarize(request(200), target), Done)
    assert await Summaries(flow).summarize(request(5), target) is None
    assert target.notices and target.notices[-1].startswith("You're asking faster")
    empty = await Summaries(AnswerFlow("test", engine, RateLimiter(0, 60), STYLE)).summarize(request(0), target)
    assert empty is None and Messages.SUMMARY_EMPTY in target.sink.messages.values()


class StrictTokenizer(ScriptedEngine):
    """Refuses, as the engine does, a prompt longer than the context by its own count (here two bytes a token,
    where the adapters estimate three: a thread of numbers and identifiers)."""

    def __init__(self, context_tokens: int) -> None:
        super().__init__(answer("Part summary."), delay_s=0.005)
        self.context_tokens = context_tokens

    async def submit(self, job: Job) -> JobHandle:
        tokens = len(job.turns[-1].content.encode()) // 2
        if tokens > self.context_tokens:
            self.scripts.append([started(), Failed(FailureKind.PROMPT_TOO_LONG, f"about {tokens} tokens")])
        return await super().submit(job)


async def test_a_part_the_engine_finds_too_long_is_halved_and_nothing_is_lost() -> None:
    engine, target = StrictTokenizer(context_tokens=1024 - 64 - 64), MemoryTarget()
    flow = AnswerFlow("test", engine, RateLimiter(0, 60), STYLE)
    final = await Summaries(flow).summarize(request(200), target)
    assert isinstance(final, Done) and final.text == "Part summary."
    refused = [j for j, h in zip(engine.jobs, engine.handles, strict=True)
               if isinstance(h.final, Failed) and h.final.kind is FailureKind.PROMPT_TOO_LONG]
    answered = [j for j, h in zip(engine.jobs, engine.handles, strict=True)
                if isinstance(h.final, Done) and "Here is part" in j.turns[0].content]
    assert refused and len(answered) > len(refused)
    said = [line for j in answered for line in j.turns[0].content.split("\n") if line.startswith("User")]
    expected = [line for line in transcript(thread(200)) if line.startswith("User")]
    assert sorted(said, key=expected.index) == expected  # each message in one part, none lost or repeated
    combined = [j.turns[0].content for j in engine.jobs if "Here are summaries" in j.turns[0].content]
    assert sum(text.count("\nPart ") + text.startswith("Part ") for text in combined) >= len(answered)


def test_halving_splits_lines_then_cuts_a_lone_line_and_stops_when_small() -> None:
    assert halve(["a", "b", "c"]) == [["a"], ["b", "c"]]
    (cut,) = halve(["x" * 200])  # type: ignore[misc]
    assert cut == ["x" * 100 + " […]"]
    assert halve(cut) == [["x" * 50 + " […]"]]  # the mark is not counted twice
    assert halve(["short"]) is None and halve([]) is None
