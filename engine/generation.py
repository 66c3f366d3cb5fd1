"""The token loop shared by every backend: UTF-8 assembly, stop strings, limits, cancellation."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine.backends.base import Backend
from engine.types import GenParams


@dataclass(slots=True)
class Generated:
    text: str
    completion_tokens: int
    finish_reason: str  # "stop", "length", or what ``interrupt`` returned ("cancelled", "timeout")


def generate_text(
    backend: Backend,
    prompt_tokens: list[int],
    params: GenParams,
    stop: Sequence[str],
    emit: Callable[[str], None],
    interrupt: Callable[[], str | None],
) -> Generated:
    """Generate up to ``params.max_new_tokens`` tokens, calling ``emit`` with each new piece of text.

    Text that could be the start of a stop string is held back until it is known not to be one, so a stop
    string never reaches ``emit``. ``interrupt`` is checked after every token; a non-None value ends the
    generation with that value as the finish reason.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = ""  # everything decoded so far
    sent = 0  # how much of ``text`` went to ``emit``
    count = 0
    reason = "length"
    hold = max((len(s) for s in stop), default=1) - 1
    for token in backend.generate(prompt_tokens, params):
        if backend.is_eos(token):
            reason = "stop"
            break
        count += 1
        text += decoder.decode(backend.detokenize([token]))
        cut = _find_stop(text, stop, sent)
        if cut is not None:
            text = text[:cut]
            reason = "stop"
            break
        safe = len(text) - _partial_stop_len(text, stop, hold)
        if safe > sent:
            emit(text[sent:safe])
            sent = safe
        if count >= params.max_new_tokens:
            break
        interrupted = interrupt()
        if interrupted is not None:
            reason = interrupted
            break
    else:
        reason = "stop"
    text += decoder.decode(b"", final=True)
    if len(text) > sent:  # held-back text that turned out not to start a stop string
        emit(text[sent:])
    return Generated(text, count, reason)


def _find_stop(text: str, stop: Sequence[str], start: int) -> int | None:
    # a stop string may begin before ``start`` (in held-back text); search a little earlier
    found = [i for s in stop if (i := text.find(s, max(0, start - len(s)))) >= 0]
    return min(found) if found else None


def _partial_stop_len(text: str, stop: Sequence[str], hold: int) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
    for n in range(min(hold, len(text)), 0, -1):
        tail = text[-n:]
        if any(s.startswith(tail) for s in stop):
            return n
    return 0
