"""The batched backend on the real default model: what goes into a step, which slot a prompt takes, and what
happens when the shared KV cache is full (no timing)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.backends.llama_batch import BatchedLlama
from engine.config import EngineSettings
from engine.errors import ConfigError
from engine.types import GenParams

GREEDY = GenParams(max_new_tokens=64, temperature=0.0, ignore_eos=True)


@pytest.fixture
def model(model_path: Path) -> Iterator[BatchedLlama]:
    backend = BatchedLlama(model_path, threads=1, context_length=256, slots=4, kv_tokens=512)
    backend.load()
    yield backend
    backend.close()


def prompt(backend: BatchedLlama, text: str) -> list[int]:
    return backend.tokenize(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n", False)


def test_a_step_holds_every_generating_token_then_prompt_chunks(model: BatchedLlama) -> None:
    model.add(2, prompt(model, "Tell me about cats."), GREEDY)
    first = model._plan()
    assert [(p.slot, p.reading, p.wants_logits) for p in first] == [(2, True, True)]
    assert model.step() and model.active == 1
    model.add(0, prompt(model, "Tell me about dogs."), GREEDY)
    model.add(1, prompt(model, "word " * 600), GREEDY)  # longer than what is left of the batch
    parts = model._plan()
    # the generating sequence's one token first, then prompts in the rest of the batch (512 tokens)
    assert (parts[0].slot, parts[0].reading, len(parts[0].tokens)) == (2, False, 1)
    assert sum(len(p.tokens) for p in parts) <= 512
    assert all(p.reading for p in parts[1:])
    long_part = next(p for p in parts if p.slot == 1)
    assert not long_part.wants_logits  # its prompt goes on in the next step


def test_a_prompt_takes_the_slot_that_holds_its_prefix(model: BatchedLlama) -> None:
    first = prompt(model, "Tell me about the sea.")
    assert model.add(3, first, GREEDY) == 0
    tokens = []
    for _ in range(10):
        tokens += [token for slot, token in model.step() if slot == 3]
    model.remove(3)
    follow_up = first + tokens + model.tokenize("<|im_end|>\n<|im_start|>user\nMore?<|im_end|>\n", False)
    slot = model.choose_slot(follow_up, [0, 1, 2, 3])
    assert slot == 3
    cached = model.add(slot, follow_up, GREEDY)
    assert cached >= len(first)  # the earlier turn and the answer's decoded tokens were not read again
    # an unrelated prompt takes the least recently used free slot, keeping that cache for later
    assert model.choose_slot(prompt(model, "Name a colour."), [0, 1, 2]) == 0
    # ... and an empty slot rather than one whose cache shares only the opening with it
    model.remove(slot)
    assert model.choose_slot(prompt(model, "Name a colour."), [1, 3]) == 1


def test_a_full_cache_makes_the_newest_sequence_wait_not_fail(model: BatchedLlama) -> None:
    # four sequences that will need 4 x (about 20 + 150) cells of a 512-cell cache
    counts = {slot: 0 for slot in range(4)}
    preempted = 0
    for slot in counts:
        model.add(slot, prompt(model, f"Tell me a story about {slot}."), GREEDY)
    for _ in range(2000):
        for slot, _token in model.step():
            counts[slot] += 1
            if counts[slot] == 150:
                preempted += model.preemptions(slot)
                model.remove(slot)
        if min(counts.values()) >= 150:
            break
    assert counts == {0: 150, 1: 150, 2: 150, 3: 150}
    assert preempted > 0  # some gave their cells up and read their text again


def test_a_prompt_with_no_room_in_the_batch_cannot_hold_the_oldest_back(model_path: Path) -> None:
    # the oldest sequence's long prompt takes the whole batch (512 tokens) while two newer follow-ups hold the
    # cells the prefix cache found for them: the oldest must get room from them, not wait for ever
    model = BatchedLlama(model_path, threads=1, context_length=1024, slots=3, kv_tokens=1024)
    model.load()
    try:
        earlier = {1: prompt(model, "apple " * 300), 2: prompt(model, "river " * 300)}
        for slot, tokens in earlier.items():
            model.add(slot, tokens, GREEDY)
            while not model.step():
                pass
            model.remove(slot)
        model.add(0, prompt(model, "stone " * 700), GREEDY)
        for slot, tokens in earlier.items():
            assert model.add(slot, tokens + prompt(model, "More?"), GREEDY) == len(tokens)
        counts = {0: 0, 1: 0, 2: 0}
        for _ in range(100):
            for slot, _token in model.step():
                counts[slot] += 1
                if counts[slot] == 4:
                    model.remove(slot)
            if min(counts.values()) >= 4:
                break
        assert counts == {0: 4, 1: 4, 2: 4}
    finally:
        model.close()


def test_more_slots_than_batch_tokens_are_refused_not_aborted(model_path: Path) -> None:
    # llama.cpp aborts the whole process when a context has more sequences than batch tokens
    backend = BatchedLlama(model_path, threads=1, context_length=32, slots=40, kv_tokens=32)
    with pytest.raises(ConfigError, match="PARALLEL_SLOTS"):
        backend.load()
    backend.close()
    with pytest.raises(ConfigError, match="PARALLEL_SLOTS"):
        EngineSettings.from_environ({"PARALLEL_SLOTS": "40", "CONTEXT_LENGTH": "16", "MAX_NEW_TOKENS": "8"})


def test_a_new_conversation_shares_the_cells_of_the_system_prompt_another_one_read(model: BatchedLlama,
                                                                                  model_path: Path) -> None:
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"

    def chat(question: str) -> list[int]:
        return model.tokenize(f"{system}<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n", False)

    def answer(backend: BatchedLlama, slot: int, n: int = 8) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            out += [token for s, token in backend.step() if s == slot]
        return out[:n]

    first, second = chat("Tell me about cats."), chat("What is the capital of France?")
    assert model.add(0, first, GREEDY) == 0
    answer(model, 0, 2)  # the first conversation has read its prompt, system prompt included
    system_tokens = len(model.tokenize(system, False))
    cached = model.add(1, second, GREEDY)  # an empty slot: it shares slot 0's cells instead of reading them
    assert cached >= system_tokens - 1 and cached < len(second)
    shared = answer(model, 1)
    alone = BatchedLlama(model_path, threads=1, context_length=256, slots=4, kv_tokens=512)
    alone.load()
    try:
        assert alone.add(1, second, GREEDY) == 0
        assert answer(alone, 1) == shared  # the shared cells hold what reading the prompt would have written
    finally:
        alone.close()
