"""The Redis wire format between releases: a rolling update mixes old and new ``engbot run`` and ``engbot
worker`` processes, so renamed fields travel under both names and unknown ones are dropped."""

from __future__ import annotations

from engine.redis.codec import event_from_wire, event_to_wire
from engine.types import Failed, FailureKind, Started


def test_started_names_its_replica_under_the_old_name_too() -> None:
    wire = event_to_wire(Started(replica=1, queue_wait_s=0.5, prompt_tokens=20, cached_tokens=4), 2, 7)
    assert (wire["a"], wire["n"], wire["t"]) == (2, 7, "Started")
    assert wire["f"]["replica"] == wire["f"]["worker"] == 1  # an adapter of the previous release reads "worker"
    assert event_from_wire(wire) == Started(replica=1, queue_wait_s=0.5, prompt_tokens=20, cached_tokens=4)


def test_an_event_from_a_previous_release_reads() -> None:
    old = {"a": 1, "n": 1, "t": "Started", "f": {"worker": 0, "queue_wait_s": 0.1, "prompt_tokens": 9,
                                                 "dropped_turns": 0, "attempt": 1, "cached_tokens": 0}}
    assert event_from_wire(old) == Started(replica=0, queue_wait_s=0.1, prompt_tokens=9)


def test_failure_kinds_travel_as_their_names() -> None:
    wire = event_to_wire(Failed(FailureKind.CANCELLED, "cancelled", "partial"), 1, 3)
    assert wire["f"]["kind"] == "cancelled"
    event = event_from_wire(wire)
    assert isinstance(event, Failed) and event.kind is FailureKind.CANCELLED and event.partial == "partial"
    newer = {**wire, "f": {**wire["f"], "kind": "quota_exceeded", "hint": "new field"}}
    assert event_from_wire(newer) == Failed(FailureKind.ERROR, "cancelled", "partial")
    assert event_from_wire({**wire, "t": "Thinking"}) is None  # an event type this release does not know
