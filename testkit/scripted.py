"""A ``Submitter`` whose jobs play a script of engine events through real ``JobHandle``s.

For what the real engine cannot be made to do on demand: an answer of exactly this text (say, one whose Slack
rendering grows), or a job taken over by another Redis host halfway (``Started(attempt=2)``).

    engine = ScriptedEngine(answer("Q&A: a < b. " * 100))
    adapter = SlackAdapter(settings, engine)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from engine.api import Health, JobFeed, JobHandle
from engine.metrics import EngineMetrics
from engine.types import Done, Event, Failed, FailureKind, FinishReason, Job, Started, TextPiece


def pieces(text: str, size: int = 4) -> list[TextPiece]:
    """``text`` as the engine streams it: a few characters at a time."""
    return [TextPiece(text[i:i + size]) for i in range(0, len(text), size)]


def started(attempt: int = 1) -> Started:
    return Started(replica=0, queue_wait_s=0.0, prompt_tokens=8, attempt=attempt)


def done(text: str, finish_reason: FinishReason = "stop") -> Done:
    return Done(text=text, prompt_tokens=8, completion_tokens=max(1, len(text) // 4), finish_reason=finish_reason)


def answer(text: str, size: int = 4, finish_reason: FinishReason = "stop") -> list[Event]:
    """A whole answer: started, streamed, done (``length``: cut at MAX_NEW_TOKENS)."""
    return [started(), *pieces(text, size), done(text, finish_reason)]


class ScriptedEngine:
    """Every job submitted gets its own handle playing ``script``, ``delay_s`` between events."""

    shutdown_grace_s = 0.0

    def __init__(self, script: Iterable[Event], delay_s: float = 0.002) -> None:
        self.script: Sequence[Event] = list(script)
        self.scripts: list[Sequence[Event]] = []  # scripts for the next jobs, in order (then ``script``)
        self.delay_s = delay_s
        self.metrics = EngineMetrics()
        self.jobs: list[Job] = []
        self.handles: list[JobHandle] = []
        self.accepting = True
        self._feeds: dict[str, JobFeed] = {}
        self._players: set[asyncio.Task[None]] = set()

    @property
    def queued(self) -> int:
        return 0

    @property
    def running(self) -> int:
        return sum(1 for feed in self._feeds.values() if not feed.done)

    async def start(self) -> None:
        self.accepting = True

    async def stop(self, grace_s: float | None = None) -> None:
        self.accepting = False
        for feed in self._feeds.values():
            feed.emit(Failed(FailureKind.SHUTDOWN, "stopped"))

    def health(self) -> Health:
        return Health(ok=True, checks={"engine": self.accepting})

    def describe(self) -> str:
        return "scripted engine"

    async def submit(self, job: Job) -> JobHandle:
        feed = JobFeed(job, self.cancel)
        self._feeds[job.id] = feed
        self.jobs.append(job)
        self.handles.append(feed.handle)
        player = asyncio.create_task(self._play(feed, self.scripts.pop(0) if self.scripts else self.script))
        self._players.add(player)
        player.add_done_callback(self._players.discard)
        return feed.handle

    async def _play(self, feed: JobFeed, script: Sequence[Event]) -> None:
        for event in script:
            if feed.done:
                return
            await asyncio.sleep(self.delay_s)
            feed.emit(event)

    def cancel(self, job_id: str) -> bool:
        feed = self._feeds.get(job_id)
        return feed is not None and feed.emit(Failed(FailureKind.CANCELLED, "cancelled"))
