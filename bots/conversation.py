"""A thread's messages as the conversation the model sees, and who may be heard in it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from engine.types import Role, Turn


def allowed(value: str | None, allow_list: frozenset[str]) -> bool:
    """Empty allow-list: everyone."""
    return not allow_list or (value is not None and value in allow_list)


@dataclass(frozen=True, slots=True)
class Said:
    """One message of a conversation, as an adapter reads it from a thread."""

    text: str
    speaker: str | None  # who wrote it: an id stable within the conversation; None for the bot itself
    name: str = ""  # what to call the speaker ("Ann", "@U0123ABCD"); the id when empty


def conversation(messages: Iterable[Said], max_chars: int = 24_000) -> tuple[Turn, ...]:
    """Turns from a thread's messages, oldest first: the bot's as assistant turns, everyone else's as user turns.

    When more than one person took part, each person's message starts with their name ("Ann: ..."), so the model
    knows who said what. Keeps the newest messages within ``max_chars`` (the engine trims to the exact token
    budget), merges consecutive messages of one side, and drops empty ones.
    """
    said = [m for m in messages if m.text.strip()]
    named = len({m.speaker for m in said if m.speaker is not None}) > 1
    turns: list[Turn] = []
    for message in said:
        text = message.text.strip()
        role: Role = "assistant" if message.speaker is None else "user"
        if named and message.speaker is not None:
            text = f"{message.name or message.speaker}: {text}"
        if turns and turns[-1].role == role:
            turns[-1] = Turn(role, f"{turns[-1].content}\n\n{text}")
        else:
            turns.append(Turn(role, text))
    kept: list[Turn] = []
    total = 0
    for turn in reversed(turns):
        total += len(turn.content)
        if kept and total > max_chars:
            break
        kept.append(turn)
    kept.reverse()
    while kept and kept[0].role != "user":
        kept.pop(0)
    return tuple(kept)
