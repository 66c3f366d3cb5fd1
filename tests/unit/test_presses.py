"""Who may press what on an answer (``bots.presses``), with no platform."""

from __future__ import annotations

import pytest

from bots.messages import Messages
from bots.presses import Accept, Action, AnswerState, Press, Refuse, judge, parse

RUNNING = AnswerState(asker="U1", running=True)
DONE = AnswerState(asker="U1", running=False)
CUT = AnswerState(asker="U1", running=False, cut=True)


def test_control_ids_name_the_action_and_the_job() -> None:
    assert parse("engbot:stop:0123abcd") == (Action.STOP, "0123abcd")
    assert parse("engbot:good:ff") == (Action.GOOD, "ff")
    for foreign in ("engbot:explode:00", "engbot:stop:", "engbot:stop:XYZ", "other:stop:00", "engbot:stop:00:x"):
        assert parse(foreign) is None


@pytest.mark.parametrize(("press", "answer", "verdict"), [
    (Press(Action.STOP, "j", "U1"), RUNNING, Accept(Action.STOP)),
    (Press(Action.STOP, "j", "U2"), RUNNING, Refuse(Messages.PRESS_NOT_YOURS.format(what="stop"))),
    (Press(Action.STOP, "j", "U2", admin=True), RUNNING, Accept(Action.STOP)),
    (Press(Action.STOP, "j", "U1"), DONE, Refuse(Messages.PRESS_ENDED)),
    (Press(Action.REGENERATE, "j", "U1"), DONE, Accept(Action.REGENERATE)),
    (Press(Action.REGENERATE, "j", "U1"), RUNNING, Refuse(Messages.PRESS_RUNNING)),
    (Press(Action.REGENERATE, "j", "U2"), DONE, Refuse(Messages.PRESS_NOT_YOURS.format(what="regenerate"))),
    (Press(Action.CONTINUE, "j", "U1"), CUT, Accept(Action.CONTINUE)),
    (Press(Action.CONTINUE, "j", "U1"), DONE, Refuse(Messages.PRESS_NOT_CUT)),
    (Press(Action.REGENERATE, "j", "U1"), AnswerState("U1", running=False, busy=True), Refuse(Messages.PRESS_BUSY)),
    (Press(Action.GOOD, "j", "U7"), DONE, Accept(Action.GOOD)),  # anyone may rate an answer...
    (Press(Action.BAD, "j", "U7"), RUNNING, Refuse(Messages.PRESS_TOO_EARLY)),  # ...once it is there
    (Press(Action.STOP, "j", "U1"), None, Refuse(Messages.PRESS_UNKNOWN)),  # from before a restart
])
def test_who_may_press_what(press: Press, answer: AnswerState | None, verdict: Accept | Refuse) -> None:
    assert judge(press, answer) == verdict
