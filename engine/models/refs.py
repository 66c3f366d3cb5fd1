"""Model references and names, pure: what ``engbot pull`` takes, which file of a repository it means, and the
short name a pulled file goes by.

    parse_ref("Qwen/Qwen2.5-0.5B-Instruct-GGUF:q4_k_m")   -> ModelRef(repo=..., selector="q4_k_m")
    choose(files, "q4_k_m")                                -> Choice(files=(<the one file>,))
    short_name("qwen2.5-0.5b-instruct-q4_k_m.gguf")        -> "qwen2.5-0.5b-instruct-q4_k_m"

A reference is ``owner/repo[:selector]``, the selector being a quantization (``q4_k_m``, ``Q8_0``, ``iq4_xs``,
``f16``) or a file name in the repository. Ollama's spelling (``hf.co/owner/repo:Q4_K_M``) and a repository's URL
work too. Several models at once (``MODELS=fast=...,code=...``) name each model with the same references.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

# Hugging Face repository ids: owner/name, letters, digits, "-", "_", "." (not first), at most 96 characters each
_PART = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}"
REPO_RE = re.compile(rf"^{_PART}/{_PART}$")
HUB_PREFIXES = ("https://huggingface.co/", "http://huggingface.co/", "https://hf.co/", "huggingface.co/", "hf.co/")
# a quantization tag among a file name's "-" or "." separated words: Q4_K_M, q8_0, IQ4_XS, F16, BF16, Q4_K_XL, ...
QUANT_RE = re.compile(r"^(?:i?q\d(?:_[a-z0-9]+)*|b?f16|f32|fp16|mxfp4(?:_moe)?|tq\d_\d)$", re.IGNORECASE)
SPLIT_RE = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<total>\d{5})\.gguf$", re.IGNORECASE)
MODEL_SUFFIXES = (".gguf",)
DEFAULT_QUANT = "q4_k_m"  # what Ollama and LM Studio take when a repository holds several quantizations


class RefError(ValueError):
    """A reference that names nothing usable; the message says why and what there is instead."""


@dataclass(frozen=True, slots=True)
class ModelRef:
    """``owner/repo`` and what to take from it ("" = the only model there, or its Q4_K_M)."""

    repo: str
    selector: str = ""

    def __str__(self) -> str:
        return f"{self.repo}:{self.selector}" if self.selector else self.repo


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """A file of a repository as the hub lists it: its path, size and (for LFS files) sha256."""

    path: str
    size: int | None = None
    sha256: str | None = None

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name


@dataclass(frozen=True, slots=True)
class Choice:
    """The files that make one model (several for a split GGUF, in part order) and its quantization."""

    files: tuple[RemoteFile, ...]
    quant: str

    @property
    def first(self) -> RemoteFile:
        return self.files[0]

    @property
    def size(self) -> int:
        return sum(f.size or 0 for f in self.files)


def parse_ref(text: str) -> ModelRef:
    """``owner/repo[:selector]`` (also ``hf.co/owner/repo:Q4_K_M`` and repository URLs). Raises ``RefError``."""
    value = text.strip()
    for prefix in HUB_PREFIXES:
        if value.lower().startswith(prefix):
            value = value[len(prefix):]
            break
    repo, _, selector = value.partition(":")
    parts = repo.strip().strip("/").split("/")
    if len(parts) > 2 and parts[2] in ("blob", "resolve", "tree"):  # a URL of the repository, or of one file
        if parts[2] != "tree" and len(parts) > 4 and not selector:
            selector = "/".join(parts[4:])
        parts = parts[:2]
    repo = "/".join(parts)
    if not REPO_RE.match(repo) or ".." in repo or repo.endswith((".", "-")):
        raise RefError(f"{text.strip()!r} is not a model reference: expected owner/repo[:quant or file], e.g. "
                       "Qwen/Qwen2.5-0.5B-Instruct-GGUF:q4_k_m")
    return ModelRef(repo, selector.strip())


def quant_of(filename: str) -> str:
    """The quantization tag in a file name, upper case ("Q4_K_M"), or "" when it has none."""
    stem = PurePosixPath(filename).name
    split = SPLIT_RE.match(stem)
    stem = split.group("stem") if split else stem.rsplit(".", 1)[0]
    for word in reversed(re.split(r"[-.]", stem)):
        if QUANT_RE.match(word):
            return word.upper()
    return ""


def short_name(filename: str) -> str:
    """What a model file goes by in ``engbot models`` and MODEL_PATH: its name without ``.gguf`` or a split
    suffix, lower case."""
    name = PurePosixPath(filename).name
    split = SPLIT_RE.match(name)
    if split:
        return split.group("stem").lower()
    return name.rsplit(".", 1)[0].lower() if name.lower().endswith(MODEL_SUFFIXES) else name.lower()


def split_part(filename: str) -> tuple[str, int, int] | None:
    """(stem, part, total) of a split GGUF file (``name-00001-of-00003.gguf``), None for a whole file."""
    found = SPLIT_RE.match(PurePosixPath(filename).name)
    if not found:
        return None
    return found.group("stem"), int(found.group("part")), int(found.group("total"))


def models_in(files: list[RemoteFile]) -> list[Choice]:
    """The GGUF models among a repository's files: one per whole file, one per complete set of split parts.
    Vision projectors (``mmproj-*``) are not models of their own."""
    whole: list[Choice] = []
    splits: dict[tuple[str, int], dict[int, RemoteFile]] = {}
    for f in files:
        if not f.path.lower().endswith(MODEL_SUFFIXES) or f.name.lower().startswith("mmproj"):
            continue
        part = split_part(f.path)
        if part is None:
            whole.append(Choice((f,), quant_of(f.path)))
        else:
            stem, index, total = part
            folder = str(PurePosixPath(f.path).parent)
            splits.setdefault((f"{folder}/{stem}", total), {})[index] = f
    for (_, total), parts in splits.items():
        if sorted(parts) == list(range(1, total + 1)):
            ordered = tuple(parts[i] for i in range(1, total + 1))
            whole.append(Choice(ordered, quant_of(ordered[0].path)))
    return sorted(whole, key=lambda c: c.first.path)


def choose(repo: str, files: list[RemoteFile], selector: str) -> Choice:
    """The model ``selector`` names among ``files`` of ``repo`` (see ``parse_ref``). Raises ``RefError`` listing
    what the repository holds when it names none, or several."""
    models = models_in(files)
    if not models:
        listed = ", ".join(sorted(f.path for f in files)[:20]) or "no files"
        raise RefError(f"{repo} holds no GGUF model file (it has: {listed}). engbot runs GGUF models: look for a "
                       f"repository of GGUF files, often named like {repo.split('/')[-1]}-GGUF")
    if selector.lower().endswith(MODEL_SUFFIXES) or "/" in selector:
        wanted = selector.lower()
        found = [m for m in models if any(f.path.lower() == wanted for f in m.files)] or \
                [m for m in models if any(f.name.lower() == wanted.rsplit("/", 1)[-1] for f in m.files)]
    elif selector:
        found = [m for m in models if m.quant.lower() == selector.lower()]
    elif len(models) == 1:
        found = models
    else:
        found = [m for m in models if m.quant.lower() == DEFAULT_QUANT]
        if len(found) != 1:
            raise RefError(f"{repo} holds {len(models)} models: name one, e.g. {repo}:{_example(models)}\n"
                           + listing(models))
    if len(found) == 1:
        return found[0]
    if not found:
        what = f"no file {selector!r}" if selector.lower().endswith(MODEL_SUFFIXES) else \
            f"no model quantized as {selector!r}"
        raise RefError(f"{repo} has {what}. Its GGUF models:\n" + listing(models))
    raise RefError(f"{repo} has {len(found)} models quantized as {selector!r}: name the file, e.g. "
                   f"{repo}:{found[0].first.path}\n" + listing(found))


def _example(models: list[Choice]) -> str:
    return next((m.quant.lower() for m in models if m.quant), models[0].first.path)


def listing(models: list[Choice]) -> str:
    """One line per model: file (and parts), quantization, size."""
    lines = []
    for m in models:
        parts = f" (+{len(m.files) - 1} more parts)" if len(m.files) > 1 else ""
        size = f"{m.size / 2**20:,.1f} MiB" if m.size else "size unknown"
        lines.append(f"  {m.first.path}{parts}  {m.quant or '-'}  {size}")
    return "\n".join(lines)
