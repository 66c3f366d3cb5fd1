"""The batched backend's scheduling (``engine.backends.sched``): slot choice, what a step carries and what gives
way in a full KV cache, with no model. ``tests/integration/test_llama_batch.py`` runs them on the real model."""

from __future__ import annotations

from engine.backends.sched import (
    Donor,
    Evict,
    Part,
    PrefillChunk,
    SeqState,
    StepBack,
    best_donor,
    choose_slot,
    make_room,
    plan_step,
    preempt,
    prompt_budget,
    reusable_prefix,
)

SYSTEM = [1, 2, 3, 4]


def test_a_follow_up_takes_the_slot_holding_its_conversation() -> None:
    kept = {0: [*SYSTEM, 10, 11, 12], 1: [*SYSTEM, 20, 21]}
    assert choose_slot([*SYSTEM, 20, 21, 22, 23], [0, 1, 2], kept, {0: 1, 1: 2, 2: 0}) == 1


def test_a_new_conversation_takes_an_empty_slot_rather_than_evict_a_kept_one() -> None:
    kept = {0: SYSTEM + list(range(10, 20))}
    # sharing the system prompt with slot 0 would throw away more of its conversation than it saves: the empty slot
    assert choose_slot([*SYSTEM, 30], [0, 1], kept, {0: 5, 1: 9}) == 1
    # a short kept answer that shares more than it loses is worth reusing
    assert choose_slot([*SYSTEM, 30], [0, 1], {0: [*SYSTEM, 10]}, {0: 5, 1: 9}) == 0
    # no empty slot: the one with the least kept; ties to the least recently used
    kept = {0: [*SYSTEM, 10, 11, 12], 1: [*SYSTEM, 20], 2: [*SYSTEM, 40]}
    assert choose_slot([*SYSTEM, 30], [0, 1, 2], kept, {0: 1, 1: 7, 2: 3}) == 2


def test_the_last_prompt_token_is_always_read_again() -> None:
    assert reusable_prefix([1, 2, 3], [1, 2, 3]) == 2  # its logits give the first answer token
    assert reusable_prefix([1, 2, 9], [1, 2, 3, 4]) == 2
    assert reusable_prefix([], [1, 2]) == 0


def test_a_step_holds_every_generating_token_first_then_prompt_chunks_within_the_budget() -> None:
    active = {
        0: SeqState(tokens=[1, 2], pending=[3, 4, 5, 6, 7]),  # reading its prompt
        1: SeqState(tokens=[1, 2, 3], last=9),  # generating
        2: SeqState(tokens=[], pending=[5, 6]),
    }
    parts = plan_step(active, budget=4, n_ctx=100)
    assert parts[0] == Part(1, [9], reading=False, wants_logits=True)
    assert parts[1] == Part(0, [3, 4, 5], reading=True, wants_logits=False)  # its prompt goes on next step
    assert len(parts) == 2  # nothing left for slot 2 in this step
    assert plan_step(active, budget=10, n_ctx=100)[2] == Part(2, [5, 6], reading=True, wants_logits=True)


def test_a_sequence_whose_context_is_full_gets_no_part() -> None:
    active = {0: SeqState(tokens=[1, 2, 3], last=4)}
    assert plan_step(active, budget=8, n_ctx=3) == []
    assert active[0].full


def test_a_full_cache_drops_kept_cells_first_least_recently_used() -> None:
    active = {0: SeqState(tokens=[1], last=2, order=1)}
    parts = [Part(0, [2], False, True)]
    assert make_room(parts, active, {1: [5, 6], 2: [7]}, {1: 9, 2: 4}) == Evict(2)


def test_then_the_newest_sequence_steps_back_giving_up_its_cells() -> None:
    active = {0: SeqState(tokens=[1, 2], last=3, order=1), 1: SeqState(tokens=[4], last=5, order=2)}
    parts = [Part(0, [3], False, True), Part(1, [5], False, True)]
    assert make_room(parts, active, {}, {}) == StepBack(1, preempt=True)
    # a prompt not started yet holds nothing: it only waits
    active[2] = SeqState(tokens=[], pending=[7, 8], order=3)
    assert make_room([*parts, Part(2, [7, 8], True, True)], active, {}, {}) == StepBack(2, preempt=False)


