"""GGUF models through llama.cpp with several sequences decoded together (PARALLEL_SLOTS > 1).

One llama.cpp context holds ``slots`` sequences, each with its own KV cells and sampler. Every ``step()``
decodes one batch: the next token of every generating sequence plus, within the batch budget, prompt tokens
of sequences still reading their prompt. On a CPU, a batch of 4 costs little more than one token, so several
answers share one replica's memory and threads (continuous batching, as llama.cpp's own server does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.backends.base import ModelInfo
from engine.backends.llama_cpp import eog_tokens, load_cpu_backend
from engine.errors import ModelFileError
from engine.types import GenParams

BATCH_TOKENS = 512
PENALTY_LAST_N = 64  # llama-cpp-python's default window for the repeat penalty


@dataclass(slots=True)
class _Slot:
    prompt: list[int]
    sampler: Any
    n_past: int = 0  # tokens already in the KV cache
    last: int = -1  # the token sampled last, to be decoded next
    generated: int = 0
    full: bool = False  # the slot's context is full: no further token fits
    pending: list[int] = field(default_factory=list)


class BatchedLlama:
    """A GGUF model answering up to ``slots`` sequences at once."""

    def __init__(self, path: Path, *, threads: int, context_length: int, slots: int,
                 kv_cache_type: str = "f16") -> None:
        self.path, self.threads, self.slots = path, threads, slots
        self.context_length = context_length
        self.kv_cache_type = kv_cache_type
        self._model: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        self._active: dict[int, _Slot] = {}
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
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as llama-cpp-python's Llama
        if self.kv_cache_type == "q8_0":
            params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            params.type_k = params.type_v = llama_cpp.GGML_TYPE_Q8_0
        self._ctx = internals.LlamaContext(model=self._model, params=params, verbose=False)
        self._batch = internals.LlamaBatch(n_tokens=BATCH_TOKENS, embd=0, n_seq_max=1, verbose=False)
        meta = self._model.metadata()
        return ModelInfo(
            backend="llama_cpp",
            architecture=meta.get("general.architecture", ""),
            n_ctx=self.n_ctx,
            chat_template=meta.get("tokenizer.chat_template"),
            bos_token=self._piece(self._model.token_bos()),
            eos_token=self._piece(self._model.token_eos()),
            detail=f"threads={self.threads} kv={self.kv_cache_type} slots={self.slots}"
            + (f" cpu={cpu_variant}" if cpu_variant else ""),
        )

    def _piece(self, token: int) -> str:
        return "" if token < 0 else bytes(self._model.token_to_piece(token, special=True)).decode("utf-8", "replace")

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return list(self._model.tokenize(text.encode("utf-8"), add_bos, True))

    def detokenize(self, tokens: list[int]) -> bytes:
        return bytes(self._model.detokenize(tokens, special=False))

    def is_eos(self, token: int) -> bool:
        from llama_cpp import llama_vocab_is_eog

        return bool(llama_vocab_is_eog(self._model.vocab, token))

    @property
    def active(self) -> int:
        return len(self._active)

    def add(self, slot: int, prompt_tokens: list[int], params: GenParams) -> None:
        """Start a sequence in ``slot`` (which must be free); its prompt is read by the next steps."""
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
        self._ctx.kv_cache_seq_rm(slot, -1, -1)
        self._active[slot] = _Slot(prompt=list(prompt_tokens), sampler=sampler, pending=list(prompt_tokens))

    def remove(self, slot: int) -> None:
        """Free a slot: forget its KV cells and sampler."""
        state = self._active.pop(slot, None)
        if state is not None:
            state.sampler.close()
            self._ctx.kv_cache_seq_rm(slot, -1, -1)

    def context_full(self, slot: int) -> bool:
        return self._active[slot].full

    def step(self) -> list[tuple[int, int]]:
        """Decode one batch; return (slot, token) for every sequence that produced a token."""
        batch = self._batch.batch
        n = 0
        sampled: list[tuple[int, int]] = []  # (slot, index in batch)
        # generating sequences first (one token each), then prompt chunks with the rest of the budget
        order = sorted(self._active.items(), key=lambda item: bool(item[1].pending))
        for slot, state in order:
            if state.pending:
                take = state.pending[: BATCH_TOKENS - n]
                if not take:
                    continue
                del state.pending[: len(take)]
                tokens, wants_logits = take, not state.pending
            elif state.n_past < self.n_ctx:
                tokens, wants_logits = [state.last], True
            else:
                state.full = True
                continue
            for i, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = state.n_past + i
                batch.seq_id[n][0] = slot
                batch.n_seq_id[n] = 1
                batch.logits[n] = False
                n += 1
            state.n_past += len(tokens)
            if wants_logits:
                batch.logits[n - 1] = True
                sampled.append((slot, n - 1))
            if n >= BATCH_TOKENS:
                break
        if n == 0:
            return []
        batch.n_tokens = n
        self._ctx.decode(self._batch)
        out = []
        for slot, index in sampled:
            state = self._active[slot]
            token = state.sampler.sample(self._ctx, index)
            state.last = token
            state.generated += 1
            out.append((slot, token))
        return out

    def close(self) -> None:
        for slot in list(self._active):
            self.remove(slot)
        for resource in (self._batch, self._ctx, self._model):
            if resource is not None:
                resource.close()
        self._batch = self._ctx = self._model = None
