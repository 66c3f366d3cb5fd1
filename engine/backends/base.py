"""The seam between the engine and a model library.

A backend lives inside one replica process and holds one model. The engine drives it token by token so that
cancellation, timeouts, stop strings and token counts work the same for every library.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from engine.types import GenParams


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a loaded model tells about itself."""

    backend: str  # "llama_cpp" or "ctransformers"
    architecture: str  # e.g. "llama", "gpt_neox"
    n_ctx: int  # the context the model was loaded with
    chat_template: str | None  # the file's own (Jinja) chat template, if any
    bos_token: str
    eos_token: str
    detail: str = ""  # library-specific note, e.g. the ctransformers lib variant


class Model(Protocol):
    """One loaded model, as prompt building needs it. Not thread-safe: one per process."""

    def load(self) -> ModelInfo:
        """Load the model file; raise ``ModelFileError`` with a clear message if it cannot be read."""
        ...

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        """Tokens of a prompt. ``special``: the text of special tokens (``<|im_end|>``) becomes those tokens (for
        the template's own text, never for message text); ``add_bos`` adds a BOS if the model has one."""
        ...

    def detokenize(self, tokens: list[int]) -> bytes:
        """The bytes of these tokens (may end inside a UTF-8 sequence)."""
        ...

    def is_eos(self, token: int) -> bool:
        """Whether this token ends the text."""
        ...

    def close(self) -> None:
        """Free the model's memory."""
        ...


class Backend(Model, Protocol):
    """A model that answers one sequence at a time, token by token."""

    def generate(self, prompt_tokens: list[int], params: GenParams) -> Iterator[int]:
        """Sample token ids after the prompt, one at a time, until the caller stops iterating.

        End-of-text tokens are yielded too: the caller checks ``is_eos``.
        """
        ...
