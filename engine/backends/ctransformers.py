"""The ctransformers backend: legacy GGML files (gpt_neox and friends) that llama.cpp no longer reads.

ctransformers is imported only in ``load`` (inside the replica process). Pitfalls handled here:

- A path that is not an existing file is taken for a Hugging Face repo name: only absolute local files go in.
- Its loader trusts the file (a truncated one loads with garbage weights): ``engine.ggml`` checks it first.
- Its sampler divides logits by the temperature (0 gives NaN probabilities) and partial-sorts ``top_k``
  entries without bounds checks: greedy becomes ``top_k=1`` and ``top_k`` is clamped to the vocabulary.
- It re-seeds its RNG with the given seed for every token (``-1`` means the current second), so each token
  here gets its own seed drawn from a generator seeded once per generation.
- Its Python ``tokenize`` sizes the output buffer by characters, not bytes (multi-byte text overflows it), and
  does not parse special tokens such as ``<|prompter|>``: both are done here. Very long words crash its
  tokenizer: they are cut (see ``_library_chunks``).
- ``context_length`` is ignored for legacy GGML files: the KV cache has the file's ``n_ctx``.
"""

from __future__ import annotations

import ctypes
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.backends.base import ModelInfo
from engine.cpu import ctransformers_lib_path, pick_llm_lib
from engine.errors import ConfigError, ModelFileError, PromptTooLong
from engine.ggml import read_ggml_header
from engine.types import GenParams

# ctransformers model types (compared without punctuation, as it does) -> architecture detected in the file
MODEL_TYPES = {
    "gptneox": "gpt_neox",
    "dollyv2": "gpt_neox",
    "gpt2": "gpt2",
    "gptj": "gptj",
    "llama": "llama",
    "starcoder": None,
    "gptbigcode": None,
    "falcon": None,
    "mpt": None,
    "replit": None,
}
_SPECIAL = re.compile(r"<\|[^|\s]{1,64}\|>")
# The library's word splitting (std::regex) recurses once per character of a word and its longest-match search
# is quadratic in the word's length: a 30,000-character word crashes the process, 10,000 take 3 s.
_MAX_WORD = 256
_BATCH = 4096


def _library_chunks(text: str) -> Iterator[bytes]:
    """``text`` in pieces for the library: cut before whitespace + non-space, where the library splits words
    anyway, and inside words longer than ``_MAX_WORD`` characters (the only place tokens can change)."""
    batch = ""
    for word in re.split(r"(?=\s\S)", text):
        if len(batch) + len(word) > _BATCH or len(word) > _MAX_WORD:
            if batch:
                yield batch.encode()
            batch = ""
        if len(word) > _MAX_WORD:
            yield from (word[i : i + _MAX_WORD].encode() for i in range(0, len(word), _MAX_WORD))
        else:
            batch += word
    if batch:
        yield batch.encode()


def _normalized(model_type: str) -> str:
    return "".join(c for c in model_type.lower() if c.isalnum())


