"""The remote backend (MODEL_BACKEND=openai): the same bounded, fair queue as the local engine in front of an
OpenAI-compatible server (vLLM, llama.cpp's server, Ollama, TGI), each job one streamed chat completion.

    async with RemoteSubmitter(EngineSettings.from_environ(env), RemoteSettings.from_environ(env)) as remote:
        handle = await remote.submit(Job.ask("What is the capital of France?"))  # QueueFull at once when full
        async for event in handle: ...                                            # Queued*, Started, TextPiece*,
        remote.cancel(handle.job.id)                                              # Done | Failed; Stop closes the
                                                                                  # stream: the server frees the slot
At most REMOTE_MAX_INFLIGHT requests are at the server at once; the rest wait here, taken in turn by user, each
for at most QUEUE_TIMEOUT_S. 429, 503 and an unreachable server are retried with backoff for REMOTE_RETRY_S while
the question shows as waiting; then the user is told. What each error means: ``request.judge``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai

from engine.api import SHUTDOWN_REASON, Health, JobFeed, JobHandle
from engine.config import EngineSettings
from engine.errors import DuplicateJob, EngineClosed, QueueFull
from engine.local.queue import JobQueue
from engine.metrics import EngineMetrics
from engine.remote.check import ServerInfo, check_server
from engine.remote.request import Verdict, effective_params, judge, messages, sampling, trimmed
from engine.remote.settings import NO_KEY, RemoteSettings
from engine.types import Done, Failed, FailureKind, FinishReason, Job, Queued, Started, TextPiece, Turn

log = logging.getLogger("engbot.remote")

DEDUP_TTL_S = 600.0  # as the local engine
DEDUP_MAX = 10_000


@dataclass(eq=False)
class _Entry:
    """A job from ``submit`` to its final event."""

    feed: JobFeed
    submitted_at: float
    started_at: float = 0.0  # the server took the request
    first_token_at: float = 0.0
    task: asyncio.Task[None] | None = None
    expiry: asyncio.TimerHandle | None = None
    cancelled: bool = False
    stopping: bool = False
    dropped: int = 0  # oldest turns left out to fit the server's context
    pieces: list[str] = field(default_factory=list)

    @property
    def short_id(self) -> str:
        return self.feed.job.id[:8]


class RemoteSubmitter:
    """See the module docstring. Implements ``engine.api.Submitter`` (and ``submit_nowait``/``capacity``, as the
    local engine, for the CLI and the Redis host)."""

    def __init__(self, settings: EngineSettings, remote: RemoteSettings, metrics: EngineMetrics | None = None) -> None:
        self.settings = settings
        self.remote = remote
        self.metrics = metrics or EngineMetrics()
        self.server: ServerInfo | None = None
        self._client: openai.AsyncOpenAI | None = None
        self._queue: JobQueue[_Entry] = JobQueue(settings.queue_max_size, on_moved=self._on_moved,
                                                 key=lambda e: e.feed.job.user or e.feed.job.id)
        self._entries: dict[str, _Entry] = {}
        self._running: set[_Entry] = set()
        self._recent: OrderedDict[str, float] = OrderedDict()
        self._service_s: float | None = None
        self._accepting = False
        self._reachable = False
        self._last_error = ""
        self._idle = asyncio.Event()
        self._idle.set()
        self.metrics.track(lambda: len(self._queue), lambda: len(self._running))

    def __repr__(self) -> str:
        return (f"<RemoteSubmitter {self.remote.base_url_masked} running={len(self._running)} "
                f"queued={len(self._queue)} accepting={self._accepting}>")

    # ---- what it tells about itself ----

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def capacity(self) -> int:
        return self.remote.max_inflight

    @property
    def shutdown_grace_s(self) -> float:
        return self.settings.shutdown_grace_s

    @property
    def model(self) -> str:
        return self.server.model if self.server else self.remote.model

    def health(self) -> Health:
        """Alive whenever it runs (a restart of engbot would not bring the server back); ready while it takes jobs
        and the server answered the last request (or the start-up check)."""
        detail: dict[str, object] = {"server": self.remote.base_url_masked, "model": self.model,
                                     "in_flight": len(self._running), "max_inflight": self.remote.max_inflight}
        if self._last_error:
            detail["error"] = self._last_error
        return Health(ok=True, checks={"engine": self._accepting, "server": self._reachable}, detail=detail)

    def describe(self) -> str:
        return (f"model server ready: {self.model} at {self.remote.base_url_masked}, at most "
                f"{self.remote.max_inflight} answers at once")

    # ---- starting, submitting, cancelling ----

    async def start(self) -> None:
        """Check the server (``ConfigError`` naming OPENAI_API_KEY, OPENAI_MODEL or OPENAI_BASE_URL;
        ``ModelServerUnavailable``), then take jobs."""
        timeout = httpx2.Timeout(self.settings.generation_timeout_s + 30, connect=self.remote.connect_timeout_s)
        self._client = openai.AsyncOpenAI(base_url=self.remote.base_url, api_key=self.remote.api_key or NO_KEY,
                                          max_retries=0, timeout=timeout)
        try:
            self.server = await check_server(self._client, self.remote)
        except BaseException:
            await self._client.close()
            self._client = None
            raise
        if self.server.note:
            log.warning("%s", self.server.note)
        self._reachable = self._accepting = True

    async def __aenter__(self) -> RemoteSubmitter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def submit_nowait(self, job: Job) -> JobHandle:
        """Queue a job; raises ``QueueFull``, ``DuplicateJob`` or ``EngineClosed`` at once, as the local engine."""
        if not self._accepting:
            raise EngineClosed("the remote backend is not taking jobs (not started, or shutting down)")
        if not job.turns:
            raise ValueError("a job needs at least one turn")
        if job.id in self._entries:
            raise DuplicateJob(f"job {job.id} is in flight already")
        if job.dedup_key is not None and self._seen(job.dedup_key):
            raise DuplicateJob(job.dedup_key)
        feed = JobFeed(job, self.cancel)
        entry = _Entry(feed, feed.handle.submitted_at)
        try:
            self._queue.put(entry)
        except QueueFull:
            self.metrics.requests.labels(job.platform, "busy").inc()
            raise
        if job.dedup_key is not None:
            self._recent[job.dedup_key] = time.monotonic() + DEDUP_TTL_S
        self._entries[job.id] = entry
        self._idle.clear()
        self._dispatch()
        position = self._queue.position(entry)
        if position:  # REMOTE_MAX_INFLIGHT answers are at the server: it waits here, and says where
            feed.emit(Queued(position, self._eta(position)))
            timeout = self.settings.queue_timeout_s
            entry.expiry = asyncio.get_running_loop().call_later(timeout, self._expire, entry)
        return feed.handle

    async def submit(self, job: Job) -> JobHandle:
        return self.submit_nowait(job)

    def cancel(self, job_id: str) -> bool:
        """A waiting job ends at once; a running one closes its stream (the server stops generating)."""
        entry = self._entries.get(job_id)
        if entry is None or entry.feed.done:
            return False
        entry.cancelled = True
        if self._queue.remove(entry):
            self._finish(entry, Failed(FailureKind.CANCELLED, "cancelled"))
        elif entry.task is not None:
            entry.task.cancel()
        return True

    def _seen(self, key: str) -> bool:
        now = time.monotonic()
        while self._recent and (next(iter(self._recent.values())) < now or len(self._recent) > DEDUP_MAX):
            self._recent.popitem(last=False)
        return key in self._recent

    def _on_moved(self, entry: _Entry, position: int) -> None:
        if entry.feed.handle.position != position:
            entry.feed.emit(Queued(position, self._eta(position)))

    def _eta(self, position: int) -> float | None:
        return None if self._service_s is None else position * self._service_s / self.remote.max_inflight

    def _expire(self, entry: _Entry) -> None:
        entry.expiry = None
        if self._queue.remove(entry):
            self._finish(entry, Failed(FailureKind.BUSY, f"no answer slot was free for "
                                       f"{self.settings.queue_timeout_s:g} s"))

    def _dispatch(self) -> None:
        while self._queue and len(self._running) < self.remote.max_inflight and self._client is not None:
            entry = self._queue.pop()
            if entry.expiry is not None:
                entry.expiry.cancel()
                entry.expiry = None
            self._running.add(entry)
            entry.task = asyncio.get_running_loop().create_task(self._run(entry),
                                                                name=f"engbot-remote-{entry.short_id}")

    # ---- one job ----

    async def _run(self, entry: _Entry) -> None:
        try:
            await self._answer(entry)
        except asyncio.CancelledError:  # cancel(job_id), or the end of the shutdown grace: the stream is closed
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            partial = "".join(entry.pieces)
            if entry.stopping and not entry.cancelled:
                self._finish(entry, Failed(FailureKind.SHUTDOWN, SHUTDOWN_REASON, partial))
            else:
                self._finish(entry, Failed(FailureKind.CANCELLED, "cancelled", partial))
        except Exception:
            log.exception("job %s: the remote answer failed", entry.short_id)
            self._finish(entry, Failed(FailureKind.ERROR, "unexpected error", "".join(entry.pieces)))
        finally:
            self._running.discard(entry)
            if not entry.feed.done:
                self._finish(entry, Failed(FailureKind.ERROR, "unexpected error", "".join(entry.pieces)))
            self._dispatch()

    async def _answer(self, entry: _Entry) -> None:
        """Send the request (again after a 429/503, an unreachable server, or a context overflow), then stream."""
        assert self._client is not None
        job = entry.feed.job
        system = self.settings.system_prompt if job.system_prompt is None else job.system_prompt
        params = effective_params(job, self.settings.defaults, self.settings.regenerate_temperature)
        fields = sampling(params, continuing=bool(job.prefill), continue_mode=self.remote.continue_mode)
        turns: tuple[Turn, ...] = job.turns
        attempt, retry_until, skip = 0, 0.0, 0
        while True:
            request = {"model": self.model, "messages": messages(turns, system, job.prefill,
                                                                 self.remote.continue_mode), **fields}
            try:
                async with asyncio.timeout(self.settings.generation_timeout_s):
                    stream = await self._client.chat.completions.create(
                        stream=True, stream_options={"include_usage": True}, **request)
                    self._reachable = True
                    if not await self._stream(entry, stream):
                        # It ended before a word, without a reason: llama-cpp-python's server ends a stream so
                        # when it meets an error after the headers (a prompt past its context). Asked without
                        # streaming, it says what is wrong, or gives the answer whole.
                        reply = await self._client.chat.completions.create(stream=False, **request)
                        self._whole(entry, reply)
                return
            except TimeoutError:
                self._finish(entry, Failed(FailureKind.TIMEOUT, f"the answer took longer than "
                                           f"{self.settings.generation_timeout_s:g} s", "".join(entry.pieces)))
                return
            except (openai.OpenAIError, httpx2.HTTPError) as exc:
                verdict = judge(exc, started=bool(entry.started_at), attempt=attempt)
                self._note(entry, exc, verdict)
            if verdict.trim and not entry.started_at:
                skip += 1
                shorter = trimmed(job.turns, skip)
                if shorter is not None:
                    turns, skip = shorter, len(job.turns) - len(shorter)
                    entry.dropped = skip
                    continue
            elif verdict.retry_after is not None:
                now = time.monotonic()
                retry_until = retry_until or now + self.remote.retry_s
                deadline = min(retry_until, entry.submitted_at + self.settings.queue_timeout_s)
                if now + verdict.retry_after <= deadline:
                    entry.feed.emit(Queued(1, verdict.retry_after))  # the user sees it wait, not fail
                    await asyncio.sleep(verdict.retry_after)
                    attempt += 1
                    continue
            self._finish(entry, Failed(verdict.kind, self._user_reason(verdict), "".join(entry.pieces)))
            return

    def _note(self, entry: _Entry, exc: BaseException, verdict: Verdict) -> None:
        """Log what the server did (never the text), and keep it for /readyz."""
        if isinstance(exc, openai.APIConnectionError):
            self._reachable = False
        else:
            self._reachable = True
        self._last_error = f"{verdict.reason} ({verdict.detail})" if verdict.detail else verdict.reason
        level = logging.WARNING if verdict.log or verdict.retry_after is None else logging.INFO
        log.log(level, "job %s: the model server %s%s", entry.short_id, verdict.reason,
                f" ({verdict.detail})" if verdict.detail else "")

    def _user_reason(self, verdict: Verdict) -> str:
        if verdict.kind is FailureKind.PROMPT_TOO_LONG:
            return "the message is too long for this model's context: please shorten it"
        return verdict.reason

    async def _stream(self, entry: _Entry, stream: Any) -> bool:
        """Read the stream to its end; False if it ended before its first chunk. The ``async with`` closes it
        however this ends: a cancel closes the connection, so the server stops generating."""
        finish: FinishReason | None = None
        prompt_tokens = completion_tokens = 0
        async with stream:
            async for chunk in stream:
                self._began(entry)
                usage = getattr(chunk, "usage", None)
                if usage is not None:
                    prompt_tokens, completion_tokens = usage.prompt_tokens or 0, usage.completion_tokens or 0
                for choice in chunk.choices[:1]:
                    text = choice.delta.content if choice.delta is not None else None
                    if text:
                        self._text(entry, text)
                    if choice.finish_reason:
                        finish = "length" if choice.finish_reason == "length" else "stop"
        if not entry.started_at:
            return False
        if finish is None:  # (llama-cpp-python's server ends an answer so when another request interrupts it)
            log.warning("job %s: the model server ended the stream without a finish reason: the answer may be "
                        "cut short", entry.short_id)
        self._done(entry, finish or "stop", prompt_tokens, completion_tokens or len(entry.pieces))
        return True

    def _whole(self, entry: _Entry, reply: Any) -> None:
        """An answer that came in one piece (not streamed)."""
        self._began(entry)
        choice = reply.choices[0] if reply.choices else None
        text = choice.message.content if choice is not None and choice.message is not None else None
        if text:
            self._text(entry, text)
        usage = reply.usage
        finish: FinishReason = "length" if choice is not None and choice.finish_reason == "length" else "stop"
        self._done(entry, finish, usage.prompt_tokens if usage else 0,
                   usage.completion_tokens if usage else len(entry.pieces))

    def _began(self, entry: _Entry) -> None:
        if entry.started_at:
            return
        entry.started_at = time.monotonic()
        queue_wait = entry.started_at - entry.submitted_at
        self.metrics.queue_wait.observe(queue_wait)
        entry.feed.emit(Started(0, queue_wait, 0, entry.dropped))

    def _text(self, entry: _Entry, text: str) -> None:
        if not entry.pieces:
            entry.first_token_at = time.monotonic()
            self.metrics.ttft.observe(entry.first_token_at - entry.submitted_at)
        entry.pieces.append(text)
        entry.feed.emit(TextPiece(text))

    def _done(self, entry: _Entry, finish: FinishReason, prompt_tokens: int, tokens: int) -> None:
        done = time.monotonic()
        self.metrics.tokens.inc(tokens)
        took = done - entry.started_at
        self._service_s = took if self._service_s is None else 0.7 * self._service_s + 0.3 * took
        self._finish(entry, Done(
            text="".join(entry.pieces), prompt_tokens=prompt_tokens, completion_tokens=tokens,
            finish_reason=finish, queue_wait_s=entry.started_at - entry.submitted_at,
            time_to_first_token_s=(entry.first_token_at or done) - entry.submitted_at,
            duration_s=done - entry.submitted_at,
        ))

    def _finish(self, entry: _Entry, event: Done | Failed) -> None:
        feed = entry.feed
        if not feed.emit(event):
            return
        if entry.expiry is not None:
            entry.expiry.cancel()
            entry.expiry = None
        job = feed.job
        self._entries.pop(job.id, None)
        outcome = "ok" if isinstance(event, Done) else str(event.kind)
        self.metrics.requests.labels(job.platform, outcome).inc()
        now = time.monotonic()
        self.metrics.duration.observe(now - entry.submitted_at)
        log.info("job %s platform=%s outcome=%s queue_wait=%.3fs ttft=%s tokens=%d duration=%.3fs",
                 entry.short_id, job.platform, outcome,
                 (entry.started_at or now) - entry.submitted_at,
                 f"{entry.first_token_at - entry.submitted_at:.3f}s" if entry.first_token_at else "-",
                 event.completion_tokens if isinstance(event, Done) else 0, now - entry.submitted_at)
        if not self._entries:
            self._idle.set()

    # ---- stopping ----

    async def stop(self, grace_s: float | None = None) -> None:
        """Take no new jobs; let queued and running ones finish for ``grace_s`` (SHUTDOWN_GRACE_S), then end the
        rest with ``Failed(SHUTDOWN)`` (closing their streams) and close the client."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        self._accepting = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        for entry in self._queue.drain():
            self._finish(entry, Failed(FailureKind.SHUTDOWN, SHUTDOWN_REASON))
        tasks = [e.task for e in self._running if e.task is not None]
        for entry in self._running:
            entry.stopping = True
            if entry.task is not None:
                entry.task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        for entry in list(self._entries.values()):
            self._finish(entry, Failed(FailureKind.SHUTDOWN, SHUTDOWN_REASON, "".join(entry.pieces)))
        if self._client is not None:
            await self._client.close()
            self._client = None
