"""Reading a question's files within the limits, and putting their text into the question within the context.

Every file ends up read, cut with a note ("read the first 30 of 120 pages"), or skipped with a one-line note that
says why (too big, not text, encrypted, damaged, too slow to read). Nothing about a file raises to the caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from bots.files.limits import FileLimits
from bots.files.pdf import PdfError, read_pdf
from bots.files.sniff import NotText, decode_text, size_text, sniff
from bots.tokens import cut_to_bytes

log = logging.getLogger("engbot.files")

DEFAULT_QUESTION = "Summarize the attached file."
DEFAULT_QUESTION_MANY = "Summarize the attached files."
NOT_FITTING = "the rest does not fit the model's context"


class FetchError(Exception):
    """A file could not be downloaded; the message says why, for the asker."""


@dataclass(frozen=True, slots=True)
class Incoming:
    """A file attached to a question, before it is downloaded. ``fetch(max_bytes)`` downloads it, raising
    ``FetchError`` (with a reason for the asker) when it cannot, or when it is larger than ``max_bytes``."""

    name: str
    size: int | None  # as the platform declares it; None when unknown
    mimetype: str
    fetch: Callable[[int], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class FileText:
    """A file that was read: its text in parts (one for a text file, one a page for a PDF)."""

    name: str
    kind: Literal["text", "pdf"]
    parts: tuple[str, ...]
    pages: int = 0  # a PDF's pages in all (it may have more than were read)


@dataclass(frozen=True, slots=True)
class Skipped:
    name: str
    reason: str  # "it is encrypted (password protected)"


Read = FileText | Skipped


async def read_files(files: Sequence[Incoming], limits: FileLimits) -> list[Read]:
    """Download and read each file within ``limits``, one after the other (at most one PDF worker at a time)."""
    out: list[Read] = []
    for index, incoming in enumerate(files):
        if index >= limits.max_count:
            out.append(Skipped(incoming.name, f"only the first {limits.max_count} files of a message are read"))
            continue
        out.append(await read_file(incoming, limits))
    return out


async def read_file(incoming: Incoming, limits: FileLimits) -> Read:
    name = incoming.name or "file"
    too_big = f"files over {size_text(limits.max_bytes)} are not read"
    if incoming.size is not None and incoming.size > limits.max_bytes:
        return Skipped(name, f"it is {size_text(incoming.size)}: {too_big}")
    try:
        data = await incoming.fetch(limits.max_bytes)
    except FetchError as exc:
        return Skipped(name, str(exc))
    except Exception as exc:
        log.warning("downloading a file failed: %s: %s", type(exc).__name__, exc)
        return Skipped(name, "it could not be downloaded")
    if len(data) > limits.max_bytes:
        return Skipped(name, f"it is larger than {size_text(limits.max_bytes)}: {too_big}")
    kind = sniff(data, name, incoming.mimetype)
    if kind.kind == "binary":
        return Skipped(name, f"it is {kind.what}: only text files and PDFs are read")
    if kind.kind == "pdf":
        try:
            pdf = await read_pdf(data, max_pages=limits.max_pdf_pages, timeout_s=limits.extract_timeout_s,
                                 memory_bytes=limits.pdf_memory_bytes)
        except PdfError as exc:
            return Skipped(name, str(exc))
        if not any(t.strip() for t in pdf.texts):
            return Skipped(name, "it has no text to read (a scan, or images only)")
        return FileText(name, "pdf", pdf.texts, pdf.pages)
    try:
        text = await asyncio.wait_for(asyncio.to_thread(decode_text, data), limits.extract_timeout_s)
    except NotText as exc:
        return Skipped(name, f"it is {exc}")
    except TimeoutError:
        return Skipped(name, f"it could not be read within {limits.extract_timeout_s:g} s")
    if not text.strip():
        return Skipped(name, "it is empty")
    return FileText(name, "text", (text,))


def compose(question: str, read: Sequence[Read], budget_bytes: int) -> tuple[str, tuple[str, ...]]:
    """The question with the files' text before it, within ``budget_bytes`` (shared fairly: small files whole,
    the rest cut to what is left), and a note for every file cut or skipped, in the files' order."""
    texts = [r for r in read if isinstance(r, FileText)]
    shares = dict(zip(map(id, texts), _shares([len(_full(t).encode()) for t in texts], max(0, budget_bytes)),
                      strict=True))
    blocks: list[str] = []
    notes: list[str] = []
    for item in read:
        if isinstance(item, Skipped):
            notes.append(f"{item.name}: skipped, {item.reason}")
            continue
        block, note = _fit(item, shares[id(item)])
        if block:
            blocks.append(block)
        if note:
            notes.append(f"{item.name}: {note}")
    if not question.strip():
        question = DEFAULT_QUESTION if len(texts) == 1 else DEFAULT_QUESTION_MANY
    return "\n\n".join([*blocks, question]), tuple(notes)


def _shares(sizes: list[int], budget: int) -> list[int]:
    shares = [0] * len(sizes)
    left = budget
    for n, i in enumerate(sorted(range(len(sizes)), key=lambda i: sizes[i])):
        shares[i] = min(sizes[i], left // (len(sizes) - n))
        left -= shares[i]
    return shares


def _header(item: FileText, last: int = 0) -> str:
    if item.kind == "pdf" and last:
        pages = f"page 1 of {item.pages}" if last == 1 else f"pages 1-{last} of {item.pages}"
        return f"--- {item.name} ({pages}) ---\n"
    return f"--- {item.name} ---\n"


def _footer(item: FileText) -> str:
    return f"\n--- end of {item.name} ---"


def _full(item: FileText) -> str:
    return _header(item, len(item.parts)) + "\n\n".join(p.strip("\n") for p in item.parts) + _footer(item)


def _fit(item: FileText, budget: int) -> tuple[str, str]:
    """The file's block within ``budget`` bytes, and its note ("" when read whole)."""
    frame = len((_header(item, len(item.parts)) + _footer(item)).encode())
    room = budget - frame
    if item.kind == "pdf":
        return _fit_pdf(item, room)
    text = item.parts[0].strip("\n")
    if len(text.encode()) <= room:
        return _header(item) + text + _footer(item), ""
    if room < 200:
        return "", f"skipped, {NOT_FITTING}"
    lines = text.splitlines(keepends=True)
    kept = cut_to_bytes(text, room)
    whole = kept.count("\n")
    if whole >= 1:
        kept = "".join(lines[:whole])
        note = f"read the first {whole:,} of {len(lines):,} lines ({NOT_FITTING})"
    else:
        total = len(text)
        note = f"read the first {len(kept):,} of {total:,} characters ({NOT_FITTING})"
    return _header(item) + kept.rstrip("\n") + _footer(item), note


def _fit_pdf(item: FileText, room: int) -> tuple[str, str]:
    pages, used = item.pages, 0
    kept: list[str] = []
    for text in (p.strip("\n") for p in item.parts):
        size = len(text.encode()) + (2 if kept else 0)  # (the blank line between pages)
        if used + size > room:
            break
        kept.append(text)
        used += size
    if not kept:
        if room < 200:
            return "", f"skipped, {NOT_FITTING}"
        part = cut_to_bytes(item.parts[0], room)
        return (_header(item, 1) + part + _footer(item),
                f"read part of page 1 of {pages} ({NOT_FITTING})")
    block = _header(item, len(kept)) + "\n\n".join(kept) + _footer(item)
    if len(kept) == pages:
        return block, ""
    why = f" ({NOT_FITTING})" if len(kept) < len(item.parts) else ""
    return block, f"read the first {len(kept)} of {pages} pages{why}"
