"""What an adapter decides to do with an event, in one vocabulary for every platform. The platforms' pure
``events`` modules return these; the adapters act on them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Ignore:
    """Do nothing. ``log``: the user addressed the bot (an allow-list refused it) and the operator should be
    able to find out why; else it was never for the bot (logged at debug level at most)."""

    reason: str
    log: bool = False


@dataclass(frozen=True, slots=True)
class Notice:
    """Reply with this text at once, no model involved; log ``reason`` when set."""

    text: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Ask:
    """Answer ``prompt``: the question as plain text (the bot's mention removed)."""

    prompt: str
