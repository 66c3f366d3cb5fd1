"""A browser's side of the playground: its session (who it is, the event streams it has open) and its conversation,
which is the ``Sink`` and ``AnswerTarget`` the answer flow writes to. Every change is published to the session's
event streams, and a stream that (re)connects first gets the whole conversation (``snapshot``)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from bots.conversation import Said, conversation
from bots.sink import Control, Opened, Reply
from engine.types import Turn

Kind = Literal["user", "bot", "notice"]
STREAM_BACKLOG = 2_000  # events a slow browser may fall behind before its stream is ended (it reconnects)


@dataclass(eq=False)
class Message:
    id: str
    kind: Kind
    text: str
    controls: tuple[Control, ...] = ()

    @property
    def job_id(self) -> str:
        """The job behind a bot message (its buttons name it), or empty."""
        return next((c.value for c in self.controls if c.value), "")

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "text": self.text,
                "controls": [{"id": c.custom_id, "action": c.action, "label": c.label, "style": c.style}
                             for c in self.controls]}


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    data: dict[str, Any]


class Session:
    """One browser (its cookie): who asks, its conversation, and its open event streams."""

    def __init__(self, cookie: str, answer_text: Callable[[str], str | None]) -> None:
        # the cookie itself never leaves this object: logs and the rate limit see a digest of it
        self.user = hashlib.sha256(cookie.encode()).hexdigest()[:12]
        self._answer_text = answer_text
        self._streams: set[asyncio.Queue[Event | None]] = set()
        self.conversation = Conversation(self, answer_text)

    def new_conversation(self) -> Conversation:
        self.conversation = Conversation(self, self._answer_text)
        self.publish(Event("reset", {"conversation": self.conversation.id}))
        return self.conversation

    def snapshot(self) -> dict[str, Any]:
        current = self.conversation
        return {"conversation": current.id, "messages": [m.as_json() for m in current.messages.values()]}

    # ---- event streams ----

    @contextlib.contextmanager
    def stream(self) -> Iterator[asyncio.Queue[Event | None]]:
        """The events of this session from now on; None ends the stream (the server closes, or it fell behind)."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue(STREAM_BACKLOG)
        self._streams.add(queue)
        try:
            yield queue
        finally:
            self._streams.discard(queue)

    @property
    def streams(self) -> int:
        return len(self._streams)

    def publish(self, event: Event) -> None:
        for queue in list(self._streams):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:  # a browser that stopped reading: end its stream; it reconnects
                self._end(queue)

    def tell(self, text: str) -> None:
        """A word for this browser alone (what a press did not do): shown, not kept."""
        self.publish(Event("tell", {"text": text}))

    def close_streams(self) -> None:
        for queue in list(self._streams):
            self._end(queue)

    def _end(self, queue: asyncio.Queue[Event | None]) -> None:
        self._streams.discard(queue)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)


class Conversation:
    """One chat: the messages it shows, oldest first. The answer flow's ``Sink`` (the bot's messages) and, through
    ``target``, its ``AnswerTarget``."""

    def __init__(self, session: Session, answer_text: Callable[[str], str | None]) -> None:
        self.id = secrets.token_hex(6)
        self.session = session
        self.messages: dict[str, Message] = {}
        self._answer_text = answer_text  # job id -> the model's whole text of an answer that ended, if known
        self._ids = itertools.count(1)

    def add(self, kind: Kind, reply: Reply) -> Message:
        message = Message(f"{self.id}-{next(self._ids)}", kind, reply.text, reply.controls)
        self.messages[message.id] = message
        self._publish("post", message)
        return message

    def _publish(self, kind: str, message: Message) -> None:
        self.session.publish(Event(kind, {"conversation": self.id, "message": message.as_json()}))

    # ---- Sink ----

    async def post(self, reply: Reply) -> str:
        return self.add("bot", reply).id

    async def edit(self, message_id: str, reply: Reply, *, final: bool = False) -> None:
        message = self.messages.get(message_id)
        if message is None:
            raise LookupError(f"no message {message_id} in this conversation")
        message.text, message.controls = reply.text, reply.controls
        self._publish("edit", message)

    async def delete(self, message_id: str) -> None:
        if self.messages.pop(message_id, None) is not None:
            self.session.publish(Event("delete", {"conversation": self.id, "id": message_id}))

    # ---- what the model reads ----

    def turns_until(self, message_id: str) -> tuple[Turn, ...]:
        """The conversation up to and including the question ``message_id``: the person's messages, and the bot's
        answers that ended (their whole model text, Continue included); notices and unfinished answers are left
        out."""
        said: list[Said] = []
        for message in self.messages.values():
            if message.kind == "user":
                said.append(Said(message.text, "you"))
            elif message.kind == "bot" and message.job_id:
                text = self._answer_text(message.job_id)
                if text:
                    said.append(Said(text, None))
            if message.id == message_id:
                break
        return conversation(said)

    def target(self) -> Target:
        return Target(self)


class Target:
    """Where one question's answer goes: its conversation (``bots.sink.AnswerTarget``)."""

    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation

    async def notice(self, text: str) -> None:
        self.conversation.add("notice", Reply(text))

    async def open(self, placeholder: Reply) -> Opened:
        message = self.conversation.add("bot", placeholder)
        return Opened(self.conversation, message.id, placeholder)
