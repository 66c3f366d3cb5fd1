"""GGUF models through llama.cpp with several sequences decoded together (PARALLEL_SLOTS > 1).

One llama.cpp context holds ``slots`` sequences, each with its own sampler, in one KV cache of ``kv_tokens`` cells
that they share (llama.cpp's unified cache: a batch is one computation whatever sequences it holds, and memory
follows the tokens in use rather than slots x context). Every ``step()`` decodes one batch: the next token of
every generating sequence plus, within the batch budget, prompt tokens of sequences still reading their prompt
(continuous batching, as llama.cpp's own server does).

A slot keeps its KV cells after its answer ends. A new prompt goes to the free slot that holds the longest
prefix of it (a follow-up in a thread shares the whole earlier conversation), and only the rest is read. When
another sequence (running, or kept) holds more of the prompt's start than that slot (a new conversation: the
system prompt), its cells are shared with the new sequence (``llama_memory_seq_cp``: in the unified cache the
cells gain a sequence id, nothing is copied or read again).

When the shared cache has no room for a step, kept cells of finished answers go first (least recently used),
then the newest sequence steps back: a prompt not yet started waits, a sequence that holds cells gives them up
and later reads its text again (recompute), and the oldest always proceeds. Nothing fails for lack of room:
answers slow down.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.backends.base import ModelInfo
from engine.backends.llama_cpp import eog_tokens, load_cpu_backend, set_threads
from engine.backends.sched import (
    Evict,
    Part,
    PrefillChunk,
    SeqState,
    best_donor,
    choose_slot,
    make_room,
    plan_step,
    preempt,
    prompt_budget,
    reusable_prefix,
)
from engine.errors import ConfigError, ModelFileError
from engine.types import GenParams

log = logging.getLogger("engbot.replica")

BATCH_TOKENS = 512
PENALTY_LAST_N = 64  # llama-cpp-python's default window for the repeat penalty


@dataclass(slots=True)
class _Slot(SeqState):
    sampler: Any = None


class CacheFull(Exception):
    """llama_decode found no room in the KV cache for the batch (nothing was written)."""


class BatchedLlama:
    """A GGUF model answering up to ``slots`` sequences at once."""

    def __init__(self, path: Path, *, threads: int, context_length: int, slots: int,
                 kv_cache_type: str = "f16", flash_attn: bool = True, kv_tokens: int = 0,
                 step_target_s: float = 0.25) -> None:
        self.path, self.threads, self.slots = path, threads, slots
        self.context_length = context_length
        self.kv_tokens = kv_tokens  # cells shared by all slots; 0: two full contexts
        self.kv_cache_type = kv_cache_type
        self.flash_attn = flash_attn
        self._model: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        self._active: dict[int, _Slot] = {}
        self._kept: dict[int, list[int]] = {}  # tokens still cached in each free slot
        self._used: dict[int, int] = {}  # when each slot was last used (for least-recently-used eviction)
        self._clock = itertools.count()
        self._eog: list[int] | None = None
        self._batch_tokens = BATCH_TOKENS
        self.chunk = PrefillChunk(step_target_s)  # beside streaming answers, steps stay near this long (0: no limit)
        self._logits_at: list[int] = []
        self.n_ctx = 0

    def load(self) -> ModelInfo:
        import llama_cpp
        from llama_cpp import _internals as internals
        from llama_cpp._logger import set_verbose

        set_verbose(False)  # llama.cpp logs every tensor at load otherwise
        # llama-cpp-python maps ggml's log levels off by one (a warning shows as an error): a full cache would
        # print "failed to find a memory slot" at every step; _make_room logs what happens instead
        logging.getLogger("llama-cpp-python").setLevel(logging.CRITICAL)
        cpu_variant = load_cpu_backend()
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = 0
        model_params.use_mmap = True
        try:
            self._model = internals.LlamaModel(path_model=str(self.path), params=model_params, verbose=False)
        except ValueError as exc:
            raise ModelFileError(f"llama.cpp cannot load {self.path}: {exc}") from None
        self.n_ctx = self.context_length or self._model.n_ctx_train()  # per sequence
        self.kv_tokens = max(self.kv_tokens or 2 * self.n_ctx, self.n_ctx)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.kv_tokens
        self._batch_tokens = min(BATCH_TOKENS, self.kv_tokens)  # (llama.cpp caps its batch at the cache size)
        if self.slots > self._batch_tokens:  # llama.cpp would abort the process creating the context
            raise ConfigError("PARALLEL_SLOTS", self.slots, f"at most {self._batch_tokens} with a KV cache of "
                              f"{self.kv_tokens} tokens (one token of each answer goes into every batch)")
        # one piece per batch: a smaller n_ubatch would shrink llama.cpp's compute buffer (98 -> 25 MiB at 128),
        # but every piece pays a cost that grows with the cache in use: deep in a long prompt, reading it in
        # pieces of 128 was 20-30% slower (docs/bench-memory.md)
        params.n_batch = params.n_ubatch = self._batch_tokens
        params.n_seq_max = self.slots
        params.n_threads = params.n_threads_batch = self.threads
        params.kv_unified = True  # one pool of cells for every sequence
        params.flash_attn_type = flash_attn_type(self.flash_attn, self.kv_cache_type)
        if self.kv_cache_type == "q8_0":
            params.type_k = params.type_v = llama_cpp.GGML_TYPE_Q8_0
        try:
            self._ctx = internals.LlamaContext(model=self._model, params=params, verbose=False)
        except ValueError as exc:
            raise ModelFileError(f"llama.cpp cannot create a context for {self.path}: {exc}") from None
        self._batch = internals.LlamaBatch(n_tokens=BATCH_TOKENS, embd=0, n_seq_max=1, verbose=False)
        self._used = {slot: next(self._clock) for slot in range(self.slots)}
        meta = self._model.metadata()
        return ModelInfo(
            backend="llama_cpp",
            architecture=meta.get("general.architecture", ""),
            n_ctx=self.n_ctx,
            chat_template=meta.get("tokenizer.chat_template"),
            bos_token=self._piece(self._model.token_bos()),
            eos_token=self._piece(self._model.token_eos()),
            detail=f"threads={self.threads} kv={self.kv_cache_type} slots={self.slots} kv_tokens={self.kv_tokens}"
            + (" flash_attn" if flash_attn_type(self.flash_attn, self.kv_cache_type) else "")
            + (f" cpu={cpu_variant}" if cpu_variant else ""),
        )

    def _piece(self, token: int) -> str:
        return "" if token < 0 else bytes(self._model.token_to_piece(token, special=True)).decode("utf-8", "replace")

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        return list(self._model.tokenize(text.encode("utf-8"), add_bos, special))

    def detokenize(self, tokens: list[int]) -> bytes:
        return bytes(self._model.detokenize(tokens, special=False))

    def is_eos(self, token: int) -> bool:
        from llama_cpp import llama_vocab_is_eog

        return bool(llama_vocab_is_eog(self._model.vocab, token))

    def set_threads(self, threads: int) -> None:
        """Threads for the next steps (NUM_THREADS=auto changes it between steps)."""
        set_threads(self._ctx.ctx, threads)

    @property
    def active(self) -> int:
        return len(self._active)

    def choose_slot(self, prompt_tokens: list[int], free: list[int]) -> int:
        """The free slot to answer ``prompt_tokens`` in (``sched.choose_slot``)."""
        return choose_slot(prompt_tokens, free, self._kept, self._used)

    def add(self, slot: int, prompt_tokens: list[int], params: GenParams) -> int:
        """Start a sequence in ``slot`` (which must be free); its prompt is read by the next steps. Returns how many
        prompt tokens were already in the slot's cache (they are not read again)."""
        from llama_cpp import _internals as internals

        sampler = internals.LlamaSampler()
        if params.ignore_eos:
            if self._eog is None:
                self._eog = eog_tokens(self._model.vocab, self._model.n_vocab())
            sampler.add_logit_bias(self._model.n_vocab(), dict.fromkeys(self._eog, float("-inf")))
        sampler.add_penalties(self._model.n_vocab(), PENALTY_LAST_N, params.repeat_penalty, 0.0, 0.0)
        if params.temperature == 0:
            sampler.add_greedy()
        else:  # the chain llama-cpp-python builds for its own sampling
            sampler.add_top_k(params.top_k)
            sampler.add_typical(1.0, 1)
            sampler.add_top_p(params.top_p, 1)
            sampler.add_min_p(0.05, 1)
            sampler.add_temp(params.temperature)
            sampler.add_dist(params.seed)
        # the last prompt token is always read again: its logits give the first answer token
        cached = reusable_prefix(self._kept.pop(slot, []), prompt_tokens)
        holders = {s: st.tokens for s, st in self._active.items()} | {s: t for s, t in self._kept.items() if s != slot}
        donor = best_donor(prompt_tokens, holders, cached)
        if donor is not None:  # another sequence read more of it (the system prompt, at least): share its cells
            self._ctx.kv_cache_seq_rm(slot, -1, -1)
            self._ctx.kv_cache_seq_cp(donor.slot, slot, 0, donor.shared)
            cached = donor.shared
        else:
            self._ctx.kv_cache_seq_rm(slot, cached, -1)
        order = next(self._clock)
        self._active[slot] = _Slot(tokens=list(prompt_tokens[:cached]), pending=list(prompt_tokens[cached:]),
                                   order=order, sampler=sampler)
        self._used[slot] = order
        return cached

    def remove(self, slot: int) -> None:
        """End the slot's sequence. Its KV cells stay, for a later prompt that starts the same way."""
        state = self._active.pop(slot, None)
        if state is not None:
            state.sampler.close()
            self._kept[slot] = state.tokens

    def forget(self) -> None:
        """Drop every free slot's cached cells (after a failed decode, whose cache state is unknown)."""
        for slot in list(self._kept):
            self._ctx.kv_cache_seq_rm(slot, -1, -1)
        self._kept.clear()

    def context_full(self, slot: int) -> bool:
        return self._active[slot].full

    def step(self) -> list[tuple[int, int]]:
        """Decode one batch; return (slot, token) for every sequence that produced a token."""
        parts = self._plan()
        while parts:
            try:
                began = time.perf_counter()
                self._decode(parts)
                self.chunk.observe(time.perf_counter() - began, sum(len(p.tokens) for p in parts if p.reading),
                                   any(not p.reading for p in parts), self._batch_tokens)
                break
            except CacheFull:
                parts = self._make_room(parts)
        else:
            return []
        out = []
        for part in parts:
            state = self._active[part.slot]
            state.tokens.extend(part.tokens)
            if part.reading:
                del state.pending[: len(part.tokens)]
        for index, part in enumerate(parts):
            if part.wants_logits:
                state = self._active[part.slot]
                state.last = state.sampler.sample(self._ctx, self._logits_at[index])
                out.append((part.slot, state.last))
        return out

    def _plan(self) -> list[Part]:
        """This step's batch (``sched.plan_step``): beside answers that stream, only as much prompt as keeps the
        step near its target on this machine (``sched.prompt_budget``)."""
        streaming = any(not state.pending and not state.full for state in self._active.values())
        return plan_step(self._active, self._batch_tokens, self.n_ctx,
                         prompt_budget(self.chunk, streaming, self._batch_tokens))

    def _decode(self, parts: list[Part]) -> None:
        batch = self._batch.batch
        n = 0
        self._logits_at = []
        for part in parts:
            start = len(self._active[part.slot].tokens)
            for i, token in enumerate(part.tokens):
                batch.token[n] = token
                batch.pos[n] = start + i
                batch.seq_id[n][0] = part.slot
                batch.n_seq_id[n] = 1
                batch.logits[n] = False
                n += 1
            if part.wants_logits:
                batch.logits[n - 1] = True
            self._logits_at.append(n - 1)
        batch.n_tokens = n
        try:
            self._ctx.decode(self._batch)
        except RuntimeError as exc:
            if str(exc).endswith("returned 1"):  # no room: llama.cpp wrote nothing
                raise CacheFull from None
            raise

    def _make_room(self, parts: list[Part]) -> list[Part]:
        """The cache is full: free cells, or take a sequence out of this step (``sched.make_room``). Returns the
        parts to try next."""
        choice = make_room(parts, self._active, self._kept, self._used)
        if isinstance(choice, Evict):
            self._ctx.kv_cache_seq_rm(choice.slot, -1, -1)
            del self._kept[choice.slot]
            return parts
        if choice.preempt:
            state = self._active[choice.slot]
            log.info("KV cache full (%d tokens): slot %d gives up %d cells and reads its text again later",
                     self.kv_tokens, choice.slot, len(state.tokens))
            self._ctx.kv_cache_seq_rm(choice.slot, -1, -1)
            preempt(state)
        return [part for part in parts if part.slot != choice.slot]

    def preemptions(self, slot: int) -> int:
        return self._active[slot].preempted

    def close(self) -> None:
        for slot in list(self._active):
            self.remove(slot)
        for resource in (self._batch, self._ctx, self._model):
            if resource is not None:
                resource.close()
        self._batch = self._ctx = self._model = None


def flash_attn_type(flash_attn: bool, kv_cache_type: str) -> int:
    """llama.cpp's flash attention mode; a quantized KV cache needs it."""
    import llama_cpp

    enabled = flash_attn or kv_cache_type != "f16"
    return int(llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if enabled else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
