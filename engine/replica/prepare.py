"""Turning a ``RunJob`` into what a loop runs: the prompt's tokens within the context, and a seed."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

from engine.backends.base import Model, ModelInfo
from engine.errors import PromptTooLong
from engine.prompts import fit_prompt
from engine.replica.protocol import JobFailed, RunJob
from engine.types import FailureKind, GenParams

log = logging.getLogger("engbot.replica")


@dataclass(frozen=True, slots=True)
class Prepared:
    """A job made ready to run: its prompt's tokens, stop strings, params (with a seed) and dropped turns."""

    tokens: list[int]
    stop: tuple[str, ...]
    params: GenParams
    dropped_turns: int


def prepare(backend: Model, info: ModelInfo, template: Any, conn: Connection, job: RunJob) -> Prepared | None:
    """Build the job's prompt within the context; None after reporting a failure (``JobFailed``)."""
    params = job.params
    if params.seed < 0:
        params = replace(params, seed=random.randrange(2**31))
    budget = info.n_ctx - params.max_new_tokens
    try:
        tokens, stop, dropped = fit_prompt(template, backend.tokenize, job.system_prompt, job.turns, budget,
                                           job.prefill)
    except PromptTooLong as exc:
        conn.send(JobFailed(job.seq, FailureKind.PROMPT_TOO_LONG, str(exc)))
        return None
    except Exception as exc:  # e.g. a template that rejects the conversation
        log.exception("building the prompt failed")
        conn.send(JobFailed(job.seq, FailureKind.ERROR, f"the prompt could not be built: {exc}"))
        return None
    return Prepared(tokens, tuple(stop), params, dropped)
