"""A ``JobSubmitter`` whose jobs play a script of engine events through real ``JobHandle``s.

For what the real engine cannot be made to do on demand: an answer of exactly this text (say, one whose Slack
rendering grows), or a job taken over by another Redis worker host halfway (``Started(attempt=2)``).

    engine = ScriptedEngine(answer("Q&A: a < b. " * 100))
    adapter = SlackAdapter(settings, engine)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from engine.engine import JobHandle
from engine.types import Done, Event, Failed, Job, Started, TextPiece


def pieces(text: str, size: int = 4) -> list[TextPiece]:
    """``text`` as the engine streams it: a few characters at a time."""
    return [TextPiece(text[i:i + size]) for i in range(0, len(text), size)]


def started(attempt: int = 1) -> Started:
    return Started(worker=0, queue_wait_s=0.0, prompt_tokens=8, attempt=attempt)


def done(text: str) -> Done:
    return Done(text=text, prompt_tokens=8, completion_tokens=max(1, len(text) // 4), finish_reason="stop")


def answer(text: str, size: int = 4) -> list[Event]:
    """A whole answer: started, streamed, done."""
    return [started(), *pieces(text, size), done(text)]


class ScriptedEngine:
    """Every job submitted gets its own handle playing ``script``, ``delay_s`` between events."""

    def __init__(self, script: Iterable[Event], delay_s: float = 0.002) -> None:
        self.script: Sequence[Event] = list(script)
        self.delay_s = delay_s
        self.jobs: list[Job] = []
        self.handles: list[JobHandle] = []
        self._players: set[asyncio.Task[None]] = set()

    async def asubmit(self, job: Job) -> JobHandle:
        handle = JobHandle(job, self._cancel)
        self.jobs.append(job)
        self.handles.append(handle)
        player = asyncio.create_task(self._play(handle))
        self._players.add(player)
        player.add_done_callback(self._players.discard)
        return handle

    async def _play(self, handle: JobHandle) -> None:
        for event in self.script:
            if handle.done:
                return
            await asyncio.sleep(self.delay_s)
            handle._emit(event)

    @staticmethod
    def _cancel(handle: JobHandle) -> None:
        handle._emit(Failed("cancelled", "cancelled"))
