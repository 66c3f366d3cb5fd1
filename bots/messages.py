"""Every text the bot says about itself, in one place, and the one reply for each way an answer can fail."""

from __future__ import annotations

from engine.types import Failed, FailureKind


class Messages:
    """Every text the bot says about itself, in one place."""

    HELP = ("Hi! Ask me anything: mention me with your question, e.g. `@engbot What is a closure in Python?` "
            "I answer in the thread, and follow-ups in the thread continue the conversation.")
    THINKING = "_Thinking…_"
    QUEUED = "_Waiting for my turn: {place} in line{eta}…_"
    BUSY = "I'm busy with other questions right now: please try again in a moment."
    RATE_LIMITED = "You're asking faster than I can answer: please wait {seconds} s and try again."
    EMPTY_ANSWER = "_(The model gave an empty answer. Try rephrasing the question.)_"
    FAILED = "⚠️ Sorry, something went wrong while answering. The error has been logged."
    STOPPED = "_(Stopped.)_"
    STOPPED_BY = "_(Stopped by {who}.)_"
    # presses on an answer's buttons: only the presser reads these
    PRESS_UNKNOWN = ("This answer's buttons no longer work (the bot restarted since, or the answer is old): "
                     "ask again to get a new one.")
    PRESS_NOT_YOURS = "Only the person who asked (or an admin) can {what} this answer."
    PRESS_ENDED = "This answer has already ended."
    PRESS_RUNNING = "This answer is still being written: wait for it to finish, or stop it first."
    PRESS_NOT_CUT = "This answer is complete: there is nothing to continue."
    PRESS_BUSY = "That is being done already."
    PRESS_TOO_EARLY = "You can rate this answer once it is finished."
    THANKS = "Thanks for the feedback!"
    VOTED = "You have rated this answer already."
    # button labels
    STOP = "Stop"
    REGENERATE = "Regenerate"
    CONTINUE = "Continue"
    GOOD = "👍"
    BAD = "👎"
    LOAD_FAILED = "⚠️ The model could not be loaded, so I can't answer right now. The error has been logged."
    TIMEOUT = "⚠️ Sorry, the answer took too long and was stopped ({reason})."
    PROMPT_TOO_LONG = "⚠️ {reason}"
    SHUTDOWN = "⚠️ I'm restarting and had to stop this answer: please ask again in a moment."
    CRASHED = "⚠️ The model crashed while answering. It has been restarted: please ask again."
    UNAVAILABLE = "⚠️ The bot is unavailable right now: please try again in a moment."
    SERVER_UNAVAILABLE = "⚠️ The model server {reason}: please try again in a moment."
    NOT_ALLOWED = "Sorry, I'm not allowed to answer here."
    MOVED = "_(This answer ran longer than this message can be edited: it continues below.)_"
    RETRACTED = "_(Part of an answer that was started again: the answer is above.)_"
    NO_TEXT = "I can only read text, text files and PDFs: please type your question."
    CURSOR = " ▌"
    # Slack's assistant status under a thread ("engbot is thinking…"), while no text is shown yet
    STATUS_THINKING = "is thinking…"
    STATUS_WAITING = "is waiting for its turn…"
    STATUS_QUEUED = "{place} in line{eta}"
    # files in a question
    FILES_UNREADABLE = "I could not read the attached file(s), and there is no question to answer without them:"
    # the persona command (/engbot persona ...); only the admin who ran it reads these
    PERSONA_USAGE = ("Usage: `{command} persona set <text>` (the system prompt answers get in this channel), "
                     "`{command} persona show`, `{command} persona reset`.")
    PERSONA_ADMINS_ONLY = "Only admins ({setting}) can change or see this channel's persona."
    PERSONA_SET = "This channel's persona is set ({chars:,} characters). Answers here now start from it:\n{quoted}"
    PERSONA_SHOW = "This channel's persona, set by {who}{when}:\n{quoted}"
    PERSONA_NONE = "No persona is set in this channel: answers use the system prompt from {source}:\n{quoted}"
    PERSONA_RESET = "This channel's persona is removed: answers use the system prompt from {source} again."
    PERSONA_WAS_NONE = "No persona was set in this channel."
    PERSONA_TOO_LONG = "That persona is too long for the model: {why}. Please shorten it."
    PERSONA_EMPTY = "The persona text is empty. " + PERSONA_USAGE
    PERSONA_STORE_FAILED = "⚠️ The persona could not be saved or read right now (the error has been logged)."
    # thread summaries
    SUMMARY_READING = "_Reading the thread…_"
    SUMMARY_PARTS = "_Summarizing {parts} parts… ({done} of {parts} done)_"
    SUMMARY_COMBINING = "_Combining {count} summaries…_"
    SUMMARY_EMPTY = "There is nothing to summarize in this thread."
    SUMMARY_UNREADABLE = "⚠️ I could not read this thread (the error has been logged)."
    SUMMARY_NOT_ALLOWED = "Sorry, I'm not allowed to summarize here."


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, ..., 21st."""
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def queued_text(position: int, eta_s: float | None = None) -> str:
    """What a waiting question's placeholder says: "2nd in line, about 15 s" (the estimate only once known)."""
    return Messages.QUEUED.format(place="next" if position == 1 else ordinal(position), eta=_eta(eta_s))


def queued_status(position: int, eta_s: float | None = None) -> str:
    """The queue position as plain text for a status line: "2nd in line, about 15 s"."""
    return Messages.STATUS_QUEUED.format(place="next" if position == 1 else ordinal(position),
                                         eta=_eta(eta_s)).capitalize()


def _eta(eta_s: float | None) -> str:
    if eta_s is None:
        return ""
    return f", about {max(1, round(eta_s))} s" if eta_s < 90 else f", about {max(2, round(eta_s / 60))} min"


# The reply for each way a job can fail: one text per kind, every kind covered (tests/unit check it).
FAILURE_TEXTS: dict[FailureKind, str] = {
    FailureKind.TIMEOUT: Messages.TIMEOUT,
    FailureKind.CRASHED: Messages.CRASHED,
    FailureKind.CANCELLED: Messages.STOPPED,
    FailureKind.PROMPT_TOO_LONG: Messages.PROMPT_TOO_LONG,
    FailureKind.LOAD_FAILED: Messages.LOAD_FAILED,
    FailureKind.SHUTDOWN: Messages.SHUTDOWN,
    FailureKind.BUSY: Messages.BUSY,
    FailureKind.UNAVAILABLE: Messages.SERVER_UNAVAILABLE,
    FailureKind.ERROR: Messages.FAILED,
}
# Failures users cause or expect: not worth a warning in the log.
EXPECTED_FAILURES = frozenset({FailureKind.CANCELLED, FailureKind.PROMPT_TOO_LONG})


def failure_text(event: Failed) -> str:
    """The reply that replaces an answer that failed. Internal details stay in the log; ``reason`` is shown
    where it is the user's to know (how long the answer took, how long the message was)."""
    return FAILURE_TEXTS.get(event.kind, Messages.FAILED).format(reason=event.reason)
