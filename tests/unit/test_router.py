"""Which replica takes a job (``engine.local.router``): the dispatcher's policy, with no model and no process."""

from __future__ import annotations

from engine.local.router import ReplicaLoad, ReplicaState, Route, all_down, route


def load(state: ReplicaState = "ready", jobs: int = 0, *, holds: bool = False, assigned_at: float = 0.0,
         retry_at: float = 0.0) -> ReplicaLoad:
    return ReplicaLoad(state, jobs, holds, assigned_at, retry_at)


def test_the_least_loaded_replica_takes_the_job() -> None:
    assert route([load(jobs=2), load(jobs=1), load(jobs=3)], slots=8, now=0) == Route(1, start=False)
    # ties: the one that got a job longest ago
    assert route([load(jobs=1, assigned_at=5), load(jobs=1, assigned_at=2)], slots=8, now=0) == Route(1, False)


def test_the_replica_holding_the_conversation_is_worth_one_job_of_load() -> None:
    # holding the prefix wins a tie and a difference of one job...
    assert route([load(jobs=1), load(jobs=1, holds=True)], slots=8, now=0) == Route(1, False)
    assert route([load(jobs=1), load(jobs=2, holds=True)], slots=8, now=0) == Route(1, False)
    # ...but not two: spreading the load counts more than a cached prompt
    assert route([load(jobs=1), load(jobs=3, holds=True)], slots=8, now=0) == Route(0, False)


def test_ready_replicas_before_starting_ones_and_full_ones_never() -> None:
    assert route([load("starting"), load("ready", jobs=5)], slots=8, now=0) == Route(1, False)
    assert route([load("starting"), load("ready", jobs=8)], slots=8, now=0) == Route(0, False)  # waits for it
    assert route([load(jobs=2), load(jobs=2)], slots=2, now=0) is None
    assert route([load("stopping"), load(jobs=1)], slots=1, now=0) is None


def test_a_stopped_or_due_failed_replica_is_started_when_none_has_room() -> None:
    assert route([load(jobs=1), load("stopped")], slots=1, now=0) == Route(1, start=True)  # LOAD_ON_FLY
    assert route([load("failed", retry_at=10.0)], slots=1, now=9.0) is None  # not yet
    assert route([load("failed", retry_at=10.0)], slots=1, now=10.0) == Route(0, start=True)
    # a stopped replica still finishing its dead process's jobs is not restarted under them
    assert route([load("stopped", jobs=1)], slots=2, now=0) is None


def test_down_means_every_replica_failed_and_waits() -> None:
    assert all_down([load("failed", retry_at=10.0), load("failed", retry_at=12.0)], now=5.0)
    assert not all_down([load("failed", retry_at=10.0), load("failed", retry_at=12.0)], now=11.0)
    assert not all_down([load("failed", retry_at=10.0), load("starting")], now=5.0)
