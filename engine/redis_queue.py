"""The job queue in Redis (QUEUE_BACKEND=redis): adapters submit here, ``engbot worker`` hosts answer.

    submitter = RedisSubmitter(QueueSettings.from_environ(environ))      # adapter side (``engbot run``)
    await submitter.start()                                             # QueueUnavailable if Redis is not there
    handle = await submitter.asubmit(job)    # the same JobHandle as the in-process Engine; QueueFull at once
    async for event in handle: ...           # Queued?, Started, TextPiece*, Done | Failed

    worker = RedisWorker(queue_settings, engine_settings)                # engine host (``engbot worker``)
    await worker.start(); ...; await worker.stop()

Keys (``engbot:`` is REDIS_KEY_PREFIX):

- ``engbot:jobs``, a stream of jobs, consumer group ``engbot:workers``. One entry per job: ``job`` (JSON) and
  ``deadline`` (Redis clock, ms). Finished entries are XACK'd and XDEL'd, so its length is the number of jobs
  waiting or running, which is what REDIS_MAX_PENDING bounds.
- ``engbot:events:<job id>``, a stream per job carrying its events back, each entry a JSON batch of
  ``{"a": attempt, "n": seq, "t": type, "f": fields}``; it expires by itself, and the reader deletes it at the end.
- ``engbot:job:<job id>``: the entry id a job was queued as (and how many jobs were waiting ahead of it), or
  ``withdrawn``; it makes submitting idempotent, so a submit whose reply was lost is retried without queueing the
  job twice, and a job whose submit outcome stays unknown is withdrawn (see ``RedisSubmitter.asubmit``).
- ``engbot:dedup:<dedup key>`` (SET NX EX), ``engbot:cancel:<job id>``, ``engbot:attempt:<entry id>``, and
  ``engbot:wake:<submitter>``, a tiny stream whose only use is to end the reader's blocking XREAD when a job is
  added.

Ownership is the consumer group's pending-entries list: a worker writes events, refreshes its claim and
acknowledges only after checking, in the same Lua script, that the entry is still its own. A host that lost a job
to a takeover therefore writes nothing more, and each job gets at most one final event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from engine.config import EngineSettings, QueueSettings
from engine.engine import SHUTDOWN_REASON, Engine, JobHandle
from engine.errors import DuplicateJob, EngineClosed, QueueFull, QueueUnavailable
from engine.metrics import EngineMetrics
from engine.types import (
    FINAL_EVENTS,
    Done,
    Event,
    Failed,
    GenParams,
    Job,
    Queued,
    Role,
    Started,
    TextPiece,
    Turn,
)

log = logging.getLogger("engbot.redis")

DEDUP_TTL_S = 600  # as the in-process engine
DEADLINE_MARGIN_S = 10.0  # a handle waits this long past the deadline for the worker's own "timeout" event
READ_BLOCK_MS = 1000  # the reader's XREAD block; also how often it checks deadlines
IDLE_PING_S = 5.0  # with nothing in flight, the reader pings this often (for /readyz)
BACKOFF_CAP_S = 5.0  # reconnection attempts at most this far apart
SUBMIT_ATTEMPTS = 3  # a submit whose reply is lost is retried (it is idempotent) this many times in all...
SUBMIT_RETRY_S = 2.0  # ...starting no retry this long after the first attempt; then the job is withdrawn
CONNECT_TIMEOUT_S = 3.0
SOCKET_TIMEOUT_S = 15.0  # above every BLOCK we use
EVENTS_GRACE_S = 120  # events streams outlive the job's deadline by this much
FLUSH_INTERVAL_S = 0.1  # a worker writes an answer's text at most this often (after the first piece)
ATTEMPT_TTL_S = 86400
STALE_CONSUMER_MS = 3_600_000  # consumers idle this long with nothing pending are deleted
RELEASED = "released"  # the consumer that holds jobs a stopping worker handed back
WRITTEN, LOST, CANCELLED = 1, 0, 2  # results of the event and refresh scripts
WITHDRAWN_REASON = "this job was withdrawn after a submit that got no answer; submit a new Job"

# ---------------------------------------------------------------------------------------------------- scripts

# Idempotent by job id: the job key remembers the result, so running it again (a retry after a lost reply) returns
# the same result instead of queueing the job twice; a withdrawn job is never queued.
# KEYS: jobs stream, dedup key ('' = none), wake stream, job key
# ARGV: max pending, dedup ttl s, job json, deadline ms (relative), trim age ms, group, job id, keys ttl s
SUBMIT = """
local known = redis.call('GET', KEYS[4])
if known then
  if known == 'withdrawn' then return {'withdrawn'} end
  local id, ahead = string.match(known, '^(%S+) (%d+)$')
  return {'ok', id, tonumber(ahead)}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if KEYS[2] ~= '' and redis.call('EXISTS', KEYS[2]) == 1 then return {'duplicate'} end
