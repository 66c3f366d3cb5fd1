"""Where replies go: a ``Sink`` posts, edits and deletes the bot's messages in one conversation; a message is a
``Reply``, its text plus the controls (buttons) shown under it. An ``AnswerTarget`` is where one question's
answer goes: a notice, or the answer's first message (whose sink the answer then streams into); a target that
must acknowledge a question early (a Discord interaction: 3 s) is also ``Accepting``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from bots.stream import AnswerStreamer


@dataclass(frozen=True, slots=True)
class Control:
    """A button under a message. ``action`` says what pressing it asks for (``stop``, ``regenerate``...);
    ``value`` what it is about (a job id). Platforms render it as their own component (a Slack ``button`` in an
    ``actions`` block, a Discord button whose ``custom_id`` is ``engbot:<action>:<value>``)."""

    action: str
    label: str
    value: str = ""
    style: Literal["default", "primary", "danger"] = "default"

    @property
    def custom_id(self) -> str:
        """``engbot:<action>:<value>``: the id a press comes back with (Discord allows 100 characters, Slack's
        action_id 255)."""
        return f"engbot:{self.action}:{self.value}"


@dataclass(frozen=True, slots=True)
class Reply:
    """One message as the bot shows it."""

    text: str
    controls: tuple[Control, ...] = ()


class Sink(Protocol):
    """One conversation on one platform, as far as the bot's own messages go."""

    async def post(self, reply: Reply) -> str:
        """Post a new message in the conversation; return its id."""
        ...

    async def edit(self, message_id: str, reply: Reply, *, final: bool = False) -> None:
        """Replace a message the bot posted (its text and controls). ``final``: the last edit of an answer's
        message, which must arrive (a platform with an edit budget lets it go first)."""
        ...

    async def delete(self, message_id: str) -> None:
        """Remove a message the bot posted (raises when the platform does not allow it)."""
        ...


@dataclass(frozen=True, slots=True)
class Opened:
    """The first message of an answer: where it is (``sink``, ``message_id``) and what it shows already.

    ``stream``: the platform streams this answer its own way (``bots.stream.AnswerStreamer``) instead of by
    edits of a placeholder; then there may be no message yet (``message_id`` empty)."""

    sink: Sink
    message_id: str
    shown: Reply
    stream: AnswerStreamer | None = None


class AnswerTarget(Protocol):
    """Where one question's answer goes (a Slack thread, a Discord thread or DM, a slash command's response)."""

    async def notice(self, text: str) -> None:
        """Say something that is not an answer (busy, rate limited, help): as a reply, or privately where the
        platform can (an ephemeral response)."""
        ...

    async def open(self, placeholder: Reply) -> Opened:
        """Show the answer's first message: ``placeholder``, where the platform shows one at this point; or offer
        the platform's own streaming (``Opened.stream``), which shows its first message once there is text."""
        ...


@runtime_checkable
class Accepting(Protocol):
    """An ``AnswerTarget`` that must acknowledge its question before anything that can wait. Optional: the answer
    flow awaits ``accept`` once the rate limit let the question through, before it reads the conversation or
    submits the job (either can take seconds); targets without it are simply not asked."""

    async def accept(self) -> None:
        """Acknowledge the question (e.g. Discord's deferred "thinking…" response). Notices given after it must
        still reach only the asker where they did before."""
        ...
