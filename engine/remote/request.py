"""A job as an OpenAI chat completion request, and what the server's errors mean for it. Pure: no network.

    messages(job, system, "prefill")     -> [{"role": "system", ...}, ..., {"role": "assistant", "content": prefill}]
    sampling(job, defaults, 0.7)         -> {"max_tokens": 512, "temperature": 0.0, "top_p": 0.95, ...}
    judge(exc, started=False)            -> Verdict: retry (after how long), trim the conversation, or fail (kind)
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx2
import openai

from engine.types import FailureKind, GenParams, Job, Turn

# Continue on a server that cannot continue an assistant message (REMOTE_CONTINUE=ask)
CONTINUE_PROMPT = "Continue exactly where you stopped, without repeating anything."
RETRY_STATUSES = (429, 503)  # the server is full or starting: try again shortly
MAX_RETRY_AFTER_S = 30.0
CONTEXT_WORDS = re.compile(r"context (length|window|size)|maximum context|too many tokens|exceeds? the "
                           r"(available )?context|prompt is too long", re.IGNORECASE)


def messages(turns: Sequence[Turn], system: str, prefill: str = "", continue_mode: str = "prefill"
             ) -> list[dict[str, str]]:
    """The chat messages of a conversation: the system prompt, the turns, and for Continue the answer so far as
    the last assistant message (``prefill``: llama.cpp's server and Ollama go on from it, vLLM too with the
    ``continue_final_message`` hint of ``sampling``) or followed by a request to continue (``ask``)."""
    out = [{"role": "system", "content": system}] if system else []
    out += [{"role": t.role, "content": t.content} for t in turns]
    if prefill:
        out.append({"role": "assistant", "content": prefill})
        if continue_mode == "ask":
            out.append({"role": "user", "content": CONTINUE_PROMPT})
    return out


def trimmed(turns: Sequence[Turn], dropped: int) -> tuple[Turn, ...] | None:
    """The conversation without its ``dropped`` oldest turns, starting with a user turn (as the local engine trims
    to fit its context); None when nothing more can go."""
    kept = list(turns[dropped:])
    while len(kept) > 1 and kept[0].role != "user":
        kept.pop(0)
    return tuple(kept) if kept and dropped < len(turns) else None


def effective_params(job: Job, defaults: GenParams, regenerate_temperature: float) -> GenParams:
    """The job's sampling; Regenerate (``resample``) is never greedy and never repeats a seed."""
    params = job.params or defaults
    if job.resample:
        params = replace(params, temperature=max(params.temperature, regenerate_temperature), seed=-1)
    return params


def sampling(params: GenParams, *, continuing: bool, continue_mode: str) -> dict[str, Any]:
    """The request's sampling fields. Only the standard ones by default: TOP_K and REPEAT_PENALTY are the local
    engine's (an OpenAI endpoint refuses unknown fields), the server's own defaults apply to them here."""
    out: dict[str, Any] = {"max_tokens": params.max_new_tokens, "temperature": params.temperature,
                           "top_p": params.top_p}
    if params.seed >= 0:
        out["seed"] = params.seed
    elif params.temperature > 0:
        out["seed"] = random.randrange(2**31)  # (a server with a fixed default seed would repeat itself)
    extra: dict[str, Any] = {}
    if params.ignore_eos:  # benchmarks: vLLM and llama.cpp's server read it
        extra["ignore_eos"] = True
    if continuing and continue_mode == "prefill":  # vLLM continues the last message only when told to
        extra.update(continue_final_message=True, add_generation_prompt=False)
    if extra:
        out["extra_body"] = extra
    return out


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do after an error: ``retry_after`` seconds (None: do not retry), or ``trim`` the oldest turns and
    send again, or end the job with ``kind`` and ``reason`` (for the user: "The model server {reason}").
    ``detail`` is for the log (the server's message, the network error); ``log``: unexpected, worth a warning."""

    kind: FailureKind
    reason: str
    detail: str = ""
    retry_after: float | None = None
    trim: bool = False
    log: bool = False


def judge(exc: BaseException, *, started: bool, attempt: int) -> Verdict:
    """What an error of the ``openai`` client means. ``started``: the server took the request (an answer that
    broke off is not sent again: the user saw part of it). ``attempt``: retries so far, for the backoff."""
    backoff = min(8.0, 0.5 * 2 ** attempt) * (0.75 + random.random() / 2)
    if isinstance(exc, openai.APIConnectionError | httpx2.HTTPError):  # (a timeout is a connection error too)
        if started:
            return Verdict(FailureKind.UNAVAILABLE, "broke off the answer", cause_of(exc), log=True)
        return Verdict(FailureKind.UNAVAILABLE, "could not be reached", cause_of(exc), retry_after=backoff)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status in RETRY_STATUSES and not started:
            wait = _retry_after(exc.response.headers.get("retry-after"))
            what = "is busy (429 Too Many Requests)" if status == 429 else "is unavailable (503)"
            return Verdict(FailureKind.BUSY, what, server_message(exc),
                           retry_after=backoff if wait is None else max(wait, 0.05))
        if status == 400 and _context_exceeded(exc):
            return Verdict(FailureKind.PROMPT_TOO_LONG, "cannot fit the conversation in its context",
                           server_message(exc), trim=True)
        if status in (401, 403):
            return Verdict(FailureKind.ERROR, f"refused OPENAI_API_KEY ({status})", server_message(exc), log=True)
        if status == 404:
            return Verdict(FailureKind.ERROR, "does not know OPENAI_MODEL (404)", server_message(exc), log=True)
        return Verdict(FailureKind.ERROR, f"answered {status}", server_message(exc), log=True)
    if isinstance(exc, openai.APIError):  # an error event inside the stream
        return Verdict(FailureKind.ERROR, "reported an error in the stream", server_message(exc), log=True)
    return Verdict(FailureKind.ERROR, "could not be used", f"{type(exc).__name__}: {exc}", log=True)


def _context_exceeded(exc: openai.APIStatusError) -> bool:
    return exc.code == "context_length_exceeded" or bool(CONTEXT_WORDS.search(server_message(exc)))


def server_message(exc: openai.APIError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])[:300]
        if isinstance(body.get("detail"), str):
            return str(body["detail"])[:300]
    return str(exc.message)[:300]


def cause_of(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    text = f"{type(cause).__name__}: {cause}" if cause else str(exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (an HTTP date is not worth parsing here: the backoff applies), at most 30 s."""
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(value))) if value else None
    except ValueError:
        return None
