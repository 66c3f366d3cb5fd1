"""Follow-ups from cache on any host: a thread's next job goes to the host whose replica holds its prompt.

A host that finishes a job records itself as the holder of the job's conversation (``holder:<conversation>``, in
the same script as the final write). The submit script names that holder in the new job's entry (``aim``). Every
host says how many more jobs it takes (``room:<host>``, kept fresh while it claims). Whichever host reads an aimed
entry runs it if it is the holder; otherwise it passes the entry to the holder when the holder has room
(``pass.lua``: the holder becomes its owner in the group and finds it in its inbox stream), and runs it itself when
the holder is full, stopping or gone. So a follow-up never waits for one busy host while another idles.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from engine.redis.keys import Keys
from engine.redis.scripts import PASS
from engine.types import Job

log = logging.getLogger("engbot.redis")

HOLDER_TTL_S = 1800  # a host is named the holder of a conversation this long after its last answer in it
INBOX_MAXLEN = 1000
Entry = tuple[str, dict[str, str]]  # (entry id, fields) as XREADGROUP gives them


def conversation_key(job: Job) -> str:
    """The same on every host for every job of one conversation: its system prompt and first message, the start
    of every prompt of the thread (the engine's own routing uses the same parts)."""
    first = job.turns[0]
    digest = hashlib.blake2b(digest_size=12)
    for part in (job.system_prompt or "", first.role, first.content):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


class Affinity:
    """One host's side: its room and inbox, and the choice of where an aimed job runs."""

    def __init__(self, redis: Redis, keys: Keys, consumer: str, room_ttl_s: float,
                 registry: CollectorRegistry | None = None) -> None:
        self._redis = redis
        self.keys = keys
        self.consumer = consumer
        self.inbox = keys.inbox(consumer)
        self._room_key = keys.room(consumer)
        self._room_ttl_ms = max(1000, int(room_ttl_s * 1000))
        self._pass = redis.register_script(PASS)
        self._room: tuple[int, float] | None = None  # (free, monotonic time) last said
        self.followups = Counter("engbot_redis_followups", "Jobs of a conversation another job of which was "
                                 "answered before, by where they ran: on the host holding its prompt, or elsewhere "
                                 "(the holder was full, stopping or gone)", ["where"],
                                 registry=registry or CollectorRegistry())
        self.passed = 0

    async def open(self) -> None:
        """Create this host's inbox and its group (idempotent)."""
        try:
            await self._redis.xgroup_create(self.inbox, self.keys.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def say_room(self, free: int) -> None:
        """Tell the other hosts how many more jobs this host takes (when it changed, or before it expires)."""
        now = time.monotonic()
        if self._room is not None and self._room[0] == free and now - self._room[1] < self._room_ttl_ms / 3000:
            return
        await self._redis.set(self._room_key, max(0, free), px=self._room_ttl_ms)
        self._room = (free, now)

    async def sort(self, group: str, entries: Sequence[Entry]) -> list[Entry]:
        """The entries read from the queue that this host runs; those aimed at another host with room are passed
        to it."""
        mine = []
        for entry_id, values in entries:
            aim = values.get("aim")
            if aim is None or aim == self.consumer:
                if aim is not None:
                    self.followups.labels("holder").inc()
                mine.append((entry_id, values))
                continue
            if await self._pass_to(group, aim, entry_id, values):
                self.passed += 1
                continue
            self.followups.labels("elsewhere").inc()
            mine.append((entry_id, values))
        return mine

    async def _pass_to(self, group: str, aim: str, entry_id: str, values: dict[str, str]) -> bool:
        try:
            return bool(await self._pass(
                keys=[self.keys.jobs, self.keys.room(aim), self.keys.inbox(aim)],
                args=[group, self.consumer, aim, entry_id, values.get("job", ""), values.get("deadline", "0")]))
        except RedisError as exc:
            log.info("could not pass job entry %s to its holder (%s); running it here", entry_id,
                     type(exc).__name__)
            return False

    async def received(self, entries: Sequence[Entry]) -> list[Entry]:
        """Jobs other hosts passed to this one, as queue entries (the job entry's id and fields); the inbox entries
        are deleted."""
        if not entries:
            return []
        self._room = None  # each pass took one off this host's room key: say it again, even if the count is the same
        with contextlib.suppress(RedisError):
            async with self._redis.pipeline(transaction=False) as pipe:
                ids = [entry_id for entry_id, _ in entries]
                pipe.xack(self.inbox, self.keys.group, *ids)
                pipe.xdel(self.inbox, *ids)
                await pipe.execute()
        self.followups.labels("holder").inc(len(entries))
        return [(values.get("entry", ""), values) for _, values in entries]

    async def close(self, group: str) -> list[str]:
        """Take no more passed jobs: the queue entry ids of those passed but not read yet (to hand back)."""
        left: list[str] = []
        with contextlib.suppress(RedisError):
            await self._redis.delete(self._room_key)
            reply: Any = await self._redis.xreadgroup(group, self.consumer, {self.inbox: ">"})
            left = [values.get("entry", "") for entries in (reply or []) for _, values in entries[1]]
            await self._redis.delete(self.inbox)
        return [entry_id for entry_id in left if entry_id]
