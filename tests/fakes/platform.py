"""``engbot run`` with a stand-in chat platform, for tests and container smoke runs.

    python -m tests.fakes.platform run       # the real `engbot run`, with FakePlatform as its only adapter

Without a Slack or Discord token ``engbot run`` serves the web playground, which needs someone to type. This runs
the real command (settings, engine, HTTP endpoints, signal handling, graceful shutdown) and replaces only the
adapter discovery: the one adapter is "connected" at once and, if ``FAKE_PLATFORM_QUESTION`` is set, asks that
question when it starts and logs how the answer ended. With QUEUE_BACKEND=redis the question goes through Redis to
the ``engbot worker`` hosts. It lives under tests/ and is not part of the image; the container smoke runs mount
it (tests/docker/compose.fake-platform.yml, tests/docker/compose.scale-fake-platform.yml).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Mapping

from engine.api import JobHandle, Submitter
from engine.types import Done, Failed, GenParams, Job, TextPiece

log = logging.getLogger("engbot.fake_platform")


class FakePlatform:
    """An adapter (the ``bots.registry.Adapter`` protocol) with no network: optionally asks one question."""

    name = "fake"

    def __init__(self, engine: Submitter, question: str | None = None, params: GenParams | None = None) -> None:
        self.engine = engine
        self.question = question
        self.params = params
        self.calls: list[str] = []
        self.handle: JobHandle | None = None
        self.final: Done | Failed | None = None
        self.pieces = 0
        self.answering = asyncio.Event()  # set on the first text piece of the answer
        self._connected = False
        self._follower: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def in_flight(self) -> int:
        return int(self._follower is not None and not self._follower.done())

    async def start(self) -> None:
        self.calls.append("start")
        self._connected = True
        if self.question:
            self.handle = await self.engine.submit(Job.ask(self.question, params=self.params, platform=self.name))
            self._follower = asyncio.create_task(self._follow(self.handle))

    async def _follow(self, handle: JobHandle) -> None:
        async for event in handle:
            if isinstance(event, TextPiece):
                self.pieces += 1
                if self.pieces == 1:
                    log.info("fake platform: the answer is streaming")
                    self.answering.set()
            elif isinstance(event, Done):
                self.final = event
                log.info("fake platform: answer ended: Done(%s) after %d tokens", event.finish_reason,
                         event.completion_tokens)
            elif isinstance(event, Failed):
                self.final = event
                log.info("fake platform: answer ended: Failed(%s) after %d pieces", event.kind, self.pieces)

    async def stop_intake(self) -> None:
        self.calls.append("stop_intake")

    async def close(self) -> None:
        self.calls.append("close")
        self._connected = False
        if self._follower is not None:
            await asyncio.wait_for(self._follower, 10)


def main(argv: list[str] | None = None) -> int:
    import engbot.run
    from bots.registry import Adapter
    from engbot.cli import main as engbot_main

    def adapters(environ: Mapping[str, str], engine: Submitter, channels: object = None) -> list[Adapter]:
        return [FakePlatform(engine, environ.get("FAKE_PLATFORM_QUESTION") or None)]

    engbot.run.adapters_from_environ = adapters  # the only difference from `engbot run`
    return engbot_main(argv)


if __name__ == "__main__":
    sys.exit(main())
