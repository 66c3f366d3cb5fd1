"""Which model makes room for another (MAX_LOADED_MODELS): a pure policy over the models' states, no processes.

As Ollama does: a model that is asked for and not in memory loads at once while fewer than the limit are loaded;
otherwise the least recently used model that is not answering (nothing running or waiting for it) is unloaded
first, and the model waits until it is gone. A model that is answering is never unloaded: when every loaded model
answers, the model asked for waits for one of them to fall idle. One model unloads at a time: while one is
leaving, the next waiting model takes its place, and no second one is sent away for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

ModelState = Literal["unloaded", "loaded", "unloading"]


@dataclass(frozen=True, slots=True)
class ModelUse:
    name: str
    state: ModelState  # "loaded": some replica is loading or holds the model
    busy: bool  # answering, or questions wait for it
    last_used: float  # when it was last asked for (monotonic seconds)


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """``load``: the model may load now. Else ``unload`` names the model to unload first (None: wait)."""

    load: bool
    unload: str | None = None


def plan_load(models: Sequence[ModelUse], wanted: str, limit: int) -> LoadPlan:
    """May ``wanted`` load now, and if not, which model must go first? ``limit`` <= 0: no limit."""
    by_name = {m.name: m for m in models}
    if by_name[wanted].state == "loaded" or limit <= 0:
        return LoadPlan(load=True)
    occupied = sum(m.state != "unloaded" for m in models if m.name != wanted)
    if occupied < limit:
        return LoadPlan(load=True)
    if any(m.state == "unloading" for m in models):
        return LoadPlan(load=False)  # a place is being freed
    idle = [m for m in models if m.state == "loaded" and not m.busy and m.name != wanted]
    if not idle:
        return LoadPlan(load=False)
    return LoadPlan(load=False, unload=min(idle, key=lambda m: m.last_used).name)
