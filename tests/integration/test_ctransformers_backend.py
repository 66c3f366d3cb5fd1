"""The ctransformers backend and LLM_LIB choice, against the real library and tiny GGML fixtures.

One model at a time: ctransformers models share scratch buffers, so every test closes its model.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.backends.base import Backend
from engine.backends.ctransformers import CTransformersBackend
from engine.cpu import cpu_flags, ctransformers_lib_path, pick_llm_lib
from engine.errors import ConfigError, ModelFileError, PromptTooLong
from engine.types import GenParams
from testkit.ggml import (
    dequantize_q5_0,
    fixture_vocab,
    neox_weights,
    quantize_q5_0,
    write_gpt_neox_ggml,
)

GREEDY = GenParams(temperature=0.0, seed=1)
OASST = "<|prompter|>What is the capital of France?<|endoftext|><|assistant|>"


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ggml")
    return {ftype: write_gpt_neox_ggml(folder / f"{ftype}.bin", ftype=ftype) for ftype in ("f16", "q5_0")}


def _open(path: Path, context_length: int = 256, lib: str = "auto", model_type: str = "gpt_neox") -> Backend:
    backend = CTransformersBackend(
        path, model_type=model_type, lib=lib, threads=1, context_length=context_length
    )
    backend.load()
    return backend


@pytest.fixture
def backend(model_files: dict[str, Path]) -> Iterator[Backend]:
    b = _open(model_files["f16"])
    yield b
    b.close()


def _take(backend: Backend, prompt: str, params: GenParams, n: int = 24) -> list[int]:
    return list(itertools.islice(backend.generate(backend.tokenize(prompt), params), n))


@pytest.mark.parametrize("ftype", ["f16", "q5_0"])
def test_loads_and_generates(model_files: dict[str, Path], ftype: str) -> None:
    backend = CTransformersBackend(model_files[ftype], "gpt_neox", "auto", threads=1, context_length=256)
    info = backend.load()
    try:
        assert (info.backend, info.architecture, info.n_ctx, info.chat_template) == (
            "ctransformers",
            "gpt_neox",
            256,
            None,
        )
        assert (info.bos_token, info.eos_token) == ("<|endoftext|>", "<|endoftext|>")
        assert info.detail == f"lib={pick_llm_lib('auto')}"
        tokens = _take(backend, OASST, GREEDY, 32)
        assert len(tokens) == 32
        assert all(0 < t < 320 and not backend.is_eos(t) for t in tokens)  # the fixture never stops
        assert backend.detokenize(tokens).isascii()
    finally:
        backend.close()


def test_q5_0_file_matches_its_dequantized_weights(tmp_path: Path) -> None:
    """Checks the fixture's q5_0 block layout against the library: compare logits with f32 copies."""
    w = neox_weights(seed=3)
    rounded = {k: dequantize_q5_0(quantize_q5_0(a), a.shape) if a.ndim == 2 else a for k, a in w.items()}
    files = {
        "q5_0": write_gpt_neox_ggml(tmp_path / "q5_0.bin", ftype="q5_0", weights=w),
        "rounded": write_gpt_neox_ggml(tmp_path / "rounded.bin", ftype="f32", weights=rounded),
        "exact": write_gpt_neox_ggml(tmp_path / "exact.bin", ftype="f32", weights=w),
    }
    from ctransformers import AutoModelForCausalLM

    lib = str(ctransformers_lib_path(pick_llm_lib("auto")))
    logits = {}
    for name, path in files.items():
        llm = AutoModelForCausalLM.from_pretrained(str(path), model_type="gpt_neox", lib=lib, threads=1)
        llm.eval(llm.tokenize("hello the world, what is it"))
        logits[name] = np.array(list(llm.logits))
        del llm
    q, rounded_err, exact_err = logits["q5_0"], logits["rounded"], logits["exact"]
    # The library also rounds activations to 8 bits for q5_0 products: near, not equal.
    assert np.abs(q - rounded_err).max() < 0.05 * q.std()
    assert np.abs(q - rounded_err).max() < np.abs(q - exact_err).max() / 2