class CTransformersBackend:
    """One legacy GGML model loaded with ctransformers' prebuilt library ``lib`` (an ``LLM_LIB`` value)."""

    def __init__(self, path: Path, model_type: str, lib: str, threads: int, context_length: int) -> None:
        self.path = Path(path)
        self.model_type = model_type
        self.lib = lib
        self.threads = threads
        self.context_length = context_length
        self._llm: Any = None
        self._n_ctx = 0
        self._n_vocab = 0
        self._add_bos = False
        self._specials: dict[str, int] = {}
        self._split: re.Pattern[str] | None = None

    def load(self) -> ModelInfo:
        """Check and load the file: ``ModelFileError`` if unusable, ``ConfigError`` for a bad setting."""
        if _normalized(self.model_type) not in MODEL_TYPES:
            raise ConfigError("MODEL_TYPE", self.model_type, "one of " + ", ".join(MODEL_TYPES))
        variant = pick_llm_lib(self.lib)
        lib_path = ctransformers_lib_path(variant)
        path = self.path.expanduser().resolve()
        if not path.is_file():
            raise ModelFileError(f"{path}: no such file (models are local files, never Hugging Face names)")
        header = read_ggml_header(path)
        expected = MODEL_TYPES[_normalized(self.model_type)]
        if expected and header.architecture not in ("unknown", expected):
            raise ModelFileError(f"{path}: holds a {header.architecture} model, not {self.model_type}")

        from ctransformers import AutoModelForCausalLM

        try:
            llm = AutoModelForCausalLM.from_pretrained(
                str(path),
                model_type=self.model_type,
                lib=str(lib_path),
                local_files_only=True,
                context_length=self.context_length,
                threads=self.threads if self.threads > 0 else -1,
                gpu_layers=0,
            )
        except (ValueError, RuntimeError, OSError) as e:
            raise ModelFileError(f"{path}: ctransformers cannot load it as {self.model_type}: {e}") from e
        self._llm = llm
        actual = int(llm.context_length)
        self._n_ctx = min(self.context_length, actual) if self.context_length > 0 else actual
        self._n_vocab = int(llm.vocab_size)
        self._add_bos = llm.model_type == "llama"
        self._specials = {}
        for token in range(self._n_vocab):
            text = llm.ctransformers_llm_detokenize(token).decode("utf-8", "replace")
            if _SPECIAL.fullmatch(text):
                self._specials.setdefault(text, token)
        alternatives = "|".join(re.escape(s) for s in sorted(self._specials, key=len, reverse=True))
        self._split = re.compile(f"({alternatives})") if self._specials else None
        return ModelInfo(
            backend="ctransformers",
            architecture=self.model_type,
            n_ctx=self._n_ctx,
            chat_template=None,
            bos_token=self.detokenize([llm.bos_token_id]).decode("utf-8", "replace"),
            eos_token=self.detokenize([llm.eos_token_id]).decode("utf-8", "replace"),
            detail=f"lib={variant}",
        )

    def _require(self) -> Any:
        if self._llm is None:
            raise RuntimeError("the ctransformers model is not loaded (or was closed)")
        return self._llm

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        """Tokens of ``text``; with ``special``, the vocabulary's special tokens (``<|...|>``) in it become single
        tokens."""
        llm = self._require()
        text = text.replace("\0", "")
        tokens = [int(llm.bos_token_id)] if self._add_bos and add_bos else []
        for part in self._split.split(text) if self._split and special else [text]:
            if special and part in self._specials:
                tokens.append(self._specials[part])
                continue
            for chunk in _library_chunks(part):
                # At most one token per byte (unknown characters are dropped), plus one for a BOS.
                out = (ctypes.c_int * (len(chunk) + 1))()
                n = llm.ctransformers_llm_tokenize(chunk, False, out)
                tokens.extend(out[:n])
        return tokens

    def detokenize(self, tokens: list[int]) -> bytes:
        """The raw bytes of the tokens' vocabulary entries (the library returns bytes: no decoding here)."""
        llm = self._require()
        return b"".join(llm.ctransformers_llm_detokenize(t) or b"" for t in tokens)

    def is_eos(self, token: int) -> bool:
        """Whether the library treats ``token`` as end of text (``<|endoftext|>``, or id 0 without one)."""
        return bool(self._require().is_eos_token(token))

    def generate(self, prompt_tokens: list[int], params: GenParams) -> Iterator[int]:
        """Sample tokens after the prompt (EOS included) until the caller stops or the context is full.

        Raises ``PromptTooLong`` at once if the prompt leaves no room in the context, ``ValueError`` if it is
        empty or holds ids outside the vocabulary. ``temperature <= 0`` is
        greedy; ``top_k <= 0`` means the whole vocabulary.
        """
        self._require()
        if not prompt_tokens or not 0 <= min(prompt_tokens) <= max(prompt_tokens) < self._n_vocab:
            # The library indexes its tables with these ids unchecked.
            raise ValueError(f"prompt tokens must be 1 or more ids in [0, {self._n_vocab})")
        if len(prompt_tokens) >= self._n_ctx:
            raise PromptTooLong(
                f"{len(prompt_tokens)} prompt tokens leave no room in a {self._n_ctx}-token context"
            )
        top_k = self._n_vocab if params.top_k <= 0 else min(params.top_k, self._n_vocab)
        temperature = params.temperature
        if temperature <= 0:
            top_k, temperature = 1, 1.0
        rng = random.Random(params.seed if params.seed >= 0 else None)
        sampling = {
            "top_k": top_k,
            "top_p": params.top_p,
            "temperature": temperature,
            "repetition_penalty": params.repeat_penalty,
        }
        return self._run(list(prompt_tokens), sampling, rng)

    def _run(self, prompt: list[int], sampling: dict[str, Any], rng: random.Random) -> Iterator[int]:
        # No local reference to the model, so that close() frees it even while this generator lives.
        # prepare_inputs_for_generation keeps the KV cache of the prefix shared with the previous generation.
        self._require().eval(self._require().prepare_inputs_for_generation(prompt, reset=True))
        n_past = len(prompt)
        while True:
            token = int(self._require().sample(**sampling, seed=rng.randrange(2**31)))
            yield token
            if n_past >= self._n_ctx:
                return
            self._require().eval([token])
            n_past += 1

    def close(self) -> None:
        """Free the model (the library frees it when the last reference goes)."""
        self._llm = None
        self._specials, self._split = {}, None
