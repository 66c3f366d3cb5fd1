"""What the bot says when an answer fails: one text per failure kind, each kind covered."""

from __future__ import annotations

import pytest

from bots.messages import EXPECTED_FAILURES, FAILURE_TEXTS, Messages, failure_text
from engine.types import Failed, FailureKind


def test_every_failure_kind_has_its_own_text() -> None:
    assert set(FAILURE_TEXTS) == set(FailureKind)


@pytest.mark.parametrize("kind", list(FailureKind))
def test_the_text_of_each_kind(kind: FailureKind) -> None:
    text = failure_text(Failed(kind, "the answer took longer than 120 s"))
    assert text.strip() and "{" not in text
    if kind is not FailureKind.ERROR:
        assert text != Messages.FAILED  # only an unexpected error is "something went wrong"


def test_a_stopped_answer_says_stopped_and_reasons_are_shown_only_where_they_are_the_users() -> None:
    assert failure_text(Failed(FailureKind.CANCELLED, "cancelled")) == Messages.STOPPED
    assert "120 s" in failure_text(Failed(FailureKind.TIMEOUT, "the answer took longer than 120 s"))
    assert "about 900 tokens" in failure_text(Failed(FailureKind.PROMPT_TOO_LONG, "about 900 tokens"))
    assert "Traceback" not in failure_text(Failed(FailureKind.ERROR, "Traceback: KeyError"))
    assert FailureKind.CANCELLED in EXPECTED_FAILURES and FailureKind.CRASHED not in EXPECTED_FAILURES


def test_a_kind_from_a_newer_release_reads_as_an_error() -> None:
    assert FailureKind.parse("timeout") is FailureKind.TIMEOUT
    assert FailureKind.parse("gpu_on_fire") is FailureKind.ERROR