def test_oasst_special_tokens_are_single_tokens(backend: Backend) -> None:
    vocab = fixture_vocab()
    tokens = backend.tokenize(OASST)
    assert tokens[0] == vocab.index("<|prompter|>")
    assert tokens[-2:] == [0, vocab.index("<|assistant|>")]
    assert backend.detokenize(tokens) == OASST.encode()


def test_multibyte_text_is_safe(tmp_path: Path) -> None:
    vocab = [t.encode() for t in fixture_vocab()]
    vocab[-2:] = [b"\xc3", b"\xa9"]  # the two bytes of "é" as tokens of their own
    backend = _open(write_gpt_neox_ggml(tmp_path / "bytes.bin", vocab=vocab))
    try:
        # ctransformers' own tokenize sizes its buffer by characters: 2 tokens a character would overflow it.
        tokens = backend.tokenize("é" * 3000)
        assert len(tokens) == 6000
        assert backend.detokenize(tokens) == ("é" * 3000).encode()
        assert backend.detokenize(tokens[:1]) == b"\xc3"  # bytes, possibly an incomplete UTF-8 sequence
        assert (
            backend.detokenize(backend.tokenize("caf\u00e9 \u65e5!")) == b"caf\xc3\xa9 !"
        )  # unknown chars dropped
    finally:
        backend.close()


def test_long_text_is_cut_where_the_library_splits_words(model_files: dict[str, Path]) -> None:
    rng = np.random.default_rng(0)
    words = ["the", "and", "hello", "42", "!!", "world.", "it's", "\n", "  ", "\t", "x" * 40, "<|", "|>"]
    text = "".join(rng.choice(words) + rng.choice([" ", "", "\n", "   "]) for _ in range(3000))
    backend = _open(model_files["f16"])
    try:
        ours = backend.tokenize(text)
        # Unbroken runs this long crash the library's own tokenizer (stack overflow in std::regex).
        for run in ("=" * 50_000, "abc" * 20_000):
            assert backend.detokenize(backend.tokenize(run)) == run.encode()
    finally:
        backend.close()
    from ctransformers import AutoModelForCausalLM

    lib = str(ctransformers_lib_path(pick_llm_lib("auto")))
    llm = AutoModelForCausalLM.from_pretrained(str(model_files["f16"]), model_type="gpt_neox", lib=lib)
    assert len(text) > 10_000
    assert ours == llm.tokenize(text)  # ASCII: its character-sized buffer is big enough here
    del llm


def test_greedy_is_deterministic_and_ignores_the_seed(backend: Backend) -> None:
    first = _take(backend, OASST, GREEDY)
    assert _take(backend, OASST, GREEDY) == first
    assert _take(backend, OASST, GenParams(temperature=0.0, seed=99)) == first
    assert _take(backend, OASST, GenParams(temperature=0.0, seed=-1)) == first


def test_seeds_with_temperature_one(backend: Backend) -> None:
    params = [GenParams(temperature=1.0, top_k=0, top_p=1.0, seed=s) for s in range(5)]
    runs = [_take(backend, "hello", p) for p in params]
    assert _take(backend, "hello", params[0]) == runs[0]
    assert len({tuple(r) for r in runs}) >= 3
    assert runs[0] != _take(backend, "hello", GREEDY)


def test_top_k_larger_than_the_vocabulary_is_clamped(backend: Backend) -> None:
    tokens = _take(backend, "hi", GenParams(temperature=1.0, top_k=100_000, seed=5), 48)
    assert len(tokens) == 48
    assert all(0 <= t < 320 for t in tokens)


def test_generation_stops_at_the_end_of_the_context(model_files: dict[str, Path]) -> None:
    backend = _open(model_files["f16"], context_length=32)
    try:
        prompt = list(range(1, 21))
        assert len(list(itertools.islice(backend.generate(prompt, GREEDY), 100))) == 32 - 20 + 1
        with pytest.raises(PromptTooLong):
            backend.generate(prompt * 2, GREEDY)
        for bad in ([], [5, 320], [-1]):
            with pytest.raises(ValueError, match="ids in"):
                backend.generate(bad, GREEDY)
    finally:
        backend.close()


