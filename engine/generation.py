"""The token loop shared by every backend: UTF-8 assembly, stop strings, limits, cancellation."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine.backends.base import Backend
from engine.types import FailureKind, FinishReason, GenParams


@dataclass(frozen=True, slots=True)
class Ending:
    """How a generation ended: on its own (``finish_reason``: an end-of-text token or stop string, or
    ``max_new_tokens``), or stopped from outside before that (``interrupted``: CANCELLED or TIMEOUT)."""

    finish_reason: FinishReason = "stop"
    interrupted: FailureKind | None = None


@dataclass(frozen=True, slots=True)
class Generated:
    text: str
    completion_tokens: int
    ending: Ending


class TextAssembler:
    """Turns one sequence's tokens into text pieces, one token at a time.

    Text that could be the start of a stop string is held back until it is known not to be one, so a stop
    string never reaches the caller. Used by the single-sequence loop below and by the batched loop, which
    feeds several assemblers in turn.
    """

    def __init__(self, detokenize: Callable[[list[int]], bytes], is_eos: Callable[[int], bool],
                 stop: Sequence[str], max_new_tokens: int, ignore_eos: bool = False) -> None:
        self._detokenize, self._is_eos = detokenize, is_eos
        self._ignore_eos = ignore_eos
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = stop
        self._hold = max((len(s) for s in stop), default=1) - 1
        self._max = max_new_tokens
        self.text = ""  # everything decoded so far (cut at a stop string)
        self.sent = 0  # how much of ``text`` was returned as pieces
        self.count = 0
        self.finish_reason: FinishReason | None = None
        self._cut = self._closed = False

    def feed(self, token: int) -> str:
        """Take one token; return the new text that is safe to show ("" if none). Sets ``finish_reason`` when
        the sequence is complete."""
        eos = self._is_eos(token)
        if eos and not self._ignore_eos:
            self.finish_reason = "stop"
            return self.close()
        self.count += 1
        if not eos:  # (with ignore_eos, an end-of-text token counts but shows nothing)
            self.text += self._decoder.decode(self._detokenize([token]))
        cut = _find_stop(self.text, self._stop, self.sent)
        if cut is not None:
            self.text = self.text[:cut]
            self.finish_reason, self._cut = "stop", True
            return self.close()
        if self.count >= self._max:
            self.finish_reason = "length"
            return self.close()
        safe = len(self.text) - _partial_stop_len(self.text, self._stop, self._hold)
        if safe <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent : safe], safe
        return piece

    def close(self) -> str:
        """End the sequence (for any reason): the held-back text, which turned out not to start a stop string."""
        if not self._closed:
            self._closed = True
            if not self._cut:  # after a stop string, leftover bytes belong to what follows it
                self.text += self._decoder.decode(b"", final=True)
        piece, self.sent = self.text[self.sent :], len(self.text)
        return piece


def generate_text(
    backend: Backend,
    prompt_tokens: list[int],
    params: GenParams,
    stop: Sequence[str],
    emit: Callable[[str], None],
    interrupt: Callable[[], FailureKind | None],
) -> Generated:
    """Generate up to ``params.max_new_tokens`` tokens, calling ``emit`` with each new piece of text.

    ``interrupt`` is checked after every token; a non-None value (CANCELLED, TIMEOUT) ends the generation there.
    """
    text = TextAssembler(backend.detokenize, backend.is_eos, stop, params.max_new_tokens, params.ignore_eos)
    ending = Ending()  # the backend may end on its own (a full context)
    for token in backend.generate(prompt_tokens, params):
        piece = text.feed(token)
        if piece:
            emit(piece)
        if text.finish_reason is not None:
            ending = Ending(text.finish_reason)
            break
        interrupted = interrupt()
        if interrupted is not None:
            ending = Ending(interrupted=interrupted)
            piece = text.close()
            if piece:
                emit(piece)
            break
    else:
        piece = text.close()
        if piece:
            emit(piece)
    return Generated(text.text, text.count, ending)


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
