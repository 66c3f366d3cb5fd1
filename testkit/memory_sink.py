"""A ``Sink`` and an ``AnswerTarget`` that keep the conversation in memory: the answer flow and streaming, tested
with no platform at all."""

from __future__ import annotations

from bots.sink import Control, Opened, Reply


class MemorySink:
    """A ``Sink`` that keeps its messages; ``can_delete=False`` as where deleting is refused; ``fail_edits``
    makes every edit fail (a platform that went away)."""

    def __init__(self, *, can_delete: bool = True, fail_edits: bool = False) -> None:
        self.can_delete, self.fail_edits = can_delete, fail_edits
        self.messages: dict[str, str] = {}  # id -> text, in posting order
        self.controls: dict[str, tuple[Control, ...]] = {}  # id -> the buttons it shows
        self.calls: list[tuple[str, str]] = []  # (operation, message id)
        self._ids = iter(range(1, 1_000_000))

    async def post(self, reply: Reply) -> str:
        message_id = str(next(self._ids))
        self.messages[message_id], self.controls[message_id] = reply.text, reply.controls
        self.calls.append(("post", message_id))
        return message_id

    async def edit(self, message_id: str, reply: Reply, *, final: bool = False) -> None:
        if message_id not in self.messages:
            raise LookupError(f"no message {message_id}")
        if self.fail_edits:
            raise ConnectionError("the platform went away")
        self.messages[message_id], self.controls[message_id] = reply.text, reply.controls
        self.calls.append(("edit", message_id))

    async def delete(self, message_id: str) -> None:
        if not self.can_delete:
            raise PermissionError("deleting is not allowed here")
        del self.messages[message_id], self.controls[message_id]
        self.calls.append(("delete", message_id))


class MemoryTarget:
    """An ``AnswerTarget`` over a ``MemorySink``: notices are posted there too, and listed in ``notices``."""

    def __init__(self, sink: MemorySink | None = None, *, fail_open: bool = False) -> None:
        self.sink = sink or MemorySink()
        self.fail_open = fail_open
        self.notices: list[str] = []
        self.opened = 0

    async def notice(self, text: str) -> None:
        self.notices.append(text)
        await self.sink.post(Reply(text))

    async def open(self, placeholder: Reply) -> Opened:
        if self.fail_open:
            raise ConnectionError("the platform refused the placeholder")
        self.opened += 1
        return Opened(self.sink, await self.sink.post(placeholder), placeholder)


class AcceptingTarget(MemoryTarget):
    """A ``MemoryTarget`` that acknowledges its question first (``bots.sink.Accepting``, as a Discord interaction
    must within 3 s); ``steps`` lists what happened to it, in order: accept, notice, open."""

    def __init__(self, sink: MemorySink | None = None, *, steps: list[str] | None = None) -> None:
        super().__init__(sink)
        self.steps = steps if steps is not None else []

    async def accept(self) -> None:
        self.steps.append("accept")

    async def notice(self, text: str) -> None:
        self.steps.append("notice")
        await super().notice(text)

    async def open(self, placeholder: Reply) -> Opened:
        self.steps.append("open")
        return await super().open(placeholder)