def test_a_newer_sequence_outside_the_batch_gives_up_its_cells_before_the_oldest_waits_for_ever() -> None:
    # the batch went to the oldest, long prompt; a newer follow-up holds cached cells but got no room this step
    active = {0: SeqState(tokens=[], pending=[1] * 50, order=1), 1: SeqState(tokens=[4, 5], pending=[6], order=2)}
    assert make_room([Part(0, [1] * 50, True, True)], active, {}, {}) == StepBack(1, preempt=True)
    # ...but a full sequence, which ends after this step, is left alone
    active[1].full = True
    assert make_room([Part(0, [1] * 50, True, True)], active, {}, {}) == StepBack(0, preempt=False)


def test_a_preempted_sequence_reads_everything_again() -> None:
    generating = SeqState(tokens=[1, 2, 3], last=4)
    preempt(generating)
    assert (generating.tokens, generating.pending, generating.last, generating.preempted) == ([], [1, 2, 3, 4], -1, 1)
    reading = SeqState(tokens=[1, 2], pending=[3, 4])
    preempt(reading)
    assert (reading.tokens, reading.pending) == ([], [1, 2, 3, 4])


def test_a_new_prompt_shares_the_longest_start_another_sequence_holds() -> None:
    holders = {0: [*SYSTEM, 10, 11], 1: [*SYSTEM[:2]], 2: [7, 7, 7]}
    assert best_donor([*SYSTEM, 30, 31], holders, own=0) == Donor(0, len(SYSTEM))
    assert best_donor([*SYSTEM, 30, 31], holders, own=len(SYSTEM)) is None  # the slot holds as much itself
    assert best_donor([*SYSTEM], holders, own=0) == Donor(0, len(SYSTEM) - 1)  # the last token is always read
    assert best_donor([9, 9], holders, own=0) is None


def test_beside_streaming_answers_a_step_reads_only_what_fits_its_time() -> None:
    chunk = PrefillChunk(target_s=0.25)
    assert prompt_budget(chunk, streaming=False, cap=512) == 512  # alone: full speed
    assert prompt_budget(chunk, streaming=True, cap=512) == 64  # before any step says more: a modest chunk
    chunk.observe(0.125, prompt_tokens=64, streaming=True, cap=512)  # half the target: twice as much fits
    assert prompt_budget(chunk, streaming=True, cap=512) == 96  # (smoothed: halfway there)
    for _ in range(10):
        chunk.observe(0.125, prompt_tokens=64, streaming=True, cap=512)
    assert prompt_budget(chunk, streaming=True, cap=512) == 128
    chunk.observe(2.0, prompt_tokens=128, streaming=True, cap=512)  # a slow step (a long prompt's far end)
    assert prompt_budget(chunk, streaming=True, cap=512) == 72
    chunk.observe(9.0, prompt_tokens=16, streaming=False, cap=512)  # no answer streamed: says nothing
    assert prompt_budget(chunk, streaming=True, cap=512) == 72
    for _ in range(20):
        chunk.observe(5.0, prompt_tokens=16, streaming=True, cap=512)
    assert prompt_budget(chunk, streaming=True, cap=512) == 16  # however slow, a prompt makes progress
    assert prompt_budget(PrefillChunk(target_s=0.0), streaming=True, cap=512) == 512  # PREFILL_STEP_MS=0


def test_a_step_reads_at_most_its_reading_budget_of_prompt() -> None:
    active = {0: SeqState(tokens=[1], last=5), 1: SeqState(tokens=[], pending=list(range(300)))}
    parts = plan_step(active, budget=512, n_ctx=1000, reading=55)
    assert parts[0] == Part(0, [5], reading=False, wants_logits=True)
    assert parts[1].tokens == list(range(55)) and not parts[1].wants_logits
