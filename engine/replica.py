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
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

from engine.backends.base import Backend, ModelInfo
from engine.config import EngineSettings
from engine.errors import ConfigError, ModelFileError, PromptTooLong
from engine.generation import generate_text
from engine.prompts import choose_template, fit_prompt
from engine.types import GenParams, Turn

log = logging.getLogger("engbot.replica")


def make_backend(settings: EngineSettings) -> Backend:
    """The backend for the configured model file (imported here: the parent never loads a model library)."""
    if settings.model_backend == "ctransformers":
        from engine.backends.ctransformers import CTransformersBackend

        return CTransformersBackend(
            settings.model_path,
            model_type=settings.model_type,
            lib=settings.llm_lib,
            threads=settings.num_threads,
            context_length=settings.context_length,
        )
    from engine.backends.llama_cpp import LlamaCppBackend

    return LlamaCppBackend(settings.model_path, threads=settings.num_threads, context_length=settings.context_length,
                           kv_cache_type=settings.kv_cache_type)


def replica_main(index: int, settings: EngineSettings, conn: Connection, cancel: Any) -> None:
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
    _serve(backend, info, template, settings, conn, cancel)
    backend.close()


def _serve(backend: Backend, info: ModelInfo, template: Any, settings: EngineSettings,
           conn: Connection, cancel: Any) -> None:
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the parent went away
        if msg[0] == "stop":
            return
        _, seq, turns, system_prompt, params, timeout_s = msg
        _run_job(backend, info, template, settings, conn, cancel, seq, turns, system_prompt, params, timeout_s)


def _run_job(backend: Backend, info: ModelInfo, template: Any, settings: EngineSettings, conn: Connection,
             cancel: Any, seq: int, turns: tuple[Turn, ...], system_prompt: str, params: GenParams,
             timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    if params.seed < 0:
        params = replace(params, seed=random.randrange(2**31))
    budget = info.n_ctx - params.max_new_tokens
    try:
        tokens, stop, dropped = fit_prompt(template, backend.tokenize, system_prompt, turns, budget)
    except PromptTooLong as exc:
        conn.send(("failed", seq, "prompt_too_long", str(exc), ""))
        return
    except Exception as exc:  # e.g. a template that rejects the conversation
        log.exception("building the prompt failed")
        conn.send(("failed", seq, "error", f"the prompt could not be built: {exc}", ""))
        return
    conn.send(("started", seq, len(tokens), dropped))

    def interrupt() -> str | None:
        if cancel.value == seq:
            return "cancelled"
        if time.monotonic() > deadline:
            return "timeout"
        return None

    pieces: list[str] = []

    def emit(text: str) -> None:
        pieces.append(text)
        conn.send(("piece", seq, text))

    try:
        result = generate_text(backend, tokens, params, stop, emit, interrupt)
    except Exception as exc:
        log.exception("generation failed")
        conn.send(("failed", seq, "error", f"the model failed while answering: {exc}", "".join(pieces)))
        return
    if result.finish_reason == "cancelled":
        conn.send(("failed", seq, "cancelled", "cancelled", result.text))
    elif result.finish_reason == "timeout":
        conn.send(("failed", seq, "timeout", f"the answer took longer than {timeout_s:g} s", result.text))
    else:
        conn.send(("done", seq, result.text, len(tokens), result.completion_tokens, result.finish_reason))