def test_end_of_text_is_yielded(tmp_path: Path) -> None:
    w = neox_weights()
    w["embed_out.weight"][0] = 4.0  # the end-of-text logit is now +2 * n_embd for every input
    backend = _open(write_gpt_neox_ggml(tmp_path / "stops.bin", weights=w))
    try:
        first = next(backend.generate(backend.tokenize("hello"), GREEDY))
        assert first == 0
        assert backend.is_eos(first)
        assert not backend.is_eos(1)
    finally:
        backend.close()


def test_close_frees_the_model_and_another_can_load(model_files: dict[str, Path]) -> None:
    backend = _open(model_files["f16"])
    tokens = backend.generate(backend.tokenize("hello"), GREEDY)
    next(tokens)
    backend.close()
    with pytest.raises(RuntimeError, match="not loaded"):
        next(tokens)
    with pytest.raises(RuntimeError, match="not loaded"):
        backend.tokenize("hello")
    other = _open(model_files["q5_0"])
    assert len(_take(other, "hello", GREEDY, 4)) == 4
    other.close()


def test_relative_paths_resolve_locally(
    model_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(model_files["f16"].parent)
    backend = _open(Path("f16.bin"))
    backend.close()
    # Looks like a Hugging Face repo name: must not be looked up anywhere.
    for name in ("TheBloke/pythia-70m-GGML", "missing.bin"):
        with pytest.raises(ModelFileError, match="no such file"):
            _open(Path(name))


def test_unusable_files(tmp_path: Path, model_files: dict[str, Path]) -> None:
    truncated = tmp_path / "half.bin"
    data = model_files["f16"].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        _open(truncated)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(ModelFileError, match="GGUF"):
        _open(gguf)
    with pytest.raises(ModelFileError, match="holds a gpt_neox model, not gpt2"):
        _open(model_files["f16"], model_type="gpt2")


def test_settings_errors(model_files: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="MODEL_TYPE='bert'"):
        _open(model_files["f16"], model_type="bert")
    with pytest.raises(ConfigError, match="LLM_LIB='avx512'"):
        _open(model_files["f16"], lib="avx512")


def test_llm_lib_auto_follows_cpuinfo() -> None:
    flags = cpu_flags()
    expected = "avx2" if {"avx2", "fma", "f16c"} <= flags else "avx" if {"avx", "f16c"} <= flags else "basic"
    assert pick_llm_lib("auto") == pick_llm_lib(" AUTO ") == expected
    assert pick_llm_lib("auto", frozenset({"avx", "avx2", "fma", "f16c", "sse3"})) == "avx2"
    assert pick_llm_lib("auto", frozenset({"avx", "f16c"})) == "avx"
    assert pick_llm_lib("auto", frozenset({"avx"})) == "basic"  # ctransformers' avx build also needs F16C
    assert pick_llm_lib("auto", frozenset()) == "basic"
    assert pick_llm_lib("basic") == "basic"


def test_llm_lib_errors_and_paths() -> None:
    with pytest.raises(ConfigError, match=r"LLM_LIB='sse'.*one of auto, avx2, avx, basic"):
        pick_llm_lib("sse")
    with pytest.raises(ConfigError, match=r"LLM_LIB='avx2'.*lacks avx, avx2, f16c, fma"):
        ctransformers_lib_path("avx2", frozenset({"sse2"}))
    with pytest.raises(ConfigError, match=r"LLM_LIB='avx'.*lacks f16c"):
        ctransformers_lib_path("avx", frozenset({"avx"}))
    path = ctransformers_lib_path("basic")
    assert path.is_absolute() and path.is_file() and path.name == "libctransformers.so"
    assert path.parent.name == "basic"


def test_cpu_flags_from_a_cpuinfo_file(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx f16c\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(str(cpuinfo)) == frozenset({"fpu", "sse2", "avx", "f16c"})
    assert cpu_flags(str(tmp_path / "none")) == frozenset()
