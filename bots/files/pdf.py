"""A PDF's text, read by pypdf in a worker process with limits (``pdf_worker.py``), never in the bot's process.

Why a process and not a thread with pypdf's own limits: pypdf caps each stream it unpacks (75 MB by default), but
not the number of streams, pages or operators, and a parse that takes minutes cannot be stopped from another
thread. A process can be given an address-space and CPU limit and be killed after a wall-clock limit, and it
costs about a tenth of a second to start, which is nothing next to answering the question. The bot's memory and
event loop are never at stake, whatever the file holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("engbot.files")

MAX_CHARS = 2_000_000  # text taken from one PDF at most; the model's context holds far less


@dataclass(frozen=True, slots=True)
class PdfText:
    pages: int  # in the file
    texts: tuple[str, ...]  # of the pages read, in order


def _worker_environ() -> dict[str, str]:
    """The worker's environment: where Python finds this package, and nothing else (it reads untrusted files,
    so it gets none of the bot's tokens)."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}


class PdfError(Exception):
    """The PDF could not be read; the message says why, for the asker."""


async def read_pdf(data: bytes, *, max_pages: int, timeout_s: float, memory_bytes: int) -> PdfText:
    """The text of up to ``max_pages`` pages. Raises ``PdfError`` for an encrypted, malformed or too big file, or
    one that takes longer than ``timeout_s`` (the worker is killed then)."""
    cpu = max(1, math.ceil(timeout_s))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bots.files.pdf_worker", str(max_pages), str(MAX_CHARS), str(memory_bytes), str(cpu),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=_worker_environ())
    try:
        out, err = await asyncio.wait_for(process.communicate(data), timeout_s)
    except TimeoutError:
        raise PdfError(f"it could not be read within {timeout_s:g} s") from None
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    try:
        result = json.loads(out) if out else None
    except ValueError:
        result = None
    if not isinstance(result, dict):
        # killed by its limits (SIGKILL for CPU time, a MemoryError that could not even be reported)
        log.info("the PDF worker ended with status %s without an answer: %s", process.returncode,
                 err.decode(errors="replace")[-300:].strip())
        raise PdfError("it takes more memory or time to read than a file may")
    error = result.get("error")
    if error == "encrypted":
        raise PdfError("it is encrypted (password protected)")
    if error == "too_big":
        raise PdfError("it unpacks to more memory than a file may take")
    if error is not None:
        log.info("pypdf could not read a PDF: %s", result.get("detail"))
        raise PdfError("it could not be read as a PDF (damaged or malformed)")
    texts = result.get("texts")
    pages = result.get("pages")
    if not isinstance(texts, list) or not isinstance(pages, int):
        raise PdfError("it could not be read as a PDF")
    return PdfText(pages, tuple(str(t) for t in texts))
