"""What the engine tests ask, and how they wait for an answer to start."""

from __future__ import annotations

from engine.api import JobHandle
from engine.types import Done, Failed, GenParams, TextPiece

GREEDY = GenParams(max_new_tokens=24, temperature=0.0, repeat_penalty=1.0)
# runs for seconds on any machine (no end-of-text): to be cancelled, timed out or killed
LONG = GenParams(max_new_tokens=1500, temperature=0.8, seed=1, ignore_eos=True)
QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?", "What is 2 + 2?", "Name a primary colour.",
             "What is the largest planet?", "Translate 'hello' into Spanish."]


async def first_text(handle: JobHandle) -> None:
    """Wait until the answer's first text arrived (the job runs)."""
    async for event in handle:
        if isinstance(event, TextPiece):
            return
        assert not isinstance(event, Done | Failed), event
