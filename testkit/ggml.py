"""Tiny random legacy GGML models, written with numpy in milliseconds, for tests that need a real model file.

The layout is ggml's gpt_neox (Pythia) example format, as ``engine/ggml.py`` reads it: a header of eight int32
hyperparameters, the vocabulary, then the tensors with no padding. A model that never stops early has an
end-of-text logit far below every other (see ``write_gpt_neox_ggml``).
"""

from __future__ import annotations

import itertools
import string
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

EOT = "<|endoftext|>"
CHAT_TOKENS = ("<|prompter|>", "<|assistant|>")
N_VOCAB = 320
_WORDS = (  # common English words, as " word" tokens
    "the and of to in is it you that he was for on are with as his they be at one have this from or had by "
    "word but what some we can out other were all there when up use your how said an each she which do their "
    "time if will way about many then them write would like so these her long make thing see him two has look"
)
FTYPES = {"f32": (0, 0), "f16": (1, 1), "q5_0": (2008, 6)}  # name -> (file ftype, tensor type of 2-D weights)
Q5_0_BLOCK = np.dtype([("d", "<f2"), ("qh", "<u4"), ("qs", "u1", 16)])  # 22 bytes, no padding


def fixture_vocab() -> list[str]:
    """320 ASCII tokens: end-of-text at id 0, printable characters, the chat tokens, multi-char pieces."""
    vocab = [EOT, *(chr(c) for c in range(32, 127)), *CHAT_TOKENS]
    pieces = itertools.chain(
        (" " + w for w in _WORDS.split()),
        (a + b for a, b in itertools.product(string.ascii_lowercase, repeat=2)),
    )
    vocab += itertools.islice(dict.fromkeys(p for p in pieces if len(p) > 1), N_VOCAB - len(vocab))
    return vocab


def quantize_q5_0(w: np.ndarray) -> bytes:
    """ggml q5_0 blocks of ``w``'s rows: 32 weights as f16 scale ``d``, fifth bits ``qh``, nibbles ``qs``."""
    x = w.astype(np.float32).reshape(-1, 32)
    signed_max = x[np.arange(len(x)), np.abs(x).argmax(axis=1)]
    d = (signed_max / -16).astype(np.float16)
    inv = np.divide(1.0, d.astype(np.float32), out=np.zeros(len(x), np.float32), where=d != 0)
    q = np.clip(np.rint(x * inv[:, None]) + 16, 0, 31).astype(np.uint32)
    blocks = np.empty(len(x), Q5_0_BLOCK)
    blocks["d"] = d
    blocks["qh"] = (((q >> 4) & 1) << np.arange(32, dtype=np.uint32)).sum(axis=1)
    blocks["qs"] = (q[:, :16] & 0xF) | ((q[:, 16:] & 0xF) << 4)
    return blocks.tobytes()


