"""What a model file is, read from its bytes without loading a model library.

GGUF files are parsed to the end of their tensor table, so an empty or truncated file is caught at start-up
with a clear message instead of a crash inside a replica. Legacy GGML files are handled by ``engine.ggml``.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.errors import ModelFileError

GGUF_MAGIC = b"GGUF"
# legacy formats, as the little-endian u32 magic reads on disk
GGML_MAGICS = {b"lmgg": "ggml", b"fmgg": "ggmf", b"tjgg": "ggjt"}

# ggml tensor types: id -> (elements per block, bytes per block)
GGML_TYPE_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82),
    23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2),
    34: (256, 54), 35: (256, 66), 39: (32, 17),
}
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# llama.cpp's llama_ftype (general.file_type): how the weights are quantized
FILE_TYPES = dict(enumerate((
    "F32", "F16", "Q4_0", "Q4_1", "", "", "", "Q8_0", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S",
    "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ2_XXS", "IQ2_XS", "Q2_K_S", "IQ3_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
    "IQ3_S", "IQ3_M", "IQ2_S", "IQ2_M", "IQ4_XS", "IQ1_M", "BF16", "", "", "", "TQ1_0", "TQ2_0", "MXFP4_MOE",
)))


@dataclass(frozen=True, slots=True)
class ModelFileInfo:
    """The facts about a model file that start-up and ``engbot doctor`` need."""

    path: Path
    format: Literal["gguf", "ggml"]
    size: int
    architecture: str  # "" when the file does not say
    context_length: int  # trained context, 0 when unknown
    chat_template: str | None
    name: str = ""
    tensors: int = 0
    detail: str = ""
    quant: str = ""  # GGUF general.file_type in llama.cpp's words ("Q4_K_M"), "" when the file does not say


def backend_for(fmt: str) -> str:
    """The backend that reads a file format."""
    return "llama_cpp" if fmt == "gguf" else "ctransformers"


def inspect_model(path: Path) -> ModelFileInfo:
    """Identify and check a model file. Raises ``ModelFileError`` saying what is wrong with it."""
    if not path.exists():
        raise ModelFileError(f"{path} does not exist")
    if path.is_dir():
        raise ModelFileError(f"{path} is a directory; give the path of a .gguf or GGML .bin file")
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelFileError(f"{path} cannot be read: {exc.strerror}") from None
    if size == 0:
        raise ModelFileError(f"{path} is empty")
    if magic == GGUF_MAGIC:
        return _inspect_gguf(path, size)
    if magic in GGML_MAGICS:
        return _inspect_ggml(path, size)
    raise ModelFileError(
        f"{path} is neither a GGUF nor a legacy GGML model file (it starts with {magic!r})"
    )


class _Reader:
    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise ModelFileError(f"{self.path} is truncated: its header ends at byte {len(self.buf)}")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        if self.pos + n > len(self.buf):
            raise ModelFileError(f"{self.path} is truncated: its header ends at byte {len(self.buf)}")
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, keep: bool) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type, count = self.unpack("<I"), self.unpack("<Q")
            if item_type in _SCALARS and not keep:  # skip fixed-size arrays in one step
                self.pos += struct.calcsize(_SCALARS[item_type]) * count
                return None
            items = [self.value(item_type, keep) for _ in range(count)]
            return items if keep else None
        if vtype not in _SCALARS:
            raise ModelFileError(f"{self.path}: unknown GGUF value type {vtype}; the file may be damaged")
        return self.unpack(_SCALARS[vtype])


def _inspect_gguf(path: Path, size: int) -> ModelFileInfo:
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        r = _Reader(buf, path)
        r.pos = 4
        version = r.unpack("<I")
        if version not in (2, 3):
            raise ModelFileError(f"{path}: GGUF version {version} is not supported (2 or 3)")
        n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string()
            vtype = r.unpack("<I")
            meta[key] = r.value(vtype, keep=not key.startswith("tokenizer.ggml."))
        data_end, last = 0, ""
        if n_tensors == 0:
            raise ModelFileError(f"{path} holds no tensors: it is not a usable model")
        for _ in range(n_tensors):
            name = r.string()
            dims = [r.unpack("<Q") for _ in range(r.unpack("<I"))]
            ttype, offset = r.unpack("<I"), r.unpack("<Q")
            elements = 1
            for d in dims:
                elements *= d
            block, block_bytes = GGML_TYPE_SIZES.get(ttype, (1, 0))
            nbytes = elements // block * block_bytes
            if offset + nbytes > data_end:
                data_end, last = offset + nbytes, name
        align = int(meta.get("general.alignment", 32))
        data_start = (r.pos + align - 1) // align * align
    if data_start + data_end > size:
        raise ModelFileError(
            f"{path} is truncated: tensor {last!r} ends at byte {data_start + data_end} "
            f"but the file has {size} bytes"
        )
    arch = str(meta.get("general.architecture", ""))
    template = meta.get("tokenizer.chat_template")
    return ModelFileInfo(
        path=path,
        format="gguf",
        size=size,
        architecture=arch,
        context_length=int(meta.get(f"{arch}.context_length", 0) or 0),
        chat_template=template if isinstance(template, str) else None,
        name=str(meta.get("general.name", "")),
        tensors=n_tensors,
        detail=f"GGUF v{version}",
        quant=FILE_TYPES.get(int(meta["general.file_type"]), "") if "general.file_type" in meta else "",
    )


def _inspect_ggml(path: Path, size: int) -> ModelFileInfo:
    from engine.ggml import read_ggml_header

    info = read_ggml_header(path)
    hp = info.hparams
    return ModelFileInfo(
        path=path,
        format="ggml",
        size=size,
        architecture="" if info.architecture == "unknown" else info.architecture,
        context_length=hp.n_ctx if hp else 0,
        chat_template=None,
        tensors=len(info.tensors),
        detail=info.note or f"legacy {info.container}" + (f", ftype {hp.ftype}" if hp else ""),
    )
