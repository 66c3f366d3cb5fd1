"""Talking to Redis: a client that fails fast, reconnection backoff, and the checks both sides share."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from engine.config import QueueSettings
from engine.errors import QueueUnavailable
from engine.redis.keys import Keys

BACKOFF_CAP_S = 5.0  # reconnection attempts at most this far apart
CONNECT_TIMEOUT_S = 3.0
SOCKET_TIMEOUT_S = 15.0  # above every BLOCK we use
READ_BLOCK_MS = 1000  # the adapter's XREAD block (also how often it checks deadlines); hosts' stop waits on it
DEADLINE_MARGIN_S = 10.0  # an adapter waits this long past a job's deadline for the host's own "timeout" event
EVENTS_GRACE_S = 120  # events streams (and a job's keys) outlive the job's deadline by this much


def connect(url: str) -> Redis:
    """A client that fails fast: no retries inside redis-py; callers decide (submit: "unavailable" at once;
    readers and hosts: their own capped backoff)."""
    return Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S,
        socket_keepalive=True, retry=Retry(NoBackoff(), 0),
    )


def backoff(failures: int) -> float:
    """Seconds before reconnection attempt number ``failures``: 0.1 s doubling, capped, with jitter."""
    return min(BACKOFF_CAP_S, 0.1 * 2.0 ** min(failures, 10)) * random.uniform(0.75, 1.0)


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that redis-py turned into a ConnectionError: a task cancelled in the middle of a
    command can see "Connection closed by server" instead of CancelledError (as in redis/redis-py#2028). Every
    ``except RedisError`` that retries calls this first, so stopping never hangs."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def describe_error(exc: BaseException, settings: QueueSettings) -> str:
    """An exception's text fit for logs (redis-py's messages hold no password, but never trust that)."""
    text = f"{type(exc).__name__}: {exc}"
    password = _password(settings.redis_url)
    return text.replace(password, "***") if password else text


def _password(url: str) -> str:
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(url)
    return parts.password or next(iter(parse_qs(parts.query).get("password", [])), "")


async def ensure_group(redis: Redis, keys: Keys) -> None:
    """Create the jobs stream and its consumer group if missing; from id 0, so jobs queued before the first
    host existed are served."""
    try:
        await redis.xgroup_create(keys.jobs, keys.group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def check_reachable(redis: Redis, settings: QueueSettings, keys: Keys) -> None:
    """``QueueUnavailable`` (naming REDIS_URL, password masked) unless Redis answers and the group exists."""
    try:
        await redis.ping()
        await ensure_group(redis, keys)
    except RedisError as exc:
        raise QueueUnavailable(f"cannot use Redis at REDIS_URL={settings.redis_url_masked}: "
                               f"{describe_error(exc, settings)}") from None


async def finish_tasks(tasks: list[asyncio.Task[None]], timeout: float) -> None:
    """Let ``tasks`` end by themselves for ``timeout`` seconds, then cancel them (never waiting forever)."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)


def now_ms(reply: Any) -> int:
    """Milliseconds from a ``TIME`` reply (Redis's clock, which every host shares)."""
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000
