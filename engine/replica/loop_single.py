"""A one-slot replica's loop (PARALLEL_SLOTS=1, and every ctransformers model): one job at a time, token by
token, reading cancels from a shared integer after every token."""

from __future__ import annotations

import logging
import time
from multiprocessing.connection import Connection
from typing import Any

from engine.backends.base import Backend, ModelInfo
from engine.backends.llama_cpp import LlamaCppBackend
from engine.generation import generate_text
from engine.replica.outbox import Outbox
from engine.replica.prepare import prepare
from engine.replica.protocol import CancelJob, JobStarted, RunJob, StopReplica
from engine.replica.threads import ThreadShare
from engine.types import FailureKind

log = logging.getLogger("engbot.replica")


def serve_single(backend: Backend, info: ModelInfo, template: Any, conn: Connection, cancel: Any,
                 threads: ThreadShare) -> None:
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the parent went away
        if isinstance(msg, StopReplica):
            return
        if isinstance(msg, CancelJob):  # for a job that already ended
            continue
        if isinstance(msg, RunJob):
            run_job(backend, info, template, conn, cancel, threads, msg)


def run_job(backend: Backend, info: ModelInfo, template: Any, conn: Connection, cancel: Any, threads: ThreadShare,
            job: RunJob) -> None:
    deadline = time.monotonic() + job.timeout_s
    prepared = prepare(backend, info, template, conn, job)
    if prepared is None:
        return
    tokens = prepared.tokens
    cached = backend.cached_prefix(tokens) if isinstance(backend, LlamaCppBackend) else 0
    conn.send(JobStarted(job.seq, len(tokens), prepared.dropped_turns, cached))

    def interrupt() -> FailureKind | None:  # after every token
        threads.update()
        if cancel.value == job.seq:
            return FailureKind.CANCELLED
        if time.monotonic() > deadline:
            return FailureKind.TIMEOUT
        return None

    out = Outbox(conn, job.seq)
    threads.update()
    try:
        result = generate_text(backend, tokens, prepared.params, prepared.stop, out.add, interrupt)
    except Exception as exc:
        log.exception("generation failed")
        out.fail(FailureKind.ERROR, f"the model failed while answering: {exc}")
        return
    out.finish(result.ending, result.text, len(tokens), result.completion_tokens, job.timeout_s)
