"""What a press on an answer's button asks for, and whether it may: a pure policy, tested without a platform.

Every control's id is ``engbot:<action>:<job id>`` (``bots.sink.Control.custom_id``), so a press names the answer
it is about even after a restart; whether that answer is still known is the registry's (``bots/answers.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from bots.messages import Messages


class Action(StrEnum):
    STOP = "stop"
    REGENERATE = "regenerate"
    CONTINUE = "continue"
    GOOD = "good"  # feedback: a thumbs up
    BAD = "bad"  # feedback: a thumbs down


FEEDBACK = frozenset({Action.GOOD, Action.BAD})
_CUSTOM_ID = re.compile(r"^engbot:(?P<action>[a-z]+):(?P<job>[0-9a-f]{1,64})$")


def parse(custom_id: str) -> tuple[Action, str] | None:
    """``(action, job id)`` of a control's id; None for an id that is not one of ours (or of a newer release)."""
    match = _CUSTOM_ID.match(custom_id)
    if match is None:
        return None
    try:
        return Action(match["action"]), match["job"]
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Press:
    """Someone pressed ``action`` on the answer of job ``job_id``. ``admin``: the platform's admin list holds them."""

    action: Action
    job_id: str
    user: str
    admin: bool = False


@dataclass(frozen=True, slots=True)
class AnswerState:
    """What a press is judged against: who asked, and where the answer is."""

    asker: str
    running: bool  # queued or streaming
    cut: bool = False  # it ended at MAX_NEW_TOKENS: it can be continued
    busy: bool = False  # a Regenerate or Continue of it is being started


@dataclass(frozen=True, slots=True)
class Accept:
    action: Action


@dataclass(frozen=True, slots=True)
class Refuse:
    """Nothing happens; the presser (only them) reads ``text``."""

    text: str


def judge(press: Press, answer: AnswerState | None) -> Accept | Refuse:
    """Whether the press does anything. The asker and admins may steer an answer; anyone may rate it."""
    if answer is None:
        return Refuse(Messages.PRESS_UNKNOWN)
    if press.action in FEEDBACK:
        return Refuse(Messages.PRESS_TOO_EARLY) if answer.running else Accept(press.action)
    if press.user != answer.asker and not press.admin:
        return Refuse(Messages.PRESS_NOT_YOURS.format(what=_WHAT[press.action]))
    if answer.busy:
        return Refuse(Messages.PRESS_BUSY)
    if press.action is Action.STOP:
        return Accept(press.action) if answer.running else Refuse(Messages.PRESS_ENDED)
    if answer.running:
        return Refuse(Messages.PRESS_RUNNING)
    if press.action is Action.CONTINUE and not answer.cut:
        return Refuse(Messages.PRESS_NOT_CUT)
    return Accept(press.action)


_WHAT = {Action.STOP: "stop", Action.REGENERATE: "regenerate", Action.CONTINUE: "continue"}
