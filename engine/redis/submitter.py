"""The adapter side of the Redis queue (``engbot run`` with QUEUE_BACKEND=redis): jobs go into a stream that
``engbot worker`` hosts claim from; their events come back through one stream per job.

    submitter = RedisSubmitter(QueueSettings.from_environ(environ))
    await submitter.start()                  # QueueUnavailable if Redis is not there
    handle = await submitter.submit(job)     # the same JobHandle as the in-process Engine; QueueFull at once
    async for event in handle: ...           # Queued?, Started, TextPiece*, Done | Failed
    submitter.cancel(job.id)                 # the host running it stops at its next write or claim refresh
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from redis.exceptions import RedisError

from engine.api import SHUTDOWN_REASON, Health, JobFeed, JobHandle
from engine.config import QueueSettings
from engine.errors import DuplicateJob, EngineClosed, QueueFull
from engine.metrics import EngineMetrics
from engine.redis.affinity import conversation_key
from engine.redis.client import (
    DEADLINE_MARGIN_S,
    EVENTS_GRACE_S,
    READ_BLOCK_MS,
    backoff,
    check_reachable,
    connect,
    describe_error,
    finish_tasks,
    raise_if_cancelled,
)
from engine.redis.codec import event_from_wire, job_to_json
from engine.redis.keys import Keys
from engine.redis.scripts import POSITIONS, SUBMIT, WITHDRAW
from engine.types import FINAL_EVENTS, Done, Failed, FailureKind, Job, Queued, Started, TextPiece

log = logging.getLogger("engbot.redis")

DEDUP_TTL_S = 600  # as the in-process engine
IDLE_PING_S = 5.0  # with nothing in flight, the reader pings this often (for /readyz)
POSITIONS_EVERY_S = 2.0  # while jobs wait, their places in line are looked up this often
SUBMIT_ATTEMPTS = 3  # a submit whose reply is lost is retried (it is idempotent) this many times in all...
SUBMIT_RETRY_S = 2.0  # ...starting no retry this long after the first attempt; then the job is withdrawn
WITHDRAWN_REASON = "this job was withdrawn after a submit that got no answer; submit a new Job"


@dataclass(eq=False)
class _Tracked:
    """A job this process submitted and still reads events for."""

    feed: JobFeed
    key: str  # its events stream
    give_up_at: float  # monotonic: JOB_DEADLINE_S + margin after submit
    last_id: str = "0-0"
    attempt: int = 0
    seq: int = 0
    started_at: float = 0.0
    first_token_at: float = 0.0
    pieces: list[str] = field(default_factory=list)  # of the current attempt
    entry_id: str = ""  # in the jobs stream


class RedisSubmitter:
    """The adapter side of the Redis queue: ``await submit(job)`` -> ``JobHandle``, like the in-process Engine.

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
        self._positions = self._redis.register_script(POSITIONS)
        self._positions_at = 0.0  # when waiting jobs' places in line are looked up next
        self._tasks: set[asyncio.Task[None]] = set()
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
        self._service_s: float | None = None  # how long answers took lately (moving average): waiting estimates
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

    def health(self) -> Health:
        """Healthy whenever it runs (it has no model); ready while it takes jobs and Redis answers."""
        return Health(ok=True, checks={"engine": self._accepting, "redis": self._connected})

    def describe(self) -> str:
        return f"job queue ready: Redis at {self.settings.redis_url_masked}"

    async def start(self) -> None:
        """Check Redis (``QueueUnavailable`` with REDIS_URL named, password masked) and start reading."""
        try:
            await check_reachable(self._redis, self.settings, self.keys)
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

    async def submit(self, job: Job) -> JobHandle:
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
        feed = JobFeed(job, self.cancel)
        handle = feed.handle
        tracked = _Tracked(feed, self.keys.events(job.id),
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
        tracked.entry_id = str(reply[1])
        if int(reply[2]) and not tracked.started_at:  # jobs not claimed yet ahead of this one: it certainly waits
            position = int(reply[2]) + 1
            feed.emit(Queued(position, self._eta(position)))
        return handle

    async def _queue(self, job: Job) -> Any:
        """Run the submit script until Redis answers. A connection that drops (or times out) after the command
        was sent leaves its outcome unknown, but the script is idempotent by job id, so it is simply run again; if
        Redis still does not answer after a few quick attempts, or the caller is cancelled meanwhile, the job is
        withdrawn (``WITHDRAW``, by the reader task, as soon as Redis answers) and ``EngineClosed`` raised."""
        keys = [self.keys.jobs, self.keys.dedup(job.dedup_key) if job.dedup_key else "", self._wake_key,
                self.keys.job(job.id), self.keys.holder(conversation_key(job))]
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

    def _eta(self, position: int) -> float | None:
        """About how long the job at ``position`` waits. A job waits when every host is busy, so the answers of
        this process running now stand for the cluster's slots (other adapter processes' jobs are not seen: the
        estimate errs long). None before the first answer."""
        if self._service_s is None:
            return None
        return position * self._service_s / max(1, self.running)

    @property
    def _keys_ttl_s(self) -> int:
        """How long a job's keys (job, cancel, wake) live: past anything that can still happen to the job."""
        return int(self.settings.job_deadline_s + EVENTS_GRACE_S)

    def cancel(self, job_id: str) -> bool:
        """End the job here at once (``Failed(CANCELLED)`` with the text so far) and set its cancel key now: the
        host running it stops it at its next write (at most 100 ms apart while text flows) or claim refresh, which
        frees its slot; a job nobody claimed yet is stopped by the host that claims it, at its first write."""
        tracked = self._jobs.get(job_id)
        if tracked is None:
            return False
        self._finish(tracked, Failed(FailureKind.CANCELLED, "cancelled", "".join(tracked.pieces)))
        task = asyncio.get_running_loop().create_task(self._set_cancel(job_id), name=f"engbot-cancel-{job_id[:8]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _set_cancel(self, job_id: str) -> None:
        try:
            await self._redis.set(self.keys.cancel(job_id), 1, ex=self._keys_ttl_s)
        except RedisError:
            raise_if_cancelled()
            self._cancels.append(job_id)  # the reader sets it once Redis is back
            self._changed.set()

    async def _update_positions(self) -> None:
        """Look up where the waiting jobs are in line, and tell those whose place changed."""
        waiting = [t for t in self._jobs.values() if not t.started_at and t.entry_id]
        if not waiting:
            return
        try:
            positions = await self._positions(keys=[self.keys.jobs],
                                              args=[self.keys.group, *(t.entry_id for t in waiting)])
        except RedisError:
            raise_if_cancelled()
            return
        for tracked, position in zip(waiting, positions, strict=True):
            position = int(position)
            if position and not tracked.started_at and position != tracked.feed.handle.position:
                tracked.feed.emit(Queued(position, self._eta(position)))

    def _finish(self, tracked: _Tracked, event: Done | Failed) -> None:
        handle = tracked.feed.handle
        self._jobs.pop(handle.job.id, None)
        tracked.feed.emit(event)
        self._unlinks.append(tracked.key)
        outcome = "ok" if isinstance(event, Done) else str(event.kind)
        now = time.monotonic()
        self.metrics.requests.labels(handle.job.platform, outcome).inc()
        self.metrics.duration.observe(now - handle.submitted_at)
        if isinstance(event, Done):
            self.metrics.tokens.inc(event.completion_tokens)
            if tracked.started_at:
                took = now - tracked.started_at
                self._service_s = took if self._service_s is None else 0.7 * self._service_s + 0.3 * took
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
            if time.monotonic() >= self._positions_at:
                self._positions_at = time.monotonic() + POSITIONS_EVERY_S
                await self._update_positions()
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
                    if tracked is None or tracked.feed.done:
                        break
                    tracked.last_id = entry_id
                    try:
                        for wire in json.loads(values.get("b", "[]")):
                            self._apply(tracked, wire)
                    except (ValueError, KeyError, TypeError, AttributeError):
                        log.error("job %s: skipping a malformed events entry %s", tracked.feed.job.id[:8],
                                  entry_id)

    def _apply(self, tracked: _Tracked, wire: dict[str, Any]) -> None:
        attempt, seq = int(wire["a"]), int(wire["n"])
        if attempt < tracked.attempt or tracked.feed.done:
            return  # from a host that lost the job to another one
        if attempt > tracked.attempt:
            tracked.attempt, tracked.seq, tracked.pieces = attempt, 0, []
            if attempt > 1:
                log.warning("job %s was taken over by another host (attempt %d)", tracked.feed.job.id[:8],
                            attempt)
        if seq <= tracked.seq:
            return  # a write the host repeated after a disconnection
        tracked.seq = seq
        event = event_from_wire(wire)
        if event is None or isinstance(event, Queued):
            return
        now = time.monotonic()
        submitted = tracked.feed.handle.submitted_at
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
            tracked.feed.emit(event)

    def _expire_overdue(self) -> None:
        now = time.monotonic()
        for tracked in [t for t in self._jobs.values() if now >= t.give_up_at]:
            self._finish(tracked, Failed(FailureKind.TIMEOUT, f"no answer within {self.settings.job_deadline_s:g} s",
                                         "".join(tracked.pieces)))
            self._cancels.append(tracked.feed.job.id)

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
                         ("it was not queued", "deleted from the queue", "its host stops it")[int(outcome)])
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
            self._finish(tracked, Failed(FailureKind.SHUTDOWN, SHUTDOWN_REASON, "".join(tracked.pieces)))
            self._cancels.append(tracked.feed.job.id)
        self._changed.set()
        if self._reader is not None:
            await finish_tasks([self._reader], READ_BLOCK_MS / 1000 + 1)
        await finish_tasks(list(self._tasks), 2.0)  # cancel keys on their way
        if self._cancels or self._unlinks or self._withdrawals:
            with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
                await asyncio.wait_for(self._housekeeping(), 2.0)
        await self._redis.aclose()
        self._connected = False


