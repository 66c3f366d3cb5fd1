"""An engine host (``engbot worker``): claims jobs from the Redis queue for its in-process Engine and streams
their events back.

    host = RedisHost(queue_settings, engine_settings)
    await host.start(); ...; await host.stop()

Ownership is the consumer group's pending-entries list: a host writes events, refreshes its claim and
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
import socket
import time
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError, ResponseError

from engine.api import JobHandle
from engine.config import EngineSettings, QueueSettings
from engine.errors import DuplicateJob, EngineClosed, QueueFull
from engine.local import Engine
from engine.redis.client import (
    DEADLINE_MARGIN_S,
    EVENTS_GRACE_S,
    READ_BLOCK_MS,
    backoff,
    check_reachable,
    connect,
    describe_error,
    ensure_group,
    finish_tasks,
    now_ms,
    raise_if_cancelled,
)
from engine.redis.codec import event_to_wire, job_from_json, merge_text
from engine.redis.keys import RELEASED, Keys
from engine.redis.scripts import HAND_BACK, REFRESH, TAKE_OVER, WRITE_EVENTS
from engine.types import FINAL_EVENTS, Event, Failed, FailureKind, Job, Queued, Started, TextPiece

if TYPE_CHECKING:
    from engine.local.fleet import EngineFleet
    from engine.remote import RemoteSubmitter

log = logging.getLogger("engbot.redis")

FLUSH_INTERVAL_S = 0.1  # a host writes an answer's text at most this often (after the first piece)
ATTEMPT_TTL_S = 86400
STALE_CONSUMER_MS = 3_600_000  # consumers idle this long with nothing pending are deleted
WRITTEN, LOST, CANCELLED = 1, 0, 2  # results of the event and refresh scripts


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
    handed_back: bool = False  # this host is stopping: another one will run the job
    events_ttl_s: int = EVENTS_GRACE_S
    give_up_at: float = math.inf  # monotonic: stop retrying writes (the adapter has given up)

    def stop_local(self) -> None:
        if self.handle is not None:
            self.handle.cancel()


class RedisHost:
    """An engine host (``engbot worker``): claims jobs for its local Engine and streams their events back.

    Claims only as many jobs as its engine answers at once (NUM_WORKERS replicas x PARALLEL_SLOTS; XREADGROUP
    COUNT), refreshes its claims while they run, and takes over the jobs of hosts that stopped refreshing theirs for
    REDIS_VISIBILITY_TIMEOUT_S.
    """

    name = "redis"  # for /readyz

    def __init__(self, settings: QueueSettings, engine_settings: EngineSettings, *,
                 consumer: str | None = None, engine: Engine | RemoteSubmitter | EngineFleet | None = None) -> None:
        self.settings = settings
        # the local replicas, or a model server (MODEL_BACKEND=openai): hosts in front of an inference cluster
        self.engine: Engine | RemoteSubmitter | EngineFleet = engine or Engine(engine_settings)
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
        return (f"<RedisHost {self.consumer} running={len(self._runs)}/{self.capacity} finished={self.finished} "
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
            await check_reachable(self._redis, self.settings, self.keys)
            self._sync_clock(now_ms(await self._redis.time()))
            self._connected = True
            await self.engine.start()
        except BaseException:
            await self._redis.aclose()
            raise
        self._loops = [asyncio.create_task(self._claim_loop(), name="engbot-redis-claims"),
                       asyncio.create_task(self._refresh_loop(), name="engbot-redis-refresh")]
        log.info("host %s takes up to %d jobs at once from %s (%s; visibility timeout %g s)",
                 self.consumer, self.capacity, self.settings.redis_url_masked, self.engine.describe(),
                 self.settings.visibility_timeout_s)

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: claim nothing more, let running jobs finish for up to ``grace_s`` (SHUTDOWN_GRACE_S), then hand
        the rest back to the queue for another host (the user sees the answer start again there)."""
        grace = self.engine.settings.shutdown_grace_s if grace_s is None else grace_s
        self._stopping = True
        self._slot_freed.set()
        await finish_tasks(self._loops[:1], READ_BLOCK_MS / 1000 + 2)  # the claim loop ends by itself
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_done.wait(), grace)
        leftover = [run for run in self._runs.values() if not run.lost]
        for run in leftover:
            run.handed_back = True
            run.stop_local()
        await finish_tasks(list(self._tasks), 10)
        await finish_tasks(self._loops, 0)
        try:
            await self._hand_back(keys=[self.keys.jobs], args=[
                self.keys.group, self.consumer, RELEASED, int(self.settings.visibility_timeout_s * 1000) + 1,
                *(run.claim.entry_id for run in leftover)])
            if leftover:
                log.info("handed %d unfinished jobs back to the queue", len(leftover))
        except RedisError as exc:
            raise_if_cancelled()
            log.warning("could not hand jobs back (%s): other hosts take them over after "
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
                        await ensure_group(self._redis, self.keys)
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
            except Exception:  # a bug must not leave a live host that claims nothing
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

    def _redisnow_ms(self) -> int:
        """Redis's clock, estimated from ours (deadlines are in Redis time, which every host shares)."""
        return int(time.time() * 1000) + self._clock_offset_ms

    def _sync_clock(self, redis_now_ms: int) -> None:
        self._clock_offset_ms = redis_now_ms - int(time.time() * 1000)

    async def _start(self, claims: list[_Claim], now_ms: int | None) -> None:
        """Run new claims. No round trip here, on the way to the first token: a job cancelled while it waited
        is stopped by its first write (Started), which finds the cancel key."""
        now_ms = self._redisnow_ms() if now_ms is None else now_ms
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
                run.handle = self.engine.submit_nowait(replace(claim.job, dedup_key=None))
            except (EngineClosed, QueueFull, DuplicateJob):
                run.handed_back = True  # stopping, or more jobs than replicas: let another host run it
                return
            except ValueError as exc:
                await self._write(run, [Failed(FailureKind.ERROR, str(exc))], final=True)
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
                    log.warning("job %s: another host took it over; stopping here", run.claim.job.id[:8])
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
        if isinstance(event, Failed) and event.kind is FailureKind.CANCELLED and run.timed_out:
            return self._timeout(run, event.partial)
        return event

    def _timeout(self, run: _Run, partial: str) -> Failed:
        return Failed(FailureKind.TIMEOUT, f"no answer within {run.claim.deadline_s:g} s", partial)

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
                    log.warning("job %s: another host took it over; stopping here", run.claim.job.id[:8])
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
