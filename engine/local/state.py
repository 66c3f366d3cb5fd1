"""The engine's bookkeeping: one record per job in flight and one per replica process."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field

from engine.api import JobFeed
from engine.local.router import ReplicaLoad, ReplicaState
from engine.replica.process import ReplicaProcess


@dataclass(eq=False)
class JobEntry:
    """A job from ``submit`` to its final event."""

    feed: JobFeed
    conversation: int  # jobs of one conversation share a prompt prefix: keep them on one replica
    submitted_at: float
    started_at: float = 0.0
    first_token_at: float = 0.0
    replica: ManagedReplica | None = None
    seq: int = 0  # its number in the replica protocol, once sent
    stopping: bool = False  # cancelled by shutdown, not by the caller
    cancelled: bool = False
    pieces: list[str] = field(default_factory=list)
    expiry: asyncio.TimerHandle | None = None  # fails the job if it waits for a replica too long

    @property
    def job_id(self) -> str:
        return self.feed.job.id

    @property
    def short_id(self) -> str:
        return self.feed.job.id[:8]


@dataclass(eq=False)
class ManagedReplica:
    """One replica process and what the engine knows of it."""

    process: ReplicaProcess
    state: ReplicaState = "stopped"
    jobs: set[JobEntry] = field(default_factory=set)  # assigned: running, or waiting for the replica to start
    waiting: list[JobEntry] = field(default_factory=list)  # assigned while the replica starts
    failures: int = 0  # failed starts in a row
    retry_at: float = 0.0
    error: str = ""  # why the last start failed
    timer: asyncio.TimerHandle | None = None  # idle unload (LOAD_ON_FLY) or the next start attempt
    conversations: OrderedDict[int, None] = field(default_factory=OrderedDict)  # whose prompts it holds
    assigned_at: float = 0.0

    def __repr__(self) -> str:
        return f"<replica {self.index} {self.state} jobs={len(self.jobs)}>"

    @property
    def index(self) -> int:
        return self.process.index

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def load(self, conversation: int) -> ReplicaLoad:
        """What the router needs to know of this replica, for a job of ``conversation``."""
        return ReplicaLoad(self.state, len(self.jobs), conversation in self.conversations, self.assigned_at,
                           self.retry_at)

    def remember(self, conversation: int, keep: int) -> None:
        """The replica now holds ``conversation``'s prompt (it keeps about ``keep`` of them, newest first)."""
        self.conversations[conversation] = None
        self.conversations.move_to_end(conversation)
        while len(self.conversations) > keep:
            self.conversations.popitem(last=False)
