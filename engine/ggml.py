"""Reading legacy GGML model files (the format ctransformers loads) without any model library.

ctransformers trusts its input: a truncated file loads "successfully" with uninitialised weights, a missing
tensor is left as garbage, and a tensor with more than two dimensions overflows its loader's stack. So the
backend checks a file with ``read_ggml_header`` before handing it over.

The unversioned 'ggml' container is walked record by record for the hparam layouts of ggml's gpt_neox
(8 ints), gpt-j (7) and gpt-2 (6) examples, which share the vocabulary and tensor record formats. Only
gpt_neox files (Pythia, Dolly v2, StableLM) are fully checked: hparams, every expected tensor name, shape and
type. For other layouts the architecture is only detected from the tensor names (``hparams`` is then None).
Files with the 'ggmf'/'ggjt' magics are legacy llama formats: recognised, not walked.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from engine.errors import ModelFileError

GGML_MAGIC = 0x67676D6C  # 'ggml'
LEGACY_LLAMA_MAGICS = {0x67676D66: "ggmf", 0x67676A74: "ggjt"}  # versioned llama.cpp formats
GGUF_MAGIC = 0x46554747  # the bytes 'GGUF'

# ggml tensor type id -> (name, weights per block, bytes per block), as of quantization version 2.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("f32", 1, 4),
    1: ("f16", 1, 2),
    2: ("q4_0", 32, 18),
    3: ("q4_1", 32, 20),
    6: ("q5_0", 32, 22),
    7: ("q5_1", 32, 24),
    8: ("q8_0", 32, 34),
}
# file type (ftype % 1000) -> the type of its 2-D weights
FTYPE_WEIGHT_TYPES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 7: "q8_0", 8: "q5_0", 9: "q5_1"}


@dataclass(frozen=True, slots=True)
class NeoxHparams:
    """The header of a gpt_neox file. ``ftype`` is as stored: 1000 * quantization version + file type."""

    n_vocab: int
    n_ctx: int
    n_embd: int
    n_head: int
    n_layer: int
    n_rot: int
    use_parallel_residual: bool
    ftype: int


@dataclass(frozen=True, slots=True)
class TensorRecord:
    """One tensor of the file. ``shape`` is in ggml order (fastest-varying dimension first)."""

    name: str
    ggml_type: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True, slots=True)
class GgmlInfo:
    """What ``read_ggml_header`` found in a file."""

    path: Path
    container: str  # "ggml", "ggmf" or "ggjt"
    architecture: str  # "gpt_neox", "gpt2", "gptj", "llama" or "unknown"
    hparams: NeoxHparams | None  # gpt_neox files only
    vocab: tuple[bytes, ...] = ()
    tensors: tuple[TensorRecord, ...] = ()
    note: str = ""


class _Reader:
    def __init__(self, f: BinaryIO, size: int, path: Path) -> None:
        self.f, self.size, self.path = f, size, path

    def take(self, n: int, what: str) -> bytes:
        past = self.f.tell() + n - self.size
        if past > 0:
            raise ModelFileError(f"{self.path}: truncated: {what} needs {past} bytes past end of file")
        return self.f.read(n)

    def ints(self, n: int, what: str, fmt: str = "i") -> tuple[int, ...]:
        return struct.unpack(f"<{n}{fmt}", self.take(4 * n, what))


def read_ggml_header(path: str | Path) -> GgmlInfo:
    """Read and check a legacy GGML file's header, vocabulary and tensor records (see the module docstring).

    Raises ``ModelFileError`` naming the path and the problem: missing, empty, not GGML (GGUF included),
    truncated, or inconsistent with its architecture.
    """
    path = Path(path)
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file") from None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot be read ({e.strerror})") from None
    with f:
        size = path.stat().st_size
        if size == 0:
            raise ModelFileError(f"{path}: empty file (0 bytes)")
        r = _Reader(f, size, path)
        (magic,) = r.ints(1, "the magic number", "I")
        if magic == GGUF_MAGIC:
            raise ModelFileError(f"{path}: a GGUF file, not legacy GGML: load it with the llama_cpp backend")
        if magic in LEGACY_LLAMA_MAGICS:
            container = LEGACY_LLAMA_MAGICS[magic]
            (version,) = r.ints(1, "the version", "I")
            note = f"legacy llama format ({container} v{version}): not walked; ctransformers type 'llama'"
            return GgmlInfo(path, container, "llama", None, note=note)
        if magic != GGML_MAGIC:
            shown = struct.pack("<I", magic)
            raise ModelFileError(f"{path}: not a GGML model file (starts with {shown!r}, expected b'lmgg')")
        failures: list[tuple[int, ModelFileError]] = []
        for n_hparams in (8, 7, 6):
            try:
                hparams, vocab, tensors = _walk(r, n_hparams)
            except ModelFileError as e:
                failures.append((f.tell(), e))
                continue
            arch = detect_architecture(t.name for t in tensors)
            neox = None
            if arch == "gpt_neox" and n_hparams == 8:
                n_vocab, n_ctx, n_embd, n_head, n_layer, n_rot, par_res, ftype = hparams
                neox = NeoxHparams(n_vocab, n_ctx, n_embd, n_head, n_layer, n_rot, bool(par_res), ftype)
                _check_neox(path, neox, tensors)
            return GgmlInfo(path, "ggml", arch, neox, vocab, tuple(tensors))
        # Report the layout that got furthest: the others misread the header and fail early.
        raise max(failures, key=lambda fail: fail[0])[1]


def _walk(r: _Reader, n_hparams: int) -> tuple[tuple[int, ...], tuple[bytes, ...], list[TensorRecord]]:
    r.f.seek(4)
    hparams = r.ints(n_hparams, "the header")
    if not 0 < hparams[0] <= 10_000_000:
        raise ModelFileError(f"{r.path}: n_vocab {hparams[0]} is not plausible")
    vocab = []
    for i in range(hparams[0]):
        (length,) = r.ints(1, f"vocab entry {i}", "I")
        vocab.append(r.take(length, f"vocab entry {i}"))
    quant_version = hparams[-1] // 1000
    tensors: list[TensorRecord] = []
    while r.f.tell() < r.size:
        what = f"tensor record {len(tensors)}"
        n_dims, name_len, type_id = r.ints(3, what)
        if not (1 <= n_dims <= 4 and 0 < name_len <= 512 and type_id in GGML_TYPES):
            raise ModelFileError(f"{r.path}: {what} is malformed (n_dims {n_dims}, type {type_id})")
        shape = r.ints(n_dims, what)
        try:
            name = r.take(name_len, what).decode("ascii")
        except UnicodeDecodeError:
            raise ModelFileError(f"{r.path}: {what} has a name that is not ASCII") from None
        type_name, block, block_bytes = GGML_TYPES[type_id]
        if min(shape) <= 0 or shape[0] % block:
            raise ModelFileError(f"{r.path}: tensor {name!r} has shape {list(shape)} for type {type_name}")
        if quant_version < 2 and type_name in ("q4_0", "q4_1", "q8_0"):
            raise ModelFileError(
                f"{r.path}: tensor {name!r} uses the {type_name} layout of quantization version "
                f"{quant_version}, which ctransformers misreads: re-quantize the model"
            )
        nbytes = math.prod(shape) // block * block_bytes
        offset = r.f.tell()
        past = offset + nbytes - r.size
        if past > 0:
            raise ModelFileError(f"{r.path}: truncated: tensor {name!r} needs {past} bytes past end of file")
        r.f.seek(offset + nbytes)
        tensors.append(TensorRecord(name, type_name, shape, offset, nbytes))
    return hparams, tuple(vocab), tensors


def detect_architecture(names: Iterable[str]) -> str:
    """The architecture that tensor names suggest: "gpt_neox", "gpt2", "gptj" or "unknown"."""
    found = list(names)

    def has(part: str) -> bool:
        return any(part in n for n in found)

    if any(n.startswith("gpt_neox.") for n in found):
        return "gpt_neox"
    if any(n.startswith("transformer.h.") for n in found):
        return "gpt2" if has(".attn.c_attn.") else "gptj" if has(".attn.q_proj.") else "unknown"
    if any(n.startswith("model/h") for n in found) and has("/attn/c_attn/"):
        return "gpt2"  # ggml's own gpt-2 naming (starcoder files use it too)
    return "unknown"


def _check_neox(path: Path, hp: NeoxHparams, tensors: list[TensorRecord]) -> None:
    e, v = hp.n_embd, hp.n_vocab
    weight_type = FTYPE_WEIGHT_TYPES.get(hp.ftype % 1000)
    if weight_type is None:
        raise ModelFileError(f"{path}: unknown ftype {hp.ftype}")
    if hp.n_head <= 0 or e % hp.n_head or not 0 <= hp.n_rot <= e // hp.n_head:
        raise ModelFileError(f"{path}: n_embd {e}, n_head {hp.n_head}, n_rot {hp.n_rot} do not fit together")
    want: dict[str, tuple[int, ...]] = {
        "gpt_neox.embed_in.weight": (e, v),
        "gpt_neox.final_layer_norm.weight": (e,),
        "gpt_neox.final_layer_norm.bias": (e,),
        "embed_out.weight": (e, v),
    }
    for i in range(hp.n_layer):
        p = f"gpt_neox.layers.{i}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            want |= {f"{p}{norm}.weight": (e,), f"{p}{norm}.bias": (e,)}
        for mod, n_in, n_out in (
            ("attention.query_key_value", e, 3 * e),
            ("attention.dense", e, e),
            ("mlp.dense_h_to_4h", e, 4 * e),
            ("mlp.dense_4h_to_h", 4 * e, e),
        ):
            want |= {f"{p}{mod}.weight": (n_in, n_out), f"{p}{mod}.bias": (n_out,)}
    got = {t.name: t for t in tensors}
    missing = [n for n in want if n not in got]
    unknown = [n for n in got if n not in want]
    if missing or unknown:
        raise ModelFileError(
            f"{path}: gpt_neox tensors missing: {missing[:3]} ({len(missing)}), unknown: {unknown[:3]} "
            f"({len(unknown)}); n_layer is {hp.n_layer}"
        )
    for name, shape in want.items():
        t, typ = got[name], weight_type if len(shape) == 2 else "f32"
        if t.shape != shape or t.ggml_type != typ:
            found = f"{t.ggml_type} {list(t.shape)}"
            raise ModelFileError(f"{path}: tensor {name!r} is {found}, expected {typ} {list(shape)}")
