"""engine.ggml on files written by testkit/ggml.py: no model library involved."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ModelFileError
from engine.ggml import NeoxHparams, detect_architecture, read_ggml_header
from testkit.ggml import (
    dequantize_q5_0,
    fixture_vocab,
    neox_weights,
    quantize_q5_0,
    write_ggml,
    write_gpt_neox_ggml,
)


@pytest.mark.parametrize(
    ("ftype", "stored", "weight_type"), [("f32", 0, "f32"), ("f16", 1, "f16"), ("q5_0", 2008, "q5_0")]
)
def test_header_reads_back_what_was_written(
    tmp_path: Path, ftype: str, stored: int, weight_type: str
) -> None:
    path = write_gpt_neox_ggml(tmp_path / "m.bin", ftype=ftype, n_embd=32, n_layer=3, n_ctx=128)
    info = read_ggml_header(path)
    assert (info.path, info.container, info.architecture) == (path, "ggml", "gpt_neox")
    assert info.hparams == NeoxHparams(320, 128, 32, 4, 3, 2, True, stored)
    assert info.vocab == tuple(t.encode() for t in fixture_vocab())
    assert len(info.tensors) == 4 + 12 * 3
    types = {len(t.shape): t.ggml_type for t in info.tensors}
    assert types == {1: "f32", 2: weight_type}
    qkv = next(t for t in info.tensors if t.name == "gpt_neox.layers.2.attention.query_key_value.weight")
    assert qkv.shape == (32, 96)
    last = info.tensors[-1]
    assert last.offset + last.nbytes == path.stat().st_size


def test_q5_0_round_trip_is_within_half_a_step() -> None:
    w = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    data = quantize_q5_0(w)
    assert len(data) == 8 * 22
    step = np.abs(w.reshape(-1, 32)).max(axis=1) / 16
    error = np.abs(dequantize_q5_0(data, w.shape) - w).reshape(-1, 32).max(axis=1)
    assert np.all(error <= step / 2 * 1.01)


def test_truncated_file_names_the_tensor(tmp_path: Path) -> None:
    path = write_gpt_neox_ggml(tmp_path / "m.bin")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ModelFileError, match=r"truncated: tensor '[\w.]+' needs \d+ bytes past end"
    ) as caught:
        read_ggml_header(path)
    assert str(path) in str(caught.value)


def test_truncated_vocabulary_and_header(tmp_path: Path) -> None:
    path = write_gpt_neox_ggml(tmp_path / "m.bin")
    data = path.read_bytes()
    path.write_bytes(data[:200])
    with pytest.raises(ModelFileError, match="truncated: vocab entry"):
        read_ggml_header(path)
    path.write_bytes(data[:20])
    with pytest.raises(ModelFileError, match="truncated: the header"):
        read_ggml_header(path)
    path.write_bytes(data[:3])
    with pytest.raises(ModelFileError, match="truncated: the magic number"):
        read_ggml_header(path)


def test_empty_missing_and_directory(tmp_path: Path) -> None:
    empty = tmp_path / "empty.bin"
    empty.touch()
    with pytest.raises(ModelFileError, match=r"empty\.bin: empty file"):
        read_ggml_header(empty)
    with pytest.raises(ModelFileError, match="no such file"):
        read_ggml_header(tmp_path / "missing.bin")
    with pytest.raises(ModelFileError, match="cannot be read"):
        read_ggml_header(tmp_path)


def test_wrong_magic_and_gguf(tmp_path: Path) -> None:
    path = tmp_path / "m.bin"
    path.write_bytes(b"PK\x03\x04" + bytes(64))
    with pytest.raises(ModelFileError, match="not a GGML model file"):
        read_ggml_header(path)
    path.write_bytes(b"GGUF" + struct.pack("<I", 3) + bytes(64))
    with pytest.raises(ModelFileError, match=r"GGUF file.*llama_cpp"):
        read_ggml_header(path)


@pytest.mark.parametrize(("magic", "container"), [(0x67676A74, "ggjt"), (0x67676D66, "ggmf")])
def test_legacy_llama_magics_are_recognised(tmp_path: Path, magic: int, container: str) -> None:
    path = tmp_path / "llama.bin"
    path.write_bytes(struct.pack("<II", magic, 3) + bytes(64))
    info = read_ggml_header(path)
    assert (info.container, info.architecture, info.hparams) == (container, "llama", None)
    assert "legacy llama" in info.note


def test_missing_and_misshapen_tensors(tmp_path: Path) -> None:
    w = neox_weights()
    del w["gpt_neox.layers.1.mlp.dense_4h_to_h.bias"]
    path = write_gpt_neox_ggml(tmp_path / "m.bin", weights=w)
    with pytest.raises(ModelFileError, match=r"missing: \['gpt_neox.layers.1.mlp.dense_4h_to_h.bias'\]"):
        read_ggml_header(path)
    w = neox_weights()
    w["gpt_neox.layers.0.attention.dense.weight"] = np.zeros((32, 64), np.float32)
    write_gpt_neox_ggml(path, weights=w)
    with pytest.raises(
        ModelFileError, match=r"attention.dense.weight' is f16 \[64, 32\], expected f16 \[64, 64\]"
    ):
        read_ggml_header(path)


def test_old_quantization_layout_is_refused(tmp_path: Path) -> None:
    tensor = ("gpt_neox.embed_in.weight", 2, (1, 32), bytes(20))  # q4_0 with the f32 scale of version 0
    path = write_ggml(tmp_path / "m.bin", (1, 64, 32, 4, 1, 2, 1, 2), [b"a"], [tensor])
    with pytest.raises(ModelFileError, match="quantization version 0"):
        read_ggml_header(path)


def _f32(name: str, *shape: int) -> tuple[str, int, tuple[int, ...], bytes]:
    return name, 0, shape, np.zeros(shape, "<f4").tobytes()


def test_other_layouts_are_detected_not_checked(tmp_path: Path) -> None:
    vocab = [b"a", b"b", b"<|endoftext|>"]
    gpt2 = [_f32("transformer.wte.weight", 3, 8), _f32("transformer.h.0.attn.c_attn.weight", 24, 8)]
    info = read_ggml_header(write_ggml(tmp_path / "gpt2.bin", (3, 16, 8, 2, 1, 1), vocab, gpt2))
    assert (info.architecture, info.hparams, len(info.tensors)) == ("gpt2", None, 2)
    gptj = [_f32("transformer.h.0.attn.q_proj.weight", 8, 8)]
    info = read_ggml_header(write_ggml(tmp_path / "gptj.bin", (3, 16, 8, 2, 1, 4, 1), vocab, gptj))
    assert (info.architecture, info.hparams) == ("gptj", None)


def test_detect_architecture_from_names() -> None:
    assert detect_architecture(["gpt_neox.embed_in.weight", "embed_out.weight"]) == "gpt_neox"
    assert detect_architecture(["transformer.h.3.attn.c_attn.bias"]) == "gpt2"
    assert detect_architecture(["model/wte", "model/h0/attn/c_attn/w"]) == "gpt2"
    assert detect_architecture(["transformer.h.0.attn.q_proj.weight"]) == "gptj"
    assert detect_architecture(["transformer.blocks.0.attn.Wqkv.weight"]) == "unknown"
    assert detect_architecture([]) == "unknown"
