"""The messages between the engine (parent) and one replica process (child), sent over a duplex pipe.

    parent -> child   RunJob | CancelJob | StopReplica
    child -> parent   Ready | LoadFailed, then for each job: JobStarted, JobText*, and JobDone or JobFailed

Every message about a job carries its ``seq``, a number the parent gives each job it sends (unique for the
parent's life), so a late message of an abandoned job is recognised and dropped. All are frozen dataclasses of
plain values: they pickle across the ``spawn`` boundary as they are.

A one-slot replica also reads cancels from a shared integer (``ReplicaProcess.cancel`` writes the job's
``seq``): its token loop checks it after every token without a system call. A batched replica reads
``CancelJob`` between steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.backends.base import ModelInfo
from engine.types import FailureKind, FinishReason, GenParams, Turn

# ---- parent -> child ----


@dataclass(frozen=True, slots=True)
class RunJob:
    """Answer ``turns`` after ``system_prompt`` (going on from ``prefill``, the answer's start, if any); give up
    after ``timeout_s`` seconds."""

    seq: int
    turns: tuple[Turn, ...]
    system_prompt: str
    params: GenParams
    timeout_s: float
    prefill: str = ""


@dataclass(frozen=True, slots=True)
class CancelJob:
    """Stop job ``seq`` (it ends with ``JobFailed(CANCELLED)`` and the text so far). Ignored if it ended."""

    seq: int


@dataclass(frozen=True, slots=True)
class StopReplica:
    """Free the model and exit."""


ToReplica = RunJob | CancelJob | StopReplica

# ---- child -> parent ----


@dataclass(frozen=True, slots=True)
class Ready:
    """The model is loaded; jobs may come."""

    info: ModelInfo


@dataclass(frozen=True, slots=True)
class LoadFailed:
    """The model could not be loaded; the process exits. ``message`` is fit for the operator."""

    message: str


@dataclass(frozen=True, slots=True)
class JobStarted:
    """The prompt was built: ``prompt_tokens`` after dropping ``dropped_turns`` old turns to fit, of which
    ``cached_tokens`` were found in the replica's cache and are not read again."""

    seq: int
    prompt_tokens: int
    dropped_turns: int
    cached_tokens: int


@dataclass(frozen=True, slots=True)
class JobText:
    """New answer text (the first piece at once, then at most one message per ``outbox.FLUSH_S``)."""

    seq: int
    text: str


@dataclass(frozen=True, slots=True)
class JobDone:
    seq: int
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason


@dataclass(frozen=True, slots=True)
class JobFailed:
    """The job ended without an answer; ``partial`` is the text made before."""

    seq: int
    kind: FailureKind
    reason: str
    partial: str = ""


FromReplica = Ready | LoadFailed | JobStarted | JobText | JobDone | JobFailed
JobMessage = JobStarted | JobText | JobDone | JobFailed
JOB_FINAL = (JobDone, JobFailed)
