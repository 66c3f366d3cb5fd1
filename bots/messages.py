"""Every text the bot says about itself, in one place, and the one reply for each way an answer can fail."""

from __future__ import annotations

from engine.types import Failed, FailureKind


class Messages:
    """Every text the bot says about itself, in one place."""

    HELP = ("Hi! Ask me anything: mention me with your question, e.g. `@engbot What is a closure in Python?` "
            "I answer in the thread, and follow-ups in the thread continue the conversation.")
    THINKING = "_Thinking…_"
    QUEUED = "_Waiting for my turn: position {position} in the queue…_"
    BUSY = "I'm busy with other questions right now: please try again in a moment."
    RATE_LIMITED = "You're asking faster than I can answer: please wait {seconds} s and try again."
    EMPTY_ANSWER = "_(The model gave an empty answer. Try rephrasing the question.)_"
    FAILED = "⚠️ Sorry, something went wrong while answering. The error has been logged."
    STOPPED = "_(Stopped.)_"
    LOAD_FAILED = "⚠️ The model could not be loaded, so I can't answer right now. The error has been logged."
    TIMEOUT = "⚠️ Sorry, the answer took too long and was stopped ({reason})."
    PROMPT_TOO_LONG = "⚠️ {reason}"
    SHUTDOWN = "⚠️ I'm restarting and had to stop this answer: please ask again in a moment."
    CRASHED = "⚠️ The model crashed while answering. It has been restarted: please ask again."
    UNAVAILABLE = "⚠️ The bot is unavailable right now: please try again in a moment."
    NOT_ALLOWED = "Sorry, I'm not allowed to answer here."
    MOVED = "_(This answer ran longer than this message can be edited: it continues below.)_"
    RETRACTED = "_(Part of an answer that was started again: the answer is above.)_"
    NO_TEXT = "I can only read text: please type your question (files and images are not supported)."
    CURSOR = " ▌"


# The reply for each way a job can fail: one text per kind, every kind covered (tests/unit check it).
FAILURE_TEXTS: dict[FailureKind, str] = {
    FailureKind.TIMEOUT: Messages.TIMEOUT,
    FailureKind.CRASHED: Messages.CRASHED,
    FailureKind.CANCELLED: Messages.STOPPED,
    FailureKind.PROMPT_TOO_LONG: Messages.PROMPT_TOO_LONG,
    FailureKind.LOAD_FAILED: Messages.LOAD_FAILED,
    FailureKind.SHUTDOWN: Messages.SHUTDOWN,
    FailureKind.BUSY: Messages.BUSY,
    FailureKind.ERROR: Messages.FAILED,
}
# Failures users cause or expect: not worth a warning in the log.
EXPECTED_FAILURES = frozenset({FailureKind.CANCELLED, FailureKind.PROMPT_TOO_LONG})


def failure_text(event: Failed) -> str:
    """The reply that replaces an answer that failed. Internal details stay in the log; ``reason`` is shown
    where it is the user's to know (how long the answer took, how long the message was)."""
    return FAILURE_TEXTS.get(event.kind, Messages.FAILED).format(reason=event.reason)
