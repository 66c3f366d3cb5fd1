"""The queue's Lua scripts (``lua/*.lua``): each runs atomically inside Redis, which is what makes ownership checks,
idempotent submits and takeovers safe between hosts. Their KEYS and ARGV are described at the top of each file."""

from __future__ import annotations

from importlib.resources import files


def _load(name: str) -> str:
    return files("engine.redis").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


SUBMIT = _load("submit")
WITHDRAW = _load("withdraw")
WRITE_EVENTS = _load("write_events")
REFRESH = _load("refresh")
TAKE_OVER = _load("take_over")
HAND_BACK = _load("hand_back")
POSITIONS = _load("positions")
PASS = _load("pass")
