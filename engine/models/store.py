"""The local models in MODELS_DIR: where ``engbot pull`` puts them, what ``engbot models`` lists, and how MODEL_PATH
names one.

    MODELS_DIR/
      Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf       a pulled model (the repository's path)
      Qwen/Qwen2.5-0.5B-Instruct-GGUF/.engbot/qwen2.5-0.5b-instruct-q4_k_m.gguf.json   what was pulled: reference,
                                                                              commit, sha256, size, when
      Qwen/Qwen2.5-0.5B-Instruct-GGUF/.engbot/<file>.partial (+ .partial.json)   a download under way or broken off
      my-model.gguf                                                           a file put there by hand: listed too

A model goes by its short name (the file name without ``.gguf``, lower case: ``qwen2.5-0.5b-instruct-q4_k_m``),
by the reference it was pulled as (``Qwen/Qwen2.5-0.5B-Instruct-GGUF:q4_k_m``), or by its path.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ModelFileError
from engine.modelfile import ModelFileInfo, inspect_model
from engine.models.refs import RefError, parse_ref, quant_of, short_name, split_part

META_DIR = ".engbot"
MODEL_FILE_SUFFIXES = (".gguf", ".bin")


class ModelNotFound(LookupError):
    """A name that is no file and no model in MODELS_DIR, or names several; the message says which."""


@dataclass(frozen=True, slots=True)
class LocalModel:
    """A model file in MODELS_DIR (the first part, for a split GGUF)."""

    name: str  # short name
    path: Path
    file: str  # its path inside the repository ("" for a file put there by hand)
    repo: str = ""  # owner/repo it was pulled from
    ref: str = ""  # the reference it was pulled as
    size: int = 0  # all parts
    parts: int = 1
    info: ModelFileInfo | None = None  # when inspected
    error: str = ""  # why it cannot be read (when inspected)

    @property
    def quant(self) -> str:
        return (self.info.quant if self.info and self.info.quant else "") or quant_of(self.path.name)


@dataclass(frozen=True, slots=True)
class Partial:
    """A download under way or broken off: ``engbot pull <ref>`` resumes it."""

    path: Path
    ref: str
    size: int  # bytes so far
    total: int  # bytes expected


def looks_like_path(value: str) -> bool:
    """MODEL_PATH values that mean a file, never a model name."""
    return value.startswith(("/", "./", "../", "~")) or value.lower().endswith(MODEL_FILE_SUFFIXES) or "\\" in value


def _quote(file: str) -> str:
    return file.replace("%", "%25").replace("/", "%2F")


class ModelStore:
    """MODELS_DIR: the models in it, their metadata, the downloads in progress."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"<ModelStore {self.root}>"

    # ---- where things go ----

    def model_path(self, repo: str, file: str) -> Path:
        return self.root / repo / file

    def meta_path(self, repo: str, file: str) -> Path:
        return self.root / repo / META_DIR / f"{_quote(file)}.json"

    def partial_path(self, repo: str, file: str) -> Path:
        return self.root / repo / META_DIR / f"{_quote(file)}.partial"

    def read_meta(self, path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_meta(self, path: Path, data: dict[str, Any]) -> None:
        """Written whole or not at all (a temporary file renamed over it)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # ---- what is there ----

    def models(self, *, inspect: bool = True) -> list[LocalModel]:
        """Every model file in MODELS_DIR, by name. ``inspect`` reads each file's header (architecture, context,
        template); without it only names and sizes are known."""
        if not self.root.is_dir():
            return []
        found: list[LocalModel] = []
        for path in sorted(self.root.rglob("*")):
            rel = path.relative_to(self.root)
            if any(part.startswith(".") for part in rel.parts) or not path.name.lower().endswith(MODEL_FILE_SUFFIXES):
                continue
            split = split_part(path.name)
            if split is not None and split[1] != 1:
                continue  # a later part of a split model: listed with its first part
            if not path.is_file():
                continue
            model = self._model(path, rel, split, inspect)
            if model is not None:
                found.append(model)
        return found

    def _model(self, path: Path, rel: Path, split: tuple[str, int, int] | None, inspect: bool) -> LocalModel | None:
        parts = [path]
        if split is not None:
            stem, _, total = split
            parts = [path.with_name(f"{stem}-{i:05d}-of-{total:05d}.gguf") for i in range(1, total + 1)]
        size = sum(p.stat().st_size for p in parts if p.is_file())
        repo = file = ref = ""
        if len(rel.parts) > 2:  # owner/repo/file: perhaps pulled
            candidate_repo, candidate_file = "/".join(rel.parts[:2]), "/".join(rel.parts[2:])
            meta = self.read_meta(self.meta_path(candidate_repo, candidate_file))
            if meta is not None:
                repo, file, ref = candidate_repo, candidate_file, str(meta.get("ref", ""))
        info, error = None, ""
        if inspect:
            try:
                info = inspect_model(path)
            except ModelFileError as exc:
                if path.suffix.lower() == ".bin":
                    return None  # some other .bin file, not a model
                error = str(exc).replace(str(path), path.name)
            missing = [p.name for p in parts if not p.is_file()]
            if missing and not error:
                error = f"parts missing: {', '.join(missing)}"
        return LocalModel(short_name(path.name), path, file, repo, ref, size, len(parts), info, error)

    def partials(self) -> list[Partial]:
        """Downloads under way or broken off."""
        if not self.root.is_dir():
            return []
        out = []
        for path in sorted(self.root.rglob(f"{META_DIR}/*.partial")):
            meta = self.read_meta(path.with_name(path.name + ".json")) or {}
            out.append(Partial(path, str(meta.get("ref", "")), path.stat().st_size, int(meta.get("size", 0) or 0)))
        return out

    def find(self, text: str) -> list[LocalModel]:
        """The models ``text`` names: a short name, or a reference (``owner/repo[:quant or file]``)."""
        wanted = text.strip().lower()
        models = self.models(inspect=False)
        by_name = [m for m in models if m.name == wanted or m.name == short_name(wanted)]
        if by_name:
            return by_name
        try:
            ref = parse_ref(text)
        except RefError:
            return []
        in_repo = [m for m in models if m.repo.lower() == ref.repo.lower()]
        selector = ref.selector.lower()
        if not selector:
            return in_repo
        return [m for m in in_repo if selector in (m.quant.lower(), m.path.name.lower(), m.file.lower())]


def resolve_model(value: str, models_dir: Path) -> Path:
    """The file a model setting (MODEL_PATH) means: a path, a file inside MODELS_DIR, or a model there by name.
    Raises ``ModelNotFound``. A value that looks like a path stays one (the model file check then says what is
    wrong with it)."""
    path = Path(value).expanduser()
    if path.exists():
        return path.resolve()
    inside = models_dir / value
    if inside.is_file():
        return inside.resolve()
    if not value.startswith(("/", "./", "../", "~")):
        found = ModelStore(models_dir).find(value)
        if len(found) == 1:
            return found[0].path
        if found:
            names = ", ".join(m.ref or m.name for m in found)
            raise ModelNotFound(f"names {len(found)} models in MODELS_DIR ({models_dir}): {names}; use the file's "
                                "short name (engbot models lists them)")
    if looks_like_path(value):
        return path.resolve()
    raise ModelNotFound(f"is neither a file nor a model in MODELS_DIR ({models_dir}): `engbot models` lists the "
                        "models there, `engbot pull <owner/repo>:<quant>` downloads one")
