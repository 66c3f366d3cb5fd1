"""GGUF models through llama.cpp with several sequences decoded together (PARALLEL_SLOTS > 1).

One llama.cpp context holds ``slots`` sequences, each with its own KV cells and sampler. Every ``step()``
decodes one batch: the next token of every generating sequence plus, within the batch budget, prompt tokens
of sequences still reading their prompt (continuous batching, as llama.cpp's own server does).

A slot keeps its KV cells after its answer ends. A new prompt goes to the free slot that holds the longest
prefix of it (a follow-up in a thread shares the whole earlier conversation), and only the rest is read.
Tokens go into a batch in ascending slot order: with a KV cache per sequence, llama.cpp splits a batch into one
computation per run of consecutive ascending sequence ids, so any other order costs a graph per sequence.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.backends.base import ModelInfo
from engine.backends.llama_cpp import common_prefix, eog_tokens, load_cpu_backend, set_threads
from engine.errors import ModelFileError
from engine.types import GenParams

BATCH_TOKENS = 512
PENALTY_LAST_N = 64  # llama-cpp-python's default window for the repeat penalty


@dataclass(slots=True)
class _Slot:
    sampler: Any
    tokens: list[int]  # tokens whose KV cells are in the cache, in order
    pending: list[int] = field(default_factory=list)  # prompt tokens still to read
    last: int = -1  # the token sampled last, to be decoded next
    full: bool = False  # the slot's context is full: no further token fits


class BatchedLlama:
    """A GGUF model answering up to ``slots`` sequences at once."""

    def __init__(self, path: Path, *, threads: int, context_length: int, slots: int,
                 kv_cache_type: str = "f16", flash_attn: bool = True) -> None:
        self.path, self.threads, self.slots = path, threads, slots
        self.context_length = context_length
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
        self.n_ctx = 0

    def load(self) -> ModelInfo:
        import llama_cpp
        from llama_cpp import _internals as internals
        from llama_cpp._logger import set_verbose

        set_verbose(False)  # llama.cpp logs every tensor at load otherwise
        cpu_variant = load_cpu_backend()
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = 0
        model_params.use_mmap = True
        try:
            self._model = internals.LlamaModel(path_model=str(self.path), params=model_params, verbose=False)
        except ValueError as exc:
            raise ModelFileError(f"llama.cpp cannot load {self.path}: {exc}") from None
        self.n_ctx = self.context_length or self._model.n_ctx_train()
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.n_ctx * self.slots
        params.n_batch = params.n_ubatch = BATCH_TOKENS
        params.n_seq_max = self.slots
        params.n_threads = params.n_threads_batch = self.threads
        params.kv_unified = False  # each sequence gets n_ctx cells of its own
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
            detail=f"threads={self.threads} kv={self.kv_cache_type} slots={self.slots}"
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
        """The free slot to answer ``prompt_tokens`` in: the one whose cache holds the longest prefix of it, else
        the least recently used one (keeping the caches of recent conversations)."""
        return max(free, key=lambda s: (common_prefix(self._kept.get(s, []), prompt_tokens), -self._used[s]))

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
        cached = min(common_prefix(self._kept.pop(slot, []), prompt_tokens), len(prompt_tokens) - 1)
        self._ctx.kv_cache_seq_rm(slot, cached, -1)
        self._active[slot] = _Slot(sampler, tokens=list(prompt_tokens[:cached]), pending=list(prompt_tokens[cached:]))
        self._used[slot] = next(self._clock)
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
        batch = self._batch.batch
        n = 0
        sampled: list[tuple[int, int]] = []  # (slot, index in batch)
        # generating sequences get their one token first; prompts share what is left of the batch
        budget = BATCH_TOKENS - sum(1 for s in self._active.values() if not s.pending)
        for slot in sorted(self._active):  # ascending: one computation for all (see the module docstring)
            state = self._active[slot]
            if state.pending:
                take = state.pending[: max(0, budget)]
                if not take:
                    continue
                budget -= len(take)
                del state.pending[: len(take)]
                tokens, wants_logits = take, not state.pending
            elif len(state.tokens) < self.n_ctx:
                tokens, wants_logits = [state.last], True
            else:
                state.full = True
                continue
            start = len(state.tokens)
            for i, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = start + i
                batch.seq_id[n][0] = slot
                batch.n_seq_id[n] = 1
                batch.logits[n] = False
                n += 1
            state.tokens.extend(tokens)
            if wants_logits:
                batch.logits[n - 1] = True
                sampled.append((slot, n - 1))
        if n == 0:
            return []
        batch.n_tokens = n
        self._ctx.decode(self._batch)
        out = []
        for slot, index in sampled:
            state = self._active[slot]
            token = state.sampler.sample(self._ctx, index)
            state.last = token
            out.append((slot, token))
        return out

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
