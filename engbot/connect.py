"""Connecting the chat platforms at start. A platform that cannot be reached (a network blip at boot, its API down
for a minute) is tried again with growing pauses while the rest of ``engbot run`` serves, and /readyz says why it
is not ready; a token the platform refuses stops ``engbot run`` (trying again would not help)."""

from __future__ import annotations

import asyncio
import logging

from bots.registry import Adapter
from engine.errors import ConfigError

log = logging.getLogger("engbot")

FIRST_PAUSE_S = 1.0
LONGEST_PAUSE_S = 30.0


def pause_before(attempt: int, first_s: float = FIRST_PAUSE_S, longest_s: float = LONGEST_PAUSE_S) -> float:
    """Seconds to wait before try number ``attempt`` + 1, after ``attempt`` failed ones: 1, 2, 4 ... 30, 30."""
    return float(min(longest_s, first_s * 2.0 ** max(0, attempt - 1)))


class Connection:
    """One platform's adapter as ``engbot run`` keeps it: started with retries; ``problem`` says why it is not
    connected yet (for /readyz and the status page)."""

    def __init__(self, adapter: Adapter, first_pause_s: float = FIRST_PAUSE_S) -> None:
        self.adapter, self.name = adapter, adapter.name
        self.first_pause_s = first_pause_s
        self.problem: str | None = "connecting"
        self.failures = 0

    def __repr__(self) -> str:
        return f"<Connection {self.name} connected={self.connected} failures={self.failures}>"

    @property
    def connected(self) -> bool:
        return self.problem is None and self.adapter.connected

    async def establish(self) -> None:
        """Start the adapter, trying again until it connects. Raises ``ConfigError`` when the platform refuses a
        token (or another setting)."""
        while True:
            try:
                await self.adapter.start()
            except ConfigError:
                raise
            except Exception as exc:
                self.failures += 1
                pause = pause_before(self.failures, self.first_pause_s)
                self.problem = f"could not connect ({self.failures} tries): {describe(exc)}"
                log.warning("%s could not connect (%s); trying again in %.0f s", self.name, describe(exc), pause)
                await asyncio.sleep(pause)
                continue
            self.problem = None
            log.info("%s adapter connected", self.name)
            return


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