redis.call('XTRIM', KEYS[1], 'MINID', now - tonumber(ARGV[5]))
local n = redis.call('XLEN', KEYS[1])
if n >= tonumber(ARGV[1]) then return {'full', n} end
local pending = 0
local p = redis.pcall('XPENDING', KEYS[1], ARGV[6])
if type(p) == 'table' and not p.err then pending = tonumber(p[1]) end
local id = redis.call('XADD', KEYS[1], '*', 'job', ARGV[3], 'deadline', now + tonumber(ARGV[4]))
local ahead = math.max(0, n - pending)
redis.call('SET', KEYS[4], id .. ' ' .. ahead, 'EX', ARGV[8])
if KEYS[2] ~= '' then redis.call('SET', KEYS[2], ARGV[7], 'EX', ARGV[2]) end
redis.call('XADD', KEYS[3], 'MAXLEN', 8, '*', 'j', ARGV[7])
redis.call('EXPIRE', KEYS[3], ARGV[8])
return {'ok', id, ahead}
"""

# Withdraw a job whose submit outcome is unknown (its reply never came): a submit still on its way finds it
# withdrawn and queues nothing; a queued job nobody took is deleted; a worker running it stops at its next write or
# claim refresh (the cancel key) and acknowledges it. Returns 0 (was not queued), 1 (deleted) or 2 (stopping).
# KEYS: jobs stream, job key, cancel key.  ARGV: group, ttl s
WITHDRAW = """
local known = redis.call('GET', KEYS[2])
redis.call('SET', KEYS[2], 'withdrawn', 'EX', ARGV[2])
if not known or known == 'withdrawn' then return 0 end
redis.call('SET', KEYS[3], 1, 'EX', ARGV[2])
local id = string.match(known, '^%S+')
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], id, id, 1)
if type(p) == 'table' and not p.err and #p > 0 then return 2 end
redis.call('XDEL', KEYS[1], id)
return 1
"""

# KEYS: jobs stream, events stream, cancel key, attempt key
# ARGV: group, consumer, entry id, batch json ('' = none), events ttl s, final ('1' | '0')
WRITE_EVENTS = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
local cancelled = redis.call('EXISTS', KEYS[3]) == 1
if ARGV[4] ~= '' and not cancelled then
  redis.call('XADD', KEYS[2], '*', 'b', ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
if ARGV[6] == '1' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  redis.call('XDEL', KEYS[1], ARGV[3])
  redis.call('DEL', KEYS[4])
else
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
end
if cancelled then return 2 end
return 1
"""

# KEYS: jobs stream, then one cancel key per entry.  ARGV: group, consumer, then the entry ids.
REFRESH = """
local out = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 0 or p[1][2] ~= ARGV[2] then
    out[#out + 1] = 0
  else
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    if redis.call('EXISTS', KEYS[i - 1]) == 1 then out[#out + 1] = 2 else out[#out + 1] = 1 end
  end
end
return out
"""

# Claim jobs idle for at least the visibility timeout (their host died, stalled, or handed them back), bumping
# each one's attempt number in the same step, so two hosts never run one attempt.
# KEYS: jobs stream.  ARGV: group, consumer, min idle ms, count, attempt key prefix, attempt ttl s
TAKE_OVER = """
local out = {}
local p = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', ARGV[4])
for _, e in ipairs(p) do
  local c = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], e[1])
  if #c > 0 then
    local k = ARGV[5] .. e[1]
    redis.call('SET', k, 1, 'NX', 'EX', ARGV[6])
    out[#out + 1] = {c[1][1], c[1][2], redis.call('INCR', k), e[2]}
  end
end
local t = redis.call('TIME')
return {tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), out}
"""

# Hand jobs back (a stopping worker): give them to the RELEASED consumer, already idle, so the next takeover
# check of any host claims them; then forget this consumer if it holds nothing.
# KEYS: jobs stream.  ARGV: group, consumer, released consumer, idle ms, then the entry ids.
HAND_BACK = """
for i = 5, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p > 0 and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[i], 'IDLE', ARGV[4], 'JUSTID')
  end
end
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return 1
"""


# ------------------------------------------------------------------------------------------ keys and codecs


@dataclass(frozen=True, slots=True)
class Keys:
    """Every Redis name the queue uses, under one prefix."""

    prefix: str

    @property
    def jobs(self) -> str:
        return f"{self.prefix}jobs"

    @property
    def group(self) -> str:
        return f"{self.prefix}workers"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}events:{job_id}"

    def dedup(self, key: str) -> str:
        return f"{self.prefix}dedup:{key}"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}cancel:{job_id}"

    def attempt(self, entry_id: str = "") -> str:
        return f"{self.prefix}attempt:{entry_id}"

    def wake(self, submitter_id: str) -> str:
        return f"{self.prefix}wake:{submitter_id}"


def job_to_json(job: Job) -> str:
    return json.dumps({
        "id": job.id, "turns": [[t.role, t.content] for t in job.turns],
        "params": asdict(job.params) if job.params is not None else None, "platform": job.platform,
        "dedup_key": job.dedup_key, "system_prompt": job.system_prompt,
    }, ensure_ascii=False)


def job_from_json(text: str) -> Job:
    """Raises ValueError (or KeyError/TypeError) on a malformed entry."""
    d = json.loads(text)
    return Job(
        turns=tuple(Turn(cast(Role, role), str(content)) for role, content in d["turns"]),
        params=GenParams(**d["params"]) if d.get("params") else None,
        platform=str(d.get("platform", "cli")), dedup_key=d.get("dedup_key"),
        system_prompt=d.get("system_prompt"), id=str(d["id"]),
    )


EVENT_TYPES: dict[str, type[Any]] = {cls.__name__: cls for cls in (Queued, Started, TextPiece, Done, Failed)}
_EVENT_FIELDS = {name: frozenset(f.name for f in fields(cls)) for name, cls in EVENT_TYPES.items()}


def event_to_wire(event: Event, attempt: int, seq: int) -> dict[str, Any]:
    return {"a": attempt, "n": seq, "t": type(event).__name__, "f": asdict(event)}


