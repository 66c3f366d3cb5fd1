"""A batched replica's loop (GGUF, PARALLEL_SLOTS > 1): up to PARALLEL_SLOTS jobs at once, new jobs and cancels
read between steps, every running sequence decoded in one batch per step."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from engine.backends.base import ModelInfo
from engine.backends.llama_batch import BatchedLlama
from engine.config import EngineSettings
from engine.generation import Ending, TextAssembler
from engine.replica.outbox import Outbox
from engine.replica.prepare import prepare
from engine.replica.protocol import CancelJob, JobFailed, JobStarted, RunJob, StopReplica
from engine.replica.threads import ThreadShare
from engine.types import FailureKind

log = logging.getLogger("engbot.replica")


@dataclass(slots=True)
class _Running:
    seq: int
    slot: int
    out: Outbox
    text: TextAssembler
    prompt_tokens: int
    deadline: float
    timeout_s: float
    cancelled: bool = False


def serve_batched(backend: BatchedLlama, info: ModelInfo, template: Any, settings: EngineSettings,
                  conn: Connection, threads: ThreadShare) -> None:
    """Answer up to PARALLEL_SLOTS jobs at once: read new jobs and cancels between steps, decode all running
    sequences in one batch per step."""
    free = list(range(settings.parallel_slots))
    running: dict[int, _Running] = {}  # by slot

    def finish(job: _Running, ending: Ending) -> None:
        job.out.add(job.text.close())
        job.out.finish(ending, job.text.text, job.prompt_tokens, job.text.count, job.timeout_s)
        backend.remove(job.slot)
        del running[job.slot]
        free.append(job.slot)

    while True:
        while not running or conn.poll():  # block for messages only while idle
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return
            if isinstance(msg, StopReplica):
                return
            if isinstance(msg, CancelJob):
                for job in running.values():
                    job.cancelled = job.cancelled or job.seq == msg.seq
                continue
            if not isinstance(msg, RunJob):
                continue
            prepared = prepare(backend, info, template, conn, msg)
            if prepared is None:
                continue
            if not free:  # the engine never sends more jobs than slots; refuse rather than corrupt a slot
                conn.send(JobFailed(msg.seq, FailureKind.ERROR, "no free slot in this replica"))
                continue
            tokens, params = prepared.tokens, prepared.params
            slot = backend.choose_slot(tokens, free)
            free.remove(slot)
            cached = backend.add(slot, tokens, params)
            conn.send(JobStarted(msg.seq, len(tokens), prepared.dropped_turns, cached))
            text = TextAssembler(backend.detokenize, backend.is_eos, prepared.stop, params.max_new_tokens,
                                 params.ignore_eos)
            running[slot] = _Running(msg.seq, slot, Outbox(conn, msg.seq), text,
                                     len(tokens), time.monotonic() + msg.timeout_s, msg.timeout_s)
        now = time.monotonic()
        for job in list(running.values()):
            if job.cancelled:
                finish(job, Ending(interrupted=FailureKind.CANCELLED))
            elif now > job.deadline:
                finish(job, Ending(interrupted=FailureKind.TIMEOUT))
        if not running:
            continue
        threads.update()
        try:
            produced = backend.step()
        except Exception as exc:
            log.exception("batched generation failed")
            for job in list(running.values()):
                job.out.fail(FailureKind.ERROR, f"the model failed while answering: {exc}")
                backend.remove(job.slot)
            backend.forget()  # what the failed batch left in the cache is unknown
            free[:] = list(range(settings.parallel_slots))
            running.clear()
            continue
        for slot, token in produced:
            job = running[slot]
            piece = job.text.feed(token)
            if piece:
                job.out.add(piece)
            if job.text.finish_reason is not None:
                finish(job, Ending(job.text.finish_reason))
        for job in list(running.values()):
            if backend.context_full(job.slot):
                finish(job, Ending("length"))