def dequantize_q5_0(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 weights that q5_0 ``data`` stands for: (q - 16) * d, weights j and j+16 sharing byte j."""
    blocks = np.frombuffer(data, Q5_0_BLOCK)
    low = np.concatenate([blocks["qs"] & 0xF, blocks["qs"] >> 4], axis=1).astype(np.int32)
    high = (blocks["qh"][:, None] >> np.arange(32, dtype=np.uint32)) & 1
    q = low | (high.astype(np.int32) << 4)
    return ((q - 16) * blocks["d"].astype(np.float32)[:, None]).reshape(shape)


def write_ggml(
    path: Path,
    hparams: Sequence[int],
    vocab: Iterable[bytes],
    tensors: Iterable[tuple[str, int, tuple[int, ...], bytes]],
) -> Path:
    """Write a 'ggml' file: magic, int32 hparams, vocabulary, (name, type id, numpy shape, data) records."""
    with path.open("wb") as f:
        f.write(struct.pack("<I", 0x67676D6C) + struct.pack(f"<{len(hparams)}i", *hparams))
        for token in vocab:
            f.write(struct.pack("<I", len(token)) + token)
        for name, type_id, shape, data in tensors:
            raw = name.encode()
            f.write(
                struct.pack(f"<3i{len(shape)}i", len(shape), len(raw), type_id, *reversed(shape)) + raw + data
            )
    return path


def neox_weights(
    *, n_embd: int = 64, n_layer: int = 2, seed: int = 0, never_stop: bool = True
) -> dict[str, np.ndarray]:
    """Random float32 Pythia weights (numpy shapes, out x in) for the fixture vocabulary."""
    rng = np.random.default_rng(seed)
    e = n_embd

    def normal(*shape: int, scale: float = 0.1) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {"gpt_neox.embed_in.weight": normal(N_VOCAB, e, scale=1.0)}
    for i in range(n_layer):
        p = f"gpt_neox.layers.{i}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            w[f"{p}{norm}.weight"], w[f"{p}{norm}.bias"] = np.ones(e, np.float32), np.zeros(e, np.float32)
        for mod, n_in, n_out in (
            ("attention.query_key_value", e, 3 * e),
            ("attention.dense", e, e),
            ("mlp.dense_h_to_4h", e, 4 * e),
            ("mlp.dense_4h_to_h", 4 * e, e),
        ):
            w[f"{p}{mod}.weight"], w[f"{p}{mod}.bias"] = normal(n_out, n_in), normal(n_out, scale=0.01)
    w["gpt_neox.final_layer_norm.weight"] = np.ones(e, np.float32)
    w["gpt_neox.final_layer_norm.bias"] = np.zeros(e, np.float32)
    w["embed_out.weight"] = normal(N_VOCAB, e, scale=0.3)
    if never_stop:
        # Layer-norm output has zero mean, so with a uniform gain the end-of-text logit is -4 * 0.5 * n_embd.
        w["gpt_neox.final_layer_norm.bias"][:] = 0.5
        w["embed_out.weight"][0] = -4.0
    return w


def write_gpt_neox_ggml(
    path: Path,
    *,
    ftype: str = "f16",
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_ctx: int = 512,
    seed: int = 0,
    never_stop: bool = True,
    weights: dict[str, np.ndarray] | None = None,
    vocab: Sequence[bytes] | None = None,
) -> Path:
    """Write a tiny random Pythia-layout GGML file (``ftype`` f32, f16 or q5_0) and return its path.

    ``weights`` (from ``neox_weights``) replaces the random ones; 2-D weights are stored in ``ftype``, 1-D as
    f32. ``vocab`` (320 entries) replaces ``fixture_vocab()``.
    """
    file_type, weight_type = FTYPES[ftype]
    w = (
        weights
        if weights is not None
        else neox_weights(n_embd=n_embd, n_layer=n_layer, seed=seed, never_stop=never_stop)
    )
    n_embd = w["gpt_neox.embed_in.weight"].shape[1]
    n_layer = sum(name.endswith("input_layernorm.weight") for name in w)
    n_rot = n_embd // n_head // 4  # Pythia's rotary_pct is 0.25

    def record(name: str, a: np.ndarray) -> tuple[str, int, tuple[int, ...], bytes]:
        if a.ndim == 1 or weight_type == 0:
            return name, 0, a.shape, a.astype("<f4").tobytes()
        if weight_type == 1:
            return name, 1, a.shape, a.astype("<f2").tobytes()
        return name, 6, a.shape, quantize_q5_0(a)

    hparams = (N_VOCAB, n_ctx, n_embd, n_head, n_layer, n_rot, 1, file_type)
    tokens = vocab if vocab is not None else [t.encode("ascii") for t in fixture_vocab()]
    assert len(tokens) == N_VOCAB, "the weights have one row per token of a 320-token vocabulary"
    return write_ggml(path, hparams, tokens, (record(name, a) for name, a in w.items()))


def scripted_vocab(extra: Sequence[str]) -> list[str]:
    """The fixture vocabulary with ``extra`` tokens (such as ``<think>``) in place of its last pieces."""
    vocab = fixture_vocab()
    missing = [t for t in extra if t not in vocab]
    vocab[N_VOCAB - len(missing):] = missing
    return vocab


def write_scripted_ggml(path: Path, script: Sequence[str], *, after: str = "<|assistant|>",
                        ftype: str = "f16") -> Path:
    """A tiny gpt_neox model that answers ``script`` (a list of vocabulary tokens, each used once) token for
    token, then ends: a real model file for the real engine, whose output is known (say, a reasoning model's
    ``<think>…</think>`` before its answer).

    How: both layers add nothing (zero output weights and biases), so the last hidden state is the current
    token's embedding; each token of the chain has a one-hot embedding of its own, and the output row of the
    token that follows it points the same way (the end-of-text row follows the last). Greedy decoding then walks
    the chain from ``after`` (the OASST template's generation prompt ends with it). Other tokens' rows are small
    and random.
    """
    chain = [after, *script]
    vocab = scripted_vocab(chain)
    ids = [vocab.index(t) for t in chain]
    assert len(set(ids)) == len(ids), "each token of the script once (a bigram model cannot loop)"
    w = neox_weights(n_embd=64, n_layer=2, never_stop=False)
    e = w["gpt_neox.embed_in.weight"].shape[1]
    assert len(chain) <= e, "one embedding dimension per token of the chain"
    for name in w:
        if name.endswith(("attention.dense.weight", "attention.dense.bias", "dense_4h_to_h.weight",
                          "dense_4h_to_h.bias")):
            w[name][:] = 0.0
    w["embed_out.weight"] = (np.random.default_rng(1).standard_normal((N_VOCAB, e)) * 0.01).astype(np.float32)
    for k, token in enumerate(ids):
        w["gpt_neox.embed_in.weight"][token] = 0.0
        w["gpt_neox.embed_in.weight"][token, k] = 8.0
        following = ids[k + 1] if k + 1 < len(ids) else 0  # (id 0: end of text)
        w["embed_out.weight"][following, k] = 10.0
    return write_gpt_neox_ggml(path, ftype=ftype, weights=w, vocab=[t.encode("ascii") for t in vocab])