def event_from_wire(wire: dict[str, Any]) -> Event | None:
    """The event, or None for a type this version does not know (a newer worker); unknown fields are dropped."""
    name = wire.get("t", "")
    if name not in EVENT_TYPES:
        return None
    known = _EVENT_FIELDS[name]
    return cast(Event, EVENT_TYPES[name](**{k: v for k, v in wire["f"].items() if k in known}))


def merge_text(events: list[Event]) -> list[Event]:
    """Consecutive TextPiece events as one (``TextPiece`` is "one token or a few")."""
    merged: list[Event] = []
    for event in events:
        if isinstance(event, TextPiece) and merged and isinstance(merged[-1], TextPiece):
            merged[-1] = TextPiece(merged[-1].text + event.text)
        else:
            merged.append(event)
    return merged


def connect(url: str) -> Redis:
    """A client that fails fast: no retries inside redis-py; callers decide (submit: "unavailable" at once;
    readers and workers: their own capped backoff)."""
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


async def _ensure_group(redis: Redis, keys: Keys) -> None:
    """Create the jobs stream and its consumer group if missing; from id 0, so jobs queued before the first
    worker existed are served."""
    try:
        await redis.xgroup_create(keys.jobs, keys.group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def _check_reachable(redis: Redis, settings: QueueSettings, keys: Keys) -> None:
    try:
        await redis.ping()
        await _ensure_group(redis, keys)
    except RedisError as exc:
        raise QueueUnavailable(f"cannot use Redis at REDIS_URL={settings.redis_url_masked}: "
                               f"{describe_error(exc, settings)}") from None


async def _finish_tasks(tasks: list[asyncio.Task[None]], timeout: float) -> None:
    """Let ``tasks`` end by themselves for ``timeout`` seconds, then cancel them (never waiting forever)."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)


def _now_ms(reply: Any) -> int:
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


# ------------------------------------------------------------------------------------------- adapter side


@dataclass(eq=False)
class _Tracked:
    """A job this process submitted and still reads events for."""

    handle: JobHandle
    key: str  # its events stream
    give_up_at: float  # monotonic: JOB_DEADLINE_S + margin after submit
    last_id: str = "0-0"
    attempt: int = 0
    seq: int = 0
    started_at: float = 0.0
    first_token_at: float = 0.0
    pieces: list[str] = field(default_factory=list)  # of the current attempt


class RedisSubmitter:
    """The adapter side of the Redis queue: ``await asubmit(job)`` -> ``JobHandle``, like the in-process Engine.

    One reader task follows the events streams of every job in flight with a single blocking XREAD, resuming
    from the last ids it saw after a disconnection, so no event is lost while Redis keeps them.
    """

    def __init__(self, settings: QueueSettings, *, shutdown_grace_s: float = 30.0,
                 metrics: EngineMetrics | None = None, deadline_margin_s: float = DEADLINE_MARGIN_S) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.shutdown_grace_s = shutdown_grace_s
        self.deadline_margin_s = deadline_margin_s
        self.metrics = metrics or EngineMetrics()
        self.id = uuid.uuid4().hex[:12]
        self._redis = connect(settings.redis_url)
        self._submit = self._redis.register_script(SUBMIT)
        self._withdraw = self._redis.register_script(WITHDRAW)
        self._jobs: dict[str, _Tracked] = {}
        self._wake_key = self.keys.wake(self.id)
        self._wake_id = "0-0"
        self._changed = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._cancels: list[str] = []  # job ids whose cancel key is still to be set
        self._unlinks: list[str] = []  # events streams to delete
        self._withdrawals: list[str] = []  # job ids whose submit outcome is unknown: to withdraw from Redis
        self._reader: asyncio.Task[None] | None = None
        self._accepting = False
        self._connected = False
        self.metrics.track(lambda: self.queued, lambda: self.running)

    def __repr__(self) -> str:
        return (f"<RedisSubmitter {self.settings.redis_url_masked} in_flight={len(self._jobs)} "
                f"connected={self._connected} accepting={self._accepting}>")

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def connected(self) -> bool:
        """Redis answered the last command (checked at least every few seconds)."""
        return self._connected

    @property
    def queued(self) -> int:
        """Jobs of this process not started yet."""
        return sum(1 for t in self._jobs.values() if not t.started_at)

    @property
    def running(self) -> int:
        """Jobs of this process being answered."""
        return sum(1 for t in self._jobs.values() if t.started_at)

    async def start(self) -> None:
        """Check Redis (``QueueUnavailable`` with REDIS_URL named, password masked) and start reading."""
        try:
            await _check_reachable(self._redis, self.settings, self.keys)
        except BaseException:
            await self._redis.aclose()
            raise
        self._connected = self._accepting = True
        self._reader = asyncio.create_task(self._read_events(), name="engbot-redis-reader")

    async def __aenter__(self) -> RedisSubmitter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def asubmit(self, job: Job) -> JobHandle:
        """Queue a job in Redis and return its handle.

        Raises at once ``QueueFull`` when REDIS_MAX_PENDING jobs wait or run cluster-wide, ``DuplicateJob`` for a
        ``dedup_key`` seen in the last 10 minutes by any adapter process, ``EngineClosed`` when Redis cannot be
        reached or this submitter is stopping. A job this raises for is not queued, and never runs: when its
        submit may have reached Redis (the reply was lost), it is withdrawn, at once or as soon as Redis is back.
        """
        if not self._accepting:
            raise EngineClosed("the job queue is not taking jobs (not started, or shutting down)")
        if not job.turns:
            raise ValueError("a job needs at least one turn")
        if job.id in self._jobs:
            raise DuplicateJob(job.id)
        if job.id in self._withdrawals:  # submitted again after EngineClosed: it stays withdrawn
            raise EngineClosed(WITHDRAWN_REASON)
        handle = JobHandle(job, self._cancel)
        tracked = _Tracked(handle, self.keys.events(job.id),
                           handle.submitted_at + self.settings.job_deadline_s + self.deadline_margin_s)
        self._jobs[job.id] = tracked  # before the script runs: its wake-up makes the reader follow this job
        try:
            reply = await self._queue(job)
        except BaseException:
            self._jobs.pop(job.id, None)
            raise
        self._connected = True
        status = reply[0]
        if status != "ok":
            self._jobs.pop(job.id, None)
            if status == "duplicate":
                raise DuplicateJob(job.dedup_key)
            if status == "withdrawn":  # submitted again after EngineClosed: it stays withdrawn
                raise EngineClosed(WITHDRAWN_REASON)
            self.metrics.requests.labels(job.platform, "busy").inc()
            raise QueueFull(self.settings.max_pending)
        self._idle.clear()
        self._changed.set()
        if int(reply[2]) and not tracked.started_at:  # jobs not claimed yet ahead of this one: it certainly waits
            handle._emit(Queued(int(reply[2]) + 1))
        return handle

    async def _queue(self, job: Job) -> Any:
        """Run the submit script until Redis answers. A connection that drops (or times out) after the command
        was sent leaves its outcome unknown, but the script is idempotent by job id, so it is simply run again; if
        Redis still does not answer after a few quick attempts, or the caller is cancelled meanwhile, the job is
        withdrawn (``WITHDRAW``, by the reader task, as soon as Redis answers) and ``EngineClosed`` raised."""
        keys = [self.keys.jobs, self.keys.dedup(job.dedup_key) if job.dedup_key else "", self._wake_key,
                self.keys.job(job.id)]
        args: list[str | int] = [
            self.settings.max_pending, DEDUP_TTL_S, job_to_json(job), int(self.settings.job_deadline_s * 1000),
            int((self.settings.job_deadline_s + self.deadline_margin_s) * 1000), self.keys.group, job.id,
            self._keys_ttl_s]
        began = time.monotonic()
        failures = 0
        try:
            while True:
                try:
                    return await self._submit(keys=keys, args=args)
                except RedisError as exc:
                    raise_if_cancelled()
                    failures += 1
                    if failures >= SUBMIT_ATTEMPTS or time.monotonic() - began >= SUBMIT_RETRY_S:
                        self._connected = False
                        log.warning("cannot queue a job: Redis is unreachable (%s)",
                                    describe_error(exc, self.settings))
                        raise EngineClosed("the job queue (Redis) is unreachable") from None
                    log.info("job %s: no answer from Redis to its submit (%s); submitting it again", job.id[:8],
                             describe_error(exc, self.settings))
                    await asyncio.sleep(backoff(failures - 1))
        except BaseException:
            self._withdrawals.append(job.id)
            self._changed.set()
            raise

    @property
    def _keys_ttl_s(self) -> int:
        """How long a job's keys (job, cancel, wake) live: past anything that can still happen to the job."""
        return int(self.settings.job_deadline_s + EVENTS_GRACE_S)

    def _cancel(self, handle: JobHandle) -> None:
        tracked = self._jobs.get(handle.job.id)
        if tracked is None or tracked.handle is not handle:
            return
        self._finish(tracked, Failed("cancelled", "cancelled", "".join(tracked.pieces)))
        self._cancels.append(handle.job.id)  # the worker stops at its next write or claim refresh

    def _finish(self, tracked: _Tracked, event: Done | Failed) -> None:
        handle = tracked.handle
        self._jobs.pop(handle.job.id, None)
        handle._emit(event)
        self._unlinks.append(tracked.key)
        outcome = "ok" if isinstance(event, Done) else event.kind
        now = time.monotonic()
        self.metrics.requests.labels(handle.job.platform, outcome).inc()
        self.metrics.duration.observe(now - handle.submitted_at)
        if isinstance(event, Done):
            self.metrics.tokens.inc(event.completion_tokens)
        log.info(
            "job %s platform=%s outcome=%s attempt=%d queue_wait=%s ttft=%s duration=%.3fs",
            handle.job.id[:8], handle.job.platform, outcome, tracked.attempt,
            f"{tracked.started_at - handle.submitted_at:.3f}s" if tracked.started_at else "-",
            f"{tracked.first_token_at - handle.submitted_at:.3f}s" if tracked.first_token_at else "-",
            now - handle.submitted_at,
        )
        if not self._jobs:
            self._idle.set()

    async def _read_events(self) -> None:
        failures = 0
        while self._accepting or self._jobs:
            self._expire_overdue()
            if self._cancels or self._unlinks or self._withdrawals:
                await self._housekeeping()
            if not self._jobs:
                self._changed.clear()
                if not self._accepting:
                    break  # stop() cleared ``accepting`` before setting ``changed``: no wake-up is lost
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_PING_S):
                        await self._changed.wait()
                if not self._jobs and self._accepting:
                    try:
                        await self._redis.ping()
                        self._connected = True
                    except RedisError:
                        raise_if_cancelled()
                        self._connected = False
                continue
            streams: dict[Any, Any] = {self._wake_key: self._wake_id}
            streams.update({t.key: t.last_id for t in self._jobs.values()})
            try:
                reply: Any = await self._redis.xread(streams, block=READ_BLOCK_MS)
            except RedisError as exc:
                raise_if_cancelled()
                failures += 1
                if self._connected or failures == 1:
                    log.warning("lost Redis while reading answers (%s); retrying with backoff",
                                describe_error(exc, self.settings))
                self._connected = False
                await asyncio.sleep(backoff(failures))
                continue
            if failures:
                log.info("Redis is back: resuming %d answers where they stopped", len(self._jobs))
                failures = 0
            self._connected = True
            for key, entries in reply or []:
                if key == self._wake_key:
                    self._wake_id = entries[-1][0]
                    continue
                tracked = self._jobs.get(key[len(self.keys.events("")):])
                for entry_id, values in entries:
                    if tracked is None or tracked.handle.done:
                        break
                    tracked.last_id = entry_id
                    try:
                        for wire in json.loads(values.get("b", "[]")):
                            self._apply(tracked, wire)
                    except (ValueError, KeyError, TypeError, AttributeError):
                        log.error("job %s: skipping a malformed events entry %s", tracked.handle.job.id[:8],
                                  entry_id)

    def _apply(self, tracked: _Tracked, wire: dict[str, Any]) -> None:
        attempt, seq = int(wire["a"]), int(wire["n"])
        if attempt < tracked.attempt or tracked.handle.done:
            return  # from a host that lost the job to another one
        if attempt > tracked.attempt:
            tracked.attempt, tracked.seq, tracked.pieces = attempt, 0, []
            if attempt > 1:
                log.warning("job %s was taken over by another worker (attempt %d)", tracked.handle.job.id[:8],
                            attempt)
        if seq <= tracked.seq:
            return  # a write the worker repeated after a disconnection
        tracked.seq = seq
        event = event_from_wire(wire)
        if event is None or isinstance(event, Queued):
            return
        now = time.monotonic()
        submitted = tracked.handle.submitted_at
        if isinstance(event, Started):
            if not tracked.started_at:
                self.metrics.queue_wait.observe(now - submitted)
            tracked.started_at = now
            event = replace(event, queue_wait_s=now - submitted, attempt=attempt)
        elif isinstance(event, TextPiece):
            if not tracked.first_token_at:
                tracked.first_token_at = now
                self.metrics.ttft.observe(now - submitted)
            tracked.pieces.append(event.text)
        elif isinstance(event, Done):
            event = replace(event, queue_wait_s=(tracked.started_at or now) - submitted,
                            time_to_first_token_s=(tracked.first_token_at or now) - submitted,
                            duration_s=now - submitted)
        if isinstance(event, FINAL_EVENTS):
            self._finish(tracked, event)
        else:
            tracked.handle._emit(event)

    def _expire_overdue(self) -> None:
        now = time.monotonic()
        for tracked in [t for t in self._jobs.values() if now >= t.give_up_at]:
            self._finish(tracked, Failed("timeout", f"no answer within {self.settings.job_deadline_s:g} s",
                                         "".join(tracked.pieces)))
            self._cancels.append(tracked.handle.job.id)

    async def _housekeeping(self) -> None:
        """Withdraw jobs whose submit outcome was unknown, set the cancel keys of jobs nobody waits for any more,
        and delete finished events streams. What Redis did not get is kept for the next round."""
        withdrawn = 0
        try:
            for job_id in self._withdrawals:
                outcome = await self._withdraw(keys=[self.keys.jobs, self.keys.job(job_id), self.keys.cancel(job_id)],
                                               args=[self.keys.group, self._keys_ttl_s])
                withdrawn += 1
                self._unlinks.append(self.keys.events(job_id))
                log.info("job %s: its submit got no answer; withdrawn (%s)", job_id[:8],
                         ("it was not queued", "deleted from the queue", "its worker stops it")[int(outcome)])
        except RedisError:
            raise_if_cancelled()
            return
        finally:
            del self._withdrawals[:withdrawn]
        cancels, unlinks = self._cancels[:], self._unlinks[:]
        pipe = self._redis.pipeline(transaction=False)
        for job_id in cancels:
            pipe.set(self.keys.cancel(job_id), 1, ex=self._keys_ttl_s)
        if unlinks:
            pipe.unlink(*unlinks)
        try:
            await pipe.execute()
        except RedisError:
            raise_if_cancelled()
            return
        del self._cancels[:len(cancels)]
        del self._unlinks[:len(unlinks)]

    async def stop(self, grace_s: float | None = None) -> None:
        """Take no new jobs; wait up to ``grace_s`` (SHUTDOWN_GRACE_S) for the answers in flight, end the rest
        with ``Failed("shutdown")`` and cancel them in Redis, then disconnect."""
        self._accepting = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.shutdown_grace_s if grace_s is None else grace_s)
        for tracked in list(self._jobs.values()):
            self._finish(tracked, Failed("shutdown", SHUTDOWN_REASON, "".join(tracked.pieces)))
            self._cancels.append(tracked.handle.job.id)
        self._changed.set()
        if self._reader is not None:
            await _finish_tasks([self._reader], READ_BLOCK_MS / 1000 + 1)
        if self._cancels or self._unlinks or self._withdrawals:
            with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
                await asyncio.wait_for(self._housekeeping(), 2.0)
        await self._redis.aclose()
        self._connected = False


