"""Token counts as the chat adapters estimate them, without the model's tokenizer.

The tokenizer lives in the replica processes (or on other hosts, with Redis); the adapters must still decide
whether a persona, a file or a part of a thread fits the model's context. They count UTF-8 bytes: three bytes a
token is on the safe side for the languages and code people write (English averages about four characters a
token; a CJK character is three bytes and about one token). The engine still trims to the exact budget, so an
estimate that errs leaves room unused, never fails an answer that would have fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BYTES_PER_TOKEN = 3
PROMPT_OVERHEAD_TOKENS = 64  # the chat template's own tokens around the messages


def estimate_tokens(text: str) -> int:
    """About how many tokens ``text`` takes (rather more than fewer)."""
    return math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN)


def cut_to_bytes(text: str, max_bytes: int) -> str:
    """The longest start of ``text`` whose UTF-8 encoding holds at most ``max_bytes`` bytes."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[:max(0, max_bytes)].decode("utf-8", errors="ignore")


@dataclass(frozen=True, slots=True)
class ContextBudget:
    """The model's context as the adapters plan with it: ``context_tokens`` in all, of which an answer may take
    up to its ``max_new_tokens``."""

    context_tokens: int = 2048

    def prompt_tokens(self, max_new_tokens: int) -> int:
        """Tokens left for the prompt (system prompt, conversation, question) with room for the answer."""
        return max(0, self.context_tokens - max_new_tokens - PROMPT_OVERHEAD_TOKENS)

    def persona_tokens(self, max_new_tokens: int) -> int:
        """The most a persona (a system prompt) may take: half the prompt's room, the rest is the conversation's."""
        return self.prompt_tokens(max_new_tokens) // 2
