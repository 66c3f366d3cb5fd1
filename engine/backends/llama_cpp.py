"""GGUF models through llama-cpp-python, the default backend."""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.backends.base import ModelInfo
from engine.backends.sched import reusable_prefix
from engine.errors import ModelFileError
from engine.types import GenParams


def load_cpu_backend() -> str:
    """Make sure llama.cpp has its CPU code loaded; return the CPU variant in use ("" for a plain build).

    llama-cpp-python built with ``GGML_BACKEND_DL=ON GGML_CPU_ALL_VARIANTS=ON`` (the Docker image) ships one
    ``libggml-cpu-<variant>.so`` per CPU generation next to ``libggml.so`` and never loads them itself: a model
    load then fails with "no backends are loaded". ggml's ``ggml_backend_load_all_from_path`` scores every
    variant against this CPU and registers the best. A plain build has the CPU backend linked in: no-op.
    """
    import llama_cpp

    lib_dir = Path(os.environ.get("LLAMA_CPP_LIB_PATH") or Path(llama_cpp.__file__).parent / "lib")
    if not any(lib_dir.glob("libggml-cpu-*.so")):
        return ""
    ggml = ctypes.CDLL(str(lib_dir / "libggml.so"))  # the instance libllama already uses (same file)
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    if ggml.ggml_backend_reg_count() == 0:
        ggml_log = logging.getLogger("llama-cpp-python")  # llama-cpp-python prints ggml's log lines unless...
        if ggml_log.level == logging.NOTSET:
            ggml_log.setLevel(logging.ERROR)  # ...this, as Llama(verbose=False) sets it later anyway
        ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
        ggml.ggml_backend_load_all_from_path(os.fsencode(lib_dir))
    return _mapped_cpu_variant()


def set_threads(ctx: Any, threads: int) -> None:
    """Threads of a llama.cpp context, for generation and prompt reading alike (cheap: read at every decode)."""
    from llama_cpp import llama_set_n_threads

    llama_set_n_threads(ctx, threads, threads)


def eog_tokens(vocab: Any, n_vocab: int) -> list[int]:
    """Every end-of-generation token of a vocabulary (EOS, EOT, <|im_end|>, ...)."""
    from llama_cpp import llama_vocab_is_eog

    return [token for token in range(n_vocab) if llama_vocab_is_eog(vocab, token)]


def _mapped_cpu_variant() -> str:
    """The ``libggml-cpu-<variant>.so`` mapped into this process, if any."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                name = line.rsplit("/", 1)[-1].strip()
                if name.startswith("libggml-cpu-") and name.endswith(".so"):
                    return name.removeprefix("libggml-cpu-").removesuffix(".so")
    except OSError:
        pass
    return "?"


class LlamaCppBackend:
    """One GGUF model, memory-mapped so that replicas share its weight pages."""

    def __init__(self, path: Path, *, threads: int, context_length: int, kv_cache_type: str = "f16",
                 flash_attn: bool = True) -> None:
        self.path = path
        self.flash_attn = flash_attn
        self.kv_cache_type = kv_cache_type
        self.threads = threads
        self.context_length = context_length
        self._llm: Any = None
        self._eog: list[int] | None = None

    def load(self) -> ModelInfo:
        from llama_cpp import Llama

        cpu_variant = load_cpu_backend()
        try:
            self._llm = Llama(
                model_path=str(self.path),
                n_ctx=self.context_length,  # 0: the model's trained context
                n_threads=self.threads,
                n_threads_batch=self.threads,
                n_gpu_layers=0,
                use_mmap=True,
                verbose=False,
                **self._kv_options(),
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(f"llama.cpp cannot load {self.path}: {exc}") from None
        llm = self._llm
        meta: dict[str, str] = llm.metadata
        eos, bos = llm.token_eos(), llm.token_bos()
        return ModelInfo(
            backend="llama_cpp",
            architecture=meta.get("general.architecture", ""),
            n_ctx=llm.n_ctx(),
            chat_template=meta.get("tokenizer.chat_template"),
            bos_token=self._piece(bos),
            eos_token=self._piece(eos),
            detail=f"threads={self.threads} kv={self.kv_cache_type}"
            + (" flash_attn" if self._kv_options()["flash_attn"] else "")
            + (f" cpu={cpu_variant}" if cpu_variant else ""),
        )

    def _kv_options(self) -> dict[str, Any]:
        if self.kv_cache_type == "q8_0":  # half the KV memory; llama.cpp needs flash attention for a quantized V
            from llama_cpp import GGML_TYPE_Q8_0

            return {"flash_attn": True, "type_k": GGML_TYPE_Q8_0, "type_v": GGML_TYPE_Q8_0}
        return {"flash_attn": self.flash_attn}

    def _piece(self, token: int) -> str:
        if token < 0:
            return ""
        return bytes(self._llm.detokenize([token], special=True)).decode("utf-8", errors="replace")

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))

    def cached_prefix(self, prompt_tokens: list[int]) -> int:
        """How many of these prompt tokens ``generate`` will find in the cache (llama-cpp-python keeps the last
        sequence's KV cells and reads only what differs; the last prompt token is always read again)."""
        llm = self._llm
        return reusable_prefix(list(llm._input_ids[: llm.n_tokens]), prompt_tokens)

    def generate(self, prompt_tokens: list[int], params: GenParams) -> Iterator[int]:
        # reset=True still reuses the longest cached prefix (a thread's follow-up skips re-reading history)
        self._llm.set_seed(params.seed)
        processors = [self._mask_eog] if params.ignore_eos else None
        yield from self._llm.generate(
            prompt_tokens,
            top_k=params.top_k,
            top_p=params.top_p,
            min_p=0.05,  # llama-cpp-python's chat completion default
            temp=params.temperature,
            repeat_penalty=params.repeat_penalty,
            reset=True,
            logits_processor=processors,
        )

    def _mask_eog(self, _input_ids: Any, scores: Any) -> Any:
        """A logits processor that rules out every end-of-generation token (``ignore_eos``)."""
        if self._eog is None:
            self._eog = eog_tokens(self._llm._model.vocab, self._llm.n_vocab())
        scores[self._eog] = float("-inf")
        return scores

    def detokenize(self, tokens: list[int]) -> bytes:
        return bytes(self._llm.detokenize(tokens))

    def set_threads(self, threads: int) -> None:
        """Threads for the next decodes (NUM_THREADS=auto changes it while generating)."""
        set_threads(self._llm._ctx.ctx, threads)

    def is_eos(self, token: int) -> bool:
        from llama_cpp import llama_vocab_is_eog

        return bool(llama_vocab_is_eog(self._llm._model.vocab, token))

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None