# -------------------------------------------------------------------------------------------- engine side


@dataclass(eq=False)
class _Claim:
    entry_id: str
    job: Job
    deadline_ms: int  # Redis clock
    attempt: int

    @property
    def deadline_s(self) -> float:
        """The job's JOB_DEADLINE_S (from its entry id, which is the time it was queued)."""
        return (self.deadline_ms - int(self.entry_id.split("-")[0])) / 1000


@dataclass(eq=False)
class _Run:
    claim: _Claim
    handle: JobHandle | None = None
    seq: int = 0
    lost: bool = False  # another host owns the job now: write nothing more
    timed_out: bool = False
    cancelled: bool = False  # by the user (or the adapter gave up)
    handed_back: bool = False  # this worker is stopping: another one will run the job
    events_ttl_s: int = EVENTS_GRACE_S
    give_up_at: float = math.inf  # monotonic: stop retrying writes (the adapter has given up)

    def stop_local(self) -> None:
        if self.handle is not None:
            self.handle.cancel()


class RedisWorker:
    """An engine host (``engbot worker``): claims jobs for its local Engine and streams their events back.

    Claims only as many jobs as its engine answers at once (NUM_WORKERS replicas x PARALLEL_SLOTS; XREADGROUP
    COUNT), refreshes its claims while they run, and takes over the jobs of hosts that stopped refreshing theirs for
    REDIS_VISIBILITY_TIMEOUT_S.
    """

    name = "redis"  # for /readyz

    def __init__(self, settings: QueueSettings, engine_settings: EngineSettings, *,
                 consumer: str | None = None) -> None:
        self.settings = settings
        self.engine = Engine(engine_settings)
        self.capacity = self.engine.capacity  # answers at once
        # unique per process even where host names and process ids repeat (containers with host networking, each
        # PID 1; a restarted container): ownership checks compare consumer names
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.keys = Keys(settings.key_prefix)
        self._redis = connect(settings.redis_url)
        self._write_events = self._redis.register_script(WRITE_EVENTS)
        self._refresh = self._redis.register_script(REFRESH)
        self._take_over = self._redis.register_script(TAKE_OVER)
        self._hand_back = self._redis.register_script(HAND_BACK)
        visibility = settings.visibility_timeout_s
        self.refresh_interval_s = min(2.0, visibility / 3)
        self.takeover_interval_s = max(0.25, min(5.0, visibility / 2))
        self._runs: dict[str, _Run] = {}  # by job id
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._slot_freed = asyncio.Event()
        self._all_done = asyncio.Event()
        self._all_done.set()
        self._stopping = False
        self._connected = False
        self._takeover_after = 0.0  # after a reconnection, owners get one visibility timeout to refresh first
        self._clock_offset_ms = 0  # Redis clock - ours; measured at start, refreshed by every takeover check
        self.finished = 0
        self.taken_over = 0

    def __repr__(self) -> str:
        return (f"<RedisWorker {self.consumer} running={len(self._runs)}/{self.capacity} finished={self.finished} "
                f"taken_over={self.taken_over} connected={self._connected}>")

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def running(self) -> int:
        return len(self._runs)

    async def start(self) -> None:
        """Check Redis first (``QueueUnavailable``, fast), then load the model, then start claiming."""
        try:
            await _check_reachable(self._redis, self.settings, self.keys)
            self._sync_clock(_now_ms(await self._redis.time()))
            self._connected = True
            await self.engine.start()
        except BaseException:
            await self._redis.aclose()
            raise
        self._loops = [asyncio.create_task(self._claim_loop(), name="engbot-redis-claims"),
                       asyncio.create_task(self._refresh_loop(), name="engbot-redis-refresh")]
        log.info("worker %s takes up to %d jobs at once from %s (%d replicas x %d slots, visibility timeout %g s)",
                 self.consumer, self.capacity, self.settings.redis_url_masked, self.engine.settings.num_workers,
                 self.engine.settings.parallel_slots, self.settings.visibility_timeout_s)

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: claim nothing more, let running jobs finish for up to ``grace_s`` (SHUTDOWN_GRACE_S), then hand
        the rest back to the queue for another host (the user sees the answer start again there)."""
        grace = self.engine.settings.shutdown_grace_s if grace_s is None else grace_s
        self._stopping = True
        self._slot_freed.set()
        await _finish_tasks(self._loops[:1], READ_BLOCK_MS / 1000 + 2)  # the claim loop ends by itself
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_done.wait(), grace)
        leftover = [run for run in self._runs.values() if not run.lost]
        for run in leftover:
            run.handed_back = True
            run.stop_local()
        await _finish_tasks(list(self._tasks), 10)
        await _finish_tasks(self._loops, 0)
        try:
            await self._hand_back(keys=[self.keys.jobs], args=[
                self.keys.group, self.consumer, RELEASED, int(self.settings.visibility_timeout_s * 1000) + 1,
                *(run.claim.entry_id for run in leftover)])
            if leftover:
                log.info("handed %d unfinished jobs back to the queue", len(leftover))
        except RedisError as exc:
            raise_if_cancelled()
            log.warning("could not hand jobs back (%s): other workers take them over after "
                        "REDIS_VISIBILITY_TIMEOUT_S", describe_error(exc, self.settings))
        await self.engine.stop(grace_s=0)
        await self._redis.aclose()
        self._connected = False

    # -------------------------------------------------------------------------------- claiming

    async def _claim_loop(self) -> None:
        failures = 0
        next_takeover = 0.0
        next_cleanup = time.monotonic() + 60
        block_ms = int(min(1.0, self.takeover_interval_s) * 1000)
        while not self._stopping:
            free = self.capacity - len(self._runs)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            try:
                now = time.monotonic()
                if now >= next_takeover and now >= self._takeover_after:
                    next_takeover = now + self.takeover_interval_s
                    if await self._claim_idle(free):
                        continue
                if now >= next_cleanup:
                    next_cleanup = now + 300
                    await self._forget_dead_consumers()
                reply: Any = await self._redis.xreadgroup(self.keys.group, self.consumer,
                                                          {self.keys.jobs: ">"}, count=free, block=block_ms)
                claims = [claim for entries in (reply or []) for claim in self._parse(entries[1], 1)]
                if claims:
                    await self._start(claims, None)
            except ResponseError as exc:
                raise_if_cancelled()
                if "NOGROUP" in str(exc):  # Redis lost its data (no persistence): start afresh
                    log.warning("the consumer group is gone (Redis restarted without its data?): recreating it")
                    with contextlib.suppress(RedisError):
                        await _ensure_group(self._redis, self.keys)
                else:
                    log.exception("unexpected Redis error while claiming jobs")
                    await asyncio.sleep(backoff(5))
                continue
            except RedisError as exc:
                raise_if_cancelled()
                failures += 1
                if self._connected or failures == 1:
                    log.warning("lost Redis (%s); retrying with backoff", describe_error(exc, self.settings))
                self._connected = False
                await asyncio.sleep(backoff(failures))
                continue
            except Exception:  # a bug must not leave a live worker that claims nothing
                log.exception("unexpected error while claiming jobs")
                await asyncio.sleep(backoff(5))
                continue
            if failures:
                log.info("Redis is back: claiming again")
                self._takeover_after = time.monotonic() + self.settings.visibility_timeout_s
                failures = 0
            self._connected = True

    async def _claim_idle(self, count: int) -> bool:
        """Take over jobs nobody refreshed for a visibility timeout. True if any were claimed."""
        now_ms, rows = await self._take_over(keys=[self.keys.jobs], args=[
            self.keys.group, self.consumer, int(self.settings.visibility_timeout_s * 1000), count,
            self.keys.attempt(), ATTEMPT_TTL_S])
        claims: list[_Claim] = []
        for entry_id, values, attempt, owner in rows:
            flat = dict(zip(values[::2], values[1::2], strict=False))
            for claim in self._parse([(entry_id, flat)], int(attempt)):
                if claim.job.id not in self._runs:
                    log.warning("job %s: taking it over from %s (attempt %d)", claim.job.id[:8], owner,
                                claim.attempt)
                    self.taken_over += 1
                claims.append(claim)
        self._sync_clock(int(now_ms))
        if claims:
            await self._start(claims, int(now_ms))
        return bool(claims)

    def _parse(self, entries: list[Any], attempt: int) -> list[_Claim]:
        claims = []
        for entry_id, values in entries:
            try:
                claims.append(_Claim(entry_id, job_from_json(values["job"]), int(values["deadline"]), attempt))
            except (ValueError, KeyError, TypeError):
                log.error("dropping a malformed job entry %s", entry_id)
                task = asyncio.create_task(self._drop(entry_id))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return claims

    async def _drop(self, entry_id: str) -> None:
        try:
            await self._redis.xack(self.keys.jobs, self.keys.group, entry_id)
            await self._redis.xdel(self.keys.jobs, entry_id)
        except RedisError:
            raise_if_cancelled()

    def _redis_now_ms(self) -> int:
        """Redis's clock, estimated from ours (deadlines are in Redis time, which every host shares)."""
        return int(time.time() * 1000) + self._clock_offset_ms

    def _sync_clock(self, redis_now_ms: int) -> None:
        self._clock_offset_ms = redis_now_ms - int(time.time() * 1000)

    async def _start(self, claims: list[_Claim], now_ms: int | None) -> None:
        """Run new claims. No round trip here, on the way to the first token: a job cancelled while it waited
        is stopped by its first write (Started), which finds the cancel key."""
        now_ms = self._redis_now_ms() if now_ms is None else now_ms
        for claim in claims:
            current = self._runs.get(claim.job.id)
            if current is not None:  # delivered again to this host, which already runs it: ignore
                if current.claim.entry_id != claim.entry_id:
                    await self._drop(claim.entry_id)
                continue
            run = _Run(claim)
            self._runs[claim.job.id] = run
            self._all_done.clear()
            task = asyncio.create_task(self._run(run, now_ms), name=f"engbot-job-{claim.job.id[:8]}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------------------ one job

    async def _run(self, run: _Run, now_ms: int) -> None:
        claim = run.claim
        remaining_s = (claim.deadline_ms - now_ms) / 1000
        run.events_ttl_s = max(1, math.ceil(remaining_s)) + EVENTS_GRACE_S
        run.give_up_at = time.monotonic() + max(0.0, remaining_s) + DEADLINE_MARGIN_S
        timer = None
        try:
            if self._stopping:
                run.handed_back = True
                return
            if remaining_s <= 0:
                log.info("job %s: past its deadline when claimed", claim.job.id[:8])
                await self._write(run, [self._timeout(run, "")], final=True)
                return
            try:  # the cluster deduplicated it already; a takeover on this host must not look like a duplicate
                run.handle = self.engine.submit(replace(claim.job, dedup_key=None))
            except (EngineClosed, QueueFull):
                run.handed_back = True  # stopping, or more jobs than replicas: let another host run it
                return
            except ValueError as exc:
                await self._write(run, [Failed("error", str(exc))], final=True)
                return
            timer = asyncio.get_running_loop().call_later(remaining_s, self._deadline_passed, run)
            await self._forward(run, run.handle)
        except Exception:
            log.exception("job %s: forwarding its events failed", claim.job.id[:8])
            run.stop_local()
        finally:
            if timer is not None:
                timer.cancel()
            if run.handed_back:
                await self._release([run])
            self._runs.pop(claim.job.id, None)
            self.finished += 1
            self._slot_freed.set()
            if not self._runs:
                self._all_done.set()

    async def _forward(self, run: _Run, handle: JobHandle) -> None:
        """Copy the local job's events to its events stream, one write per batch. Started, the first text and the
        final event (written with the acknowledgement, atomically) go at once; other text is merged into at most
        one write per FLUSH_INTERVAL_S, which adapters (editing about once a second) cannot tell apart, and which
        leaves the CPU to the model instead of per-token writes."""
        outbox: list[Event] = []
        ready = asyncio.Event()
        ended = asyncio.Event()

        async def pump() -> None:
            async for event in handle:
                outbox.append(event)
                ready.set()
            ended.set()

        pump_task = asyncio.create_task(pump())
        last_write = 0.0
        text_sent = False
        try:
            final = False
            while not final:
                await ready.wait()
                wait_s = last_write + FLUSH_INTERVAL_S - time.monotonic()
                if text_sent and wait_s > 0 and not ended.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait_s):
                            await ended.wait()
                ready.clear()
                batch, outbox[:] = outbox[:], []
                final = isinstance(batch[-1], FINAL_EVENTS)
                if run.lost or run.handed_back:
                    continue  # drain the local job until it stops; write nothing
                events = merge_text([self._translate(run, e) for e in batch if not isinstance(e, Queued)])
                text_sent = text_sent or any(isinstance(e, TextPiece) for e in events)
                last_write = time.monotonic()
                status = await self._write(run, events, final)
                if status == LOST and not run.lost:
                    log.warning("job %s: another worker took it over; stopping here", run.claim.job.id[:8])
                    run.lost = True
                    run.stop_local()
                elif status == CANCELLED and not run.cancelled:
                    run.cancelled = True
                    run.stop_local()
        finally:
            pump_task.cancel()
            await asyncio.gather(pump_task, return_exceptions=True)

    def _translate(self, run: _Run, event: Event) -> Event:
        if isinstance(event, Started):
            return replace(event, attempt=run.claim.attempt)
        if isinstance(event, Failed) and event.kind == "cancelled" and run.timed_out:
            return self._timeout(run, event.partial)
        return event

    def _timeout(self, run: _Run, partial: str) -> Failed:
        return Failed("timeout", f"no answer within {run.claim.deadline_s:g} s", partial)

    def _deadline_passed(self, run: _Run) -> None:
        log.info("job %s: deadline passed; stopping it", run.claim.job.id[:8])
        run.timed_out = True
        run.stop_local()

    async def _write(self, run: _Run, events: list[Event], final: bool) -> int:
        """Append ``events`` to the job's events stream if this host still owns the job (and acknowledge it if
        ``final``). Retries through disconnections until the adapter would have given up anyway."""
        claim = run.claim
        wire = []
        for event in events:
            run.seq += 1
            wire.append(event_to_wire(event, claim.attempt, run.seq))
        payload = json.dumps(wire, ensure_ascii=False) if wire else ""
        failures = 0
        while True:
            try:
                status = await self._write_events(
                    keys=[self.keys.jobs, self.keys.events(claim.job.id), self.keys.cancel(claim.job.id),
                          self.keys.attempt(claim.entry_id)],
                    args=[self.keys.group, self.consumer, claim.entry_id, payload, run.events_ttl_s,
                          "1" if final else "0"])
                return int(status)
            except RedisError as exc:
                raise_if_cancelled()
                failures += 1
                if time.monotonic() >= run.give_up_at:
                    log.warning("job %s: giving up writing its events (%s)", claim.job.id[:8],
                                describe_error(exc, self.settings))
                    return LOST
                if failures == 1:
                    log.warning("job %s: cannot write its events (%s); retrying", claim.job.id[:8],
                                describe_error(exc, self.settings))
                await asyncio.sleep(backoff(failures))

    async def _release(self, runs: list[_Run]) -> None:
        if not runs:
            return
        try:
            await self._hand_back(keys=[self.keys.jobs], args=[
                self.keys.group, self.consumer, RELEASED, int(self.settings.visibility_timeout_s * 1000) + 1,
                *(run.claim.entry_id for run in runs)])
        except RedisError:
            raise_if_cancelled()

    # ---------------------------------------------------------------------------- claim upkeep

    async def _refresh_loop(self) -> None:
        """Keep the claims of running jobs fresh (so nobody takes them over), and notice cancelled ones."""
        while not self._stopping or self._runs:
            await asyncio.sleep(self.refresh_interval_s)
            runs = [run for run in self._runs.values() if not (run.lost or run.handed_back)]
            if not runs:
                continue
            try:
                statuses = await self._refresh(
                    keys=[self.keys.jobs, *(self.keys.cancel(run.claim.job.id) for run in runs)],
                    args=[self.keys.group, self.consumer, *(run.claim.entry_id for run in runs)])
            except RedisError:
                raise_if_cancelled()
                continue  # the claim loop reports the outage
            for run, status in zip(runs, statuses, strict=True):
                if status == LOST and not run.lost:
                    log.warning("job %s: another worker took it over; stopping here", run.claim.job.id[:8])
                    run.lost = True
                    run.stop_local()
                elif status == CANCELLED and not run.cancelled:
                    run.cancelled = True
                    run.stop_local()

    async def _forget_dead_consumers(self) -> None:
        """Delete consumers (dead hosts) that hold nothing and were not seen for an hour."""
        for consumer in await self._redis.xinfo_consumers(self.keys.jobs, self.keys.group):
            if consumer["name"] not in (self.consumer, RELEASED) and not consumer["pending"] and \
                    consumer["idle"] > STALE_CONSUMER_MS:
                await self._redis.xgroup_delconsumer(self.keys.jobs, self.keys.group, consumer["name"])
