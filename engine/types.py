"""The values that cross the engine's seams: jobs going in, events coming out.

All are frozen dataclasses made of plain values, so they pickle across the replica processes and the Redis
queue unchanged.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class Turn:
    """One message of a conversation."""

    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class GenParams:
    """Sampling settings of one generation. ``temperature == 0`` is greedy decoding."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 0.95
    top_k: int = 40
    repeat_penalty: float = 1.1
    seed: int = -1  # -1: a new random seed per job
    ignore_eos: bool = False  # never sample end-of-text: the answer runs to max_new_tokens (benchmarks, tests)


@dataclass(frozen=True, slots=True)
class Job:
    """A conversation to answer. The engine adds the system prompt and trims old turns to fit the context.

    ``params=None`` takes the engine's configured defaults. ``dedup_key`` (e.g. a platform event id) makes a
    second submit of the same event raise ``DuplicateJob``. ``user`` (who asks, e.g. ``slack:U0123``) shares the
    queue fairly: waiting jobs are taken in turn by user. ``prefill`` is the start of the answer that the model
    goes on from (Continue an answer cut by ``max_new_tokens``); the events carry only the new text. ``resample``
    asks for another answer than the last (Regenerate): sampled at REGENERATE_TEMPERATURE at least, with a new
    seed, whatever the defaults say. ``model`` names one of the engine's models (``MODELS=fast=...,code=...``; a
    channel's setting): None, or a name the engine does not serve, takes its default model.
    """

    turns: tuple[Turn, ...]
    params: GenParams | None = None
    platform: str = "cli"
    dedup_key: str | None = None
    system_prompt: str | None = None  # None: the SYSTEM_PROMPT setting
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    user: str | None = None
    prefill: str = ""
    resample: bool = False
    model: str | None = None

    @classmethod
    def ask(cls, text: str, **kwargs: object) -> Job:
        """A one-question job."""
        return cls(turns=(Turn("user", text),), **kwargs)  # type: ignore[arg-type]


# ---- events streamed back for one job, in this order: Queued*, Started, TextPiece*, then Done or Failed ----


@dataclass(frozen=True, slots=True)
class Queued:
    """The job waits; ``position`` 1 is next. Sent on submit and again whenever the position changes.
    ``eta_s``: about how long until it starts, from the rate jobs finished at lately (None until that is known)."""

    position: int
    eta_s: float | None = None


@dataclass(frozen=True, slots=True)
class Started:
    """A replica took the job. ``prompt_tokens`` counts the prompt after history trimming, ``cached_tokens`` the
    part of it that was not read again.

    ``attempt`` > 1 (QUEUE_BACKEND=redis only): the host running the job went away and another one starts the
    answer again; text shown so far belongs to the abandoned attempt.
    """

    replica: int  # which model process of the host answers (its index)
    queue_wait_s: float
    prompt_tokens: int
    dropped_turns: int = 0
    attempt: int = 1
    cached_tokens: int = 0  # prompt tokens found in the replica's cache (an earlier turn of the conversation)


@dataclass(frozen=True, slots=True)
class TextPiece:
    """Newly generated text (one token or a few)."""

    text: str


FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class Done:
    """The answer is complete."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    queue_wait_s: float = 0.0
    time_to_first_token_s: float = 0.0
    duration_s: float = 0.0


class FailureKind(StrEnum):
    """Why a job ended without an answer. One word per cause, the same in every layer (the replica, the engine,
    the Redis wire format, the adapters); ``bots.messages.failure_text`` gives each its one user-facing text."""

    TIMEOUT = "timeout"  # the answer ran past GENERATION_TIMEOUT_S (or the Redis JOB_DEADLINE_S)
    CRASHED = "crashed"  # the replica process died while answering
    CANCELLED = "cancelled"  # stopped on request (cancel(job_id), or the caller went away)
    PROMPT_TOO_LONG = "prompt_too_long"  # the newest message alone does not fit the context
    LOAD_FAILED = "load_failed"  # no replica could load the model
    SHUTDOWN = "shutdown"  # the engine stopped before the answer was done
    BUSY = "busy"  # no replica was free within QUEUE_TIMEOUT_S (or the model server kept answering 429/503)
    UNAVAILABLE = "unavailable"  # the model server (MODEL_BACKEND=openai) could not be reached or broke off
    ERROR = "error"  # anything else (a bug, a model library error): details in the log

    @classmethod
    def parse(cls, value: str) -> FailureKind:
        """The kind named ``value``; ``ERROR`` for a name this version does not know (a newer host's)."""
        try:
            return cls(value)
        except ValueError:
            return cls.ERROR


@dataclass(frozen=True, slots=True)
class Failed:
    """The job ended without an answer. ``reason`` is fit to show to the user; ``partial`` is any text made."""

    kind: FailureKind
    reason: str
    partial: str = ""


Event = Queued | Started | TextPiece | Done | Failed
FINAL_EVENTS = (Done, Failed)
