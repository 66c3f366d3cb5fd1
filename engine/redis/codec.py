"""Jobs and events as the Redis queue stores them (JSON). The format is shared by every ``engbot run`` and
``engbot worker`` process of a cluster, which may run different versions during a rolling update: readers drop
fields they do not know and skip event types they do not know, and renamed fields are written under both names
for one release (``Started.replica`` was ``worker``)."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from typing import Any, cast

from engine.types import Done, Event, Failed, FailureKind, GenParams, Job, Queued, Role, Started, TextPiece, Turn


def job_to_json(job: Job) -> str:
    return json.dumps({
        "id": job.id, "turns": [[t.role, t.content] for t in job.turns],
        "params": asdict(job.params) if job.params is not None else None, "platform": job.platform,
        "dedup_key": job.dedup_key, "system_prompt": job.system_prompt, "user": job.user, "prefill": job.prefill,
        "resample": job.resample, "model": job.model,
    }, ensure_ascii=False)


def job_from_json(text: str) -> Job:
    """Raises ValueError (or KeyError/TypeError) on a malformed entry."""
    d = json.loads(text)
    return Job(
        turns=tuple(Turn(cast(Role, role), str(content)) for role, content in d["turns"]),
        params=GenParams(**d["params"]) if d.get("params") else None,
        platform=str(d.get("platform", "cli")), dedup_key=d.get("dedup_key"),
        system_prompt=d.get("system_prompt"), id=str(d["id"]), user=d.get("user"),
        prefill=str(d.get("prefill") or ""), resample=bool(d.get("resample")),
        model=str(d["model"]) if d.get("model") else None,
    )


EVENT_TYPES: dict[str, type[Any]] = {cls.__name__: cls for cls in (Queued, Started, TextPiece, Done, Failed)}
_EVENT_FIELDS = {name: frozenset(f.name for f in fields(cls)) for name, cls in EVENT_TYPES.items()}


def event_to_wire(event: Event, attempt: int, seq: int) -> dict[str, Any]:
    """``{"a": attempt, "n": seq, "t": type, "f": fields}``; a ``Failed.kind`` goes as its name."""
    values = asdict(event)
    if isinstance(event, Started):
        values["worker"] = event.replica  # the field's old name, for adapters of the previous release
    return {"a": attempt, "n": seq, "t": type(event).__name__, "f": values}


def event_from_wire(wire: dict[str, Any]) -> Event | None:
    """The event, or None for a type this version does not know (a newer host's); unknown fields are dropped,
    an unknown failure kind reads as ``ERROR``."""
    name = wire.get("t", "")
    if name not in EVENT_TYPES:
        return None
    values = dict(wire["f"])
    if name == "Started" and "replica" not in values and "worker" in values:  # from a previous release's host
        values["replica"] = values["worker"]
    if name == "Failed":
        values["kind"] = FailureKind.parse(str(values.get("kind", "")))
    known = _EVENT_FIELDS[name]
    return cast(Event, EVENT_TYPES[name](**{k: v for k, v in values.items() if k in known}))


def merge_text(events: list[Event]) -> list[Event]:
    """Consecutive TextPiece events as one (``TextPiece`` is "one token or a few")."""
    merged: list[Event] = []
    for event in events:
        if isinstance(event, TextPiece) and merged and isinstance(merged[-1], TextPiece):
            merged[-1] = TextPiece(merged[-1].text + event.text)
        else:
            merged.append(event)
    return merged
