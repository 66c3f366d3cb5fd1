"""The code that runs inside one replica process: load one model, then answer jobs one at a time.

Started with the ``spawn`` method (ggml libraries can hang in forked children). It talks to the pool over a
duplex pipe:

    parent -> child   ("job", seq, turns, system_prompt, params, timeout_s) | ("stop",)
    child -> parent   ("ready", ModelInfo) | ("load_failed", message)
                      ("started", seq, prompt_tokens, dropped_turns) | ("piece", seq, text)
                      ("done", seq, text, prompt_tokens, completion_tokens, finish_reason)
                      ("failed", seq, kind, reason, partial)

Cancellation goes through a shared integer, not the pipe, so the token loop checks it without a system call:
the parent writes the sequence number of the job to cancel.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

from engine.backends.base import Backend, Model, ModelInfo
from engine.backends.llama_batch import BatchedLlama
from engine.backends.llama_cpp import LlamaCppBackend
from engine.config import EngineSettings
from engine.errors import ConfigError, ModelFileError, PromptTooLong
from engine.generation import TextAssembler, generate_text
from engine.prompts import choose_template, fit_prompt
from engine.types import GenParams, Turn

log = logging.getLogger("engbot.replica")

FLUSH_S = 0.05  # answer text goes to the parent at most this often (after the first piece)


def make_backend(settings: EngineSettings) -> Backend | BatchedLlama:
    """The backend for the configured model file (imported here: the parent never loads a model library)."""
    if settings.model_backend == "ctransformers":
        from engine.backends.ctransformers import CTransformersBackend

        return CTransformersBackend(
            settings.model_path,
            model_type=settings.model_type,
            lib=settings.llm_lib,
            # (its thread count is fixed at load: with NUM_THREADS=auto, an equal share of the CPUs)
            threads=max(1, settings.num_threads // settings.num_workers) if settings.adaptive_threads
            else settings.num_threads,
            context_length=settings.context_length,
        )
    if settings.parallel_slots > 1:
        return BatchedLlama(settings.model_path, threads=settings.num_threads, context_length=settings.context_length,
                            slots=settings.parallel_slots, kv_cache_type=settings.kv_cache_type,
                            flash_attn=settings.flash_attn, kv_tokens=settings.kv_cache_tokens)
    return LlamaCppBackend(settings.model_path, threads=settings.num_threads, context_length=settings.context_length,
                           kv_cache_type=settings.kv_cache_type, flash_attn=settings.flash_attn)


class ThreadShare:
    """NUM_THREADS=auto: this replica's share of the CPUs, by how many replicas generate at the moment (a shared
    integer the engine keeps). One replica alone uses every CPU; two busy replicas use half each. Checked
    before every decode, so a replica that starts or ends an answer changes the others' share within a token."""

    def __init__(self, backend: Any, settings: EngineSettings, busy: Any) -> None:
        self._set = getattr(backend, "set_threads", None) if settings.adaptive_threads and busy is not None else None
        self._busy, self._cpus, self.current = busy, settings.num_threads, settings.num_threads

    def update(self) -> None:
        if self._set is not None:
            threads = max(1, self._cpus // max(1, self._busy.value))
            if threads != self.current:
                self._set(threads)
                self.current = threads


def replica_main(index: int, settings: EngineSettings, conn: Connection, cancel: Any, busy: Any = None) -> None:
    """Entry point of a replica process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                        format=f"%(asctime)s replica-{index} %(levelname)s %(message)s")
    try:
        backend = make_backend(settings)
        info = backend.load()
        name, template = choose_template(
            settings.prompt_template, info.architecture, info.chat_template, info.bos_token, info.eos_token
        )
    except (ModelFileError, ConfigError) as exc:
        conn.send(("load_failed", str(exc)))
        return
    except Exception as exc:
        log.exception("loading %s failed", settings.model_path)
        conn.send(("load_failed", f"loading {settings.model_path} failed: {exc}"))
        return
    conn.send(("ready", replace(info, detail=f"{info.detail} template={name}".strip())))
    threads = ThreadShare(backend, settings, busy)
    if isinstance(backend, BatchedLlama):
        _serve_batched(backend, info, template, settings, conn, threads)
    else:
        _serve(backend, info, template, settings, conn, cancel, threads)
    backend.close()


def _serve(backend: Backend, info: ModelInfo, template: Any, settings: EngineSettings,
           conn: Connection, cancel: Any, threads: ThreadShare) -> None:
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the parent went away
        if msg[0] == "stop":
            return
        if msg[0] == "cancel":  # for a job that already ended
            continue
        _, seq, turns, system_prompt, params, timeout_s = msg
        _run_job(backend, info, template, conn, cancel, threads, seq, turns, system_prompt, params, timeout_s)


def _prepare(backend: Model, info: ModelInfo, template: Any, conn: Connection, seq: int,
             turns: tuple[Turn, ...], system_prompt: str, params: GenParams) -> tuple[list[int], tuple[str, ...],
                                                                                  GenParams, int] | None:
    """The job's prompt tokens, stop strings, params (with a seed) and dropped turns; None after reporting a
    failure."""
    if params.seed < 0:
        params = replace(params, seed=random.randrange(2**31))
    budget = info.n_ctx - params.max_new_tokens
    try:
        tokens, stop, dropped = fit_prompt(template, backend.tokenize, system_prompt, turns, budget)
    except PromptTooLong as exc:
        conn.send(("failed", seq, "prompt_too_long", str(exc), ""))
        return None
    except Exception as exc:  # e.g. a template that rejects the conversation
        log.exception("building the prompt failed")
        conn.send(("failed", seq, "error", f"the prompt could not be built: {exc}", ""))
        return None
    return tokens, stop, params, dropped


def _run_job(backend: Backend, info: ModelInfo, template: Any, conn: Connection, cancel: Any,
             threads: ThreadShare, seq: int, turns: tuple[Turn, ...], system_prompt: str, params: GenParams,
             timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    prepared = _prepare(backend, info, template, conn, seq, turns, system_prompt, params)
    if prepared is None:
        return
    tokens, stop, params, dropped = prepared
    cached = backend.cached_prefix(tokens) if isinstance(backend, LlamaCppBackend) else 0
    conn.send(("started", seq, len(tokens), dropped, cached))

    def interrupt() -> str | None:  # after every token
        threads.update()
        if cancel.value == seq:
            return "cancelled"
        if time.monotonic() > deadline:
            return "timeout"
        return None

    out = TextOut(conn, seq)
    threads.update()
    try:
        result = generate_text(backend, tokens, params, stop, out.add, interrupt)
    except Exception as exc:
        log.exception("generation failed")
        out.flush()
        conn.send(("failed", seq, "error", f"the model failed while answering: {exc}", out.text))
        return
    out.flush()
    _send_final(conn, seq, result.finish_reason, result.text, len(tokens), result.completion_tokens, timeout_s)


class TextOut:
    """One answer's text on its way to the parent: the first piece at once (time to first token), then at most
    one message per ``FLUSH_S``. Every message wakes the parent process, which then competes for the cores the
    model's threads are spinning on; adapters show the text at most once a second anyway."""

    def __init__(self, conn: Connection, seq: int) -> None:
        self.conn, self.seq = conn, seq
        self.text = ""  # everything added
        self._pending = ""
        self._sent_at: float | None = None

    def add(self, piece: str) -> None:
        self.text += piece
        self._pending += piece
        if self._sent_at is None or time.monotonic() - self._sent_at >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self.conn.send(("piece", self.seq, self._pending))
            self._pending, self._sent_at = "", time.monotonic()


def _send_final(conn: Connection, seq: int, reason: str, text: str, prompt_tokens: int, completion_tokens: int,
                timeout_s: float) -> None:
    if reason == "cancelled":
        conn.send(("failed", seq, "cancelled", "cancelled", text))
    elif reason == "timeout":
        conn.send(("failed", seq, "timeout", f"the answer took longer than {timeout_s:g} s", text))
    else:
        conn.send(("done", seq, text, prompt_tokens, completion_tokens, reason))


@dataclass(slots=True)
class _Running:
    seq: int
    slot: int
    out: TextOut
    text: TextAssembler
    prompt_tokens: int
    deadline: float
    timeout_s: float
    cancelled: bool = False


def _serve_batched(backend: BatchedLlama, info: ModelInfo, template: Any, settings: EngineSettings,
                   conn: Connection, threads: ThreadShare) -> None:
    """Answer up to PARALLEL_SLOTS jobs at once: read new jobs and cancels between steps, decode all running
    sequences in one batch per step."""
    free = list(range(settings.parallel_slots))
    running: dict[int, _Running] = {}  # by slot

    def finish(job: _Running, reason: str) -> None:
        job.out.add(job.text.close())
        job.out.flush()
        _send_final(conn, job.seq, reason, job.text.text, job.prompt_tokens, job.text.count, job.timeout_s)
        backend.remove(job.slot)
        del running[job.slot]
        free.append(job.slot)

    while True:
        while not running or conn.poll():  # block for messages only while idle
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return
            if msg[0] == "stop":
                return
            if msg[0] == "cancel":
                for job in running.values():
                    job.cancelled = job.cancelled or job.seq == msg[1]
                continue
            _, seq, turns, system_prompt, params, timeout_s = msg
            prepared = _prepare(backend, info, template, conn, seq, turns, system_prompt, params)
            if prepared is None:
                continue
            tokens, stop, params, dropped = prepared
            if not free:  # the pool never sends more jobs than slots; refuse rather than corrupt a slot
                conn.send(("failed", seq, "error", "no free slot in this worker", ""))
                continue
            slot = backend.choose_slot(tokens, free)
            free.remove(slot)
            cached = backend.add(slot, tokens, params)
            conn.send(("started", seq, len(tokens), dropped, cached))
            text = TextAssembler(backend.detokenize, backend.is_eos, stop, params.max_new_tokens, params.ignore_eos)
            running[slot] = _Running(seq, slot, TextOut(conn, seq), text,
                                     len(tokens), time.monotonic() + timeout_s, timeout_s)
        now = time.monotonic()
        for job in list(running.values()):
            if job.cancelled:
                finish(job, "cancelled")
            elif now > job.deadline:
                finish(job, "timeout")
        if not running:
            continue
        threads.update()
        try:
            produced = backend.step()
        except Exception as exc:
            log.exception("batched generation failed")
            for job in list(running.values()):
                job.out.flush()
                conn.send(("failed", job.seq, "error", f"the model failed while answering: {exc}", job.text.text))
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
                finish(job, job.text.finish_reason)
        for job in list(running.values()):
            if backend.context_full(job.slot):
                finish(job, "length")
