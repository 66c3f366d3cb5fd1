"""The batched backend's policies, as pure functions over plain state (no model, no llama.cpp):

- ``choose_slot``: which free slot a new prompt takes (the one holding the most of it, losing the least);
- ``plan_step``: what one decode step carries (a token of every generating sequence, then prompt chunks);
- ``make_room``: what gives way when the shared KV cache is full (kept cells first, then the newest sequence).

``engine/backends/llama_batch.py`` applies their decisions to a llama.cpp context.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass(slots=True)
class SeqState:
    """One running sequence, as the scheduler sees it."""

    tokens: list[int]  # tokens whose KV cells are in the cache, in order
    pending: list[int] = field(default_factory=list)  # tokens still to read: the prompt, or text read again
    last: int = -1  # the token sampled last, to be decoded next
    full: bool = False  # the slot's context is full: no further token fits
    order: int = 0  # when the sequence arrived: the newest steps back first when the cache is full
    preempted: int = 0  # times it gave its cells up

    @property
    def holds_cells(self) -> bool:
        return bool(self.tokens) or self.last >= 0


@dataclass(frozen=True, slots=True)
class Part:
    """What one sequence puts into a batch."""

    slot: int
    tokens: list[int]
    reading: bool  # prompt (or recomputed) tokens, not a generated one
    wants_logits: bool


def choose_slot(prompt: Sequence[int], free: Sequence[int], kept: Mapping[int, Sequence[int]],
                used: Mapping[int, int]) -> int:
    """The free slot to answer ``prompt`` in: the one that saves the most reading for what it throws away.

    ``kept``: the tokens still cached in free slots; ``used``: when each slot was last used (a clock). A follow-up
    finds its whole conversation in a slot (it saves all, loses nothing); a new conversation shares only the
    system prompt with a kept one, and would lose the rest of it, so it takes an empty slot, or else the one with
    the least kept. Ties go to the least recently used slot."""

    def value(slot: int) -> tuple[int, int]:
        held = kept.get(slot, ())
        shared = common_prefix(held, prompt)
        return shared - (len(held) - shared), -used.get(slot, 0)

    return max(free, key=value)


def reusable_prefix(kept: Sequence[int], prompt: Sequence[int]) -> int:
    """How many of ``prompt``'s tokens a slot holding ``kept`` need not read again: the common prefix, except
    the prompt's last token, which is always read (its logits give the first answer token)."""
    return min(common_prefix(kept, prompt), len(prompt) - 1)


@dataclass(frozen=True, slots=True)
class Donor:
    """Another sequence whose cells hold the start of a new prompt: they are shared with it, not read again."""

    slot: int
    shared: int  # prompt tokens it holds (never the prompt's last token, which is always read)


def best_donor(prompt: Sequence[int], holders: Mapping[int, Sequence[int]], own: int) -> Donor | None:
    """The sequence (running, or kept after its answer) that holds the longest start of ``prompt``, if it holds
    more than the slot's own ``own`` tokens: every new conversation starts from the system prompt's cells that
    another one already read."""
    best: Donor | None = None
    for slot, tokens in holders.items():
        shared = reusable_prefix(tokens, prompt)
        if shared > own and (best is None or shared > best.shared):
            best = Donor(slot, shared)
    return best


def plan_step(active: Mapping[int, SeqState], budget: int, n_ctx: int, reading: int | None = None) -> list[Part]:
    """One step's batch of at most ``budget`` tokens: one token of every generating sequence first, then prompt
    chunks with what is left, at most ``reading`` prompt tokens in all (the step's time allowance:
    ``prompt_budget``). A sequence whose context (``n_ctx``) is full gets ``full`` set and no part."""
    parts: list[Part] = []
    reading = budget if reading is None else reading
    for slot, state in sorted(active.items(), key=lambda item: bool(item[1].pending)):
        if state.pending:
            take = state.pending[: max(0, min(budget, reading))]  # (more slots than batch tokens: nothing left)
            if take:
                budget -= len(take)
                reading -= len(take)
                parts.append(Part(slot, take, True, len(take) == len(state.pending)))
        elif len(state.tokens) < n_ctx and budget > 0:
            budget -= 1
            parts.append(Part(slot, [state.last], False, True))
        elif len(state.tokens) >= n_ctx:
            state.full = True
    return parts


FIRST_CHUNK = 64  # prompt tokens a step reads beside streaming answers before step times say more
MIN_CHUNK = 16  # and at least this many, however slow: a long prompt must make progress


@dataclass(slots=True)
class PrefillChunk:
    """How much prompt a step reads beside streaming answers, steered by the steps' own times toward a target:
    what would have fit the target in the last such step, smoothed. A step's cost per prompt token is not a
    constant (bigger chunks use the CPU better, and every token of a long prompt attends to all before it), so
    the chunk follows measurement rather than a model of it."""

    target_s: float
    size: int = FIRST_CHUNK

    def observe(self, seconds: float, prompt_tokens: int, streaming: bool, cap: int) -> None:
        """A step took ``seconds`` reading ``prompt_tokens`` (``streaming``: beside answers that stream)."""
        if not streaming or prompt_tokens == 0 or seconds <= 0 or self.target_s <= 0:
            return
        fits = prompt_tokens * self.target_s / seconds
        self.size = max(MIN_CHUNK, min(cap, round((self.size + fits) / 2)))


def prompt_budget(chunk: PrefillChunk, streaming: bool, cap: int) -> int:
    """How many prompt tokens the next step may read. Alone (no answer is streaming) a prompt reads at full speed
    (``cap``); beside streaming answers, the chunk that keeps steps near the target, so their text keeps flowing
    while a long document is read. A target of 0: always ``cap`` (fixed chunks)."""
    if not streaming or chunk.target_s <= 0:
        return cap
    return min(cap, chunk.size)


@dataclass(frozen=True, slots=True)
class Evict:
    """Drop the cells a finished answer left in ``slot``; retry the same batch."""

    slot: int


@dataclass(frozen=True, slots=True)
class StepBack:
    """Take sequence ``slot`` out of this step; ``preempt``: it also gives up its cells (``preempt()``) and reads
    its text again later."""

    slot: int
    preempt: bool


def make_room(parts: Sequence[Part], active: Mapping[int, SeqState], kept: Mapping[int, Sequence[int]],
              used: Mapping[int, int]) -> Evict | StepBack:
    """The cache has no room for ``parts``: what gives way.

    Kept cells go first (least recently used). Then the newest sequence steps back, chosen among all that hold
    cells, not only those in this batch: a prompt that got no room in the batch (the batch went to an older,
    longer prompt) may hold cells read earlier or found in the prefix cache, and if only batch members stepped
    back, the oldest could wait for ever for cells such a sequence never gives up. (A full sequence is left
    alone: it ends after this step.) The oldest always fits on its own: no sequence grows past n_ctx <= the
    cache."""
    if kept:
        return Evict(min(kept, key=lambda s: used.get(s, 0)))
    in_batch = {part.slot for part in parts}
    candidates = [slot for slot, state in active.items()
                  if slot in in_batch or (not state.full and state.holds_cells)]
    newest = max(candidates, key=lambda slot: active[slot].order)
    return StepBack(newest, preempt=active[newest].holds_cells)


def preempt(state: SeqState) -> None:
    """``state`` gives up its cells: everything it had read (and its last sampled token, if not yet decoded) is
    read again later."""
    state.pending = state.tokens + ([state.last] if not state.pending else []) + state.pending
    state.tokens, state.last = [], -1
    state.preempted += 1
