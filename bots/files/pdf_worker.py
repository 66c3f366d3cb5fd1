"""The PDF worker process: reads a PDF from stdin with pypdf, writes its pages' text to stdout as JSON.

    python -m bots.files.pdf_worker MAX_PAGES MAX_CHARS MEMORY_BYTES CPU_SECONDS < file.pdf

It runs in a process of its own because a PDF can be a bomb: a few kilobytes that unpack to gigabytes, a page
tree of millions of pages, content streams that take minutes to parse. Before it touches the file it limits
its own address space (``RLIMIT_AS``) and CPU time (``RLIMIT_CPU``); the parent (``pdf.py``) kills it after its
wall-clock limit. Whatever happens in here, the bot's process keeps its memory and its event loop.

Its answer is one JSON object: ``{"pages": total, "texts": [...]}`` for the pages read, or
``{"error": "encrypted" | "malformed" | "too_big", "detail": "..."}``.
"""

from __future__ import annotations

import json
import resource
import sys
from typing import Any


def limit_resources(memory_bytes: int, cpu_seconds: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))


def extract(data: bytes, max_pages: int, max_chars: int) -> dict[str, Any]:
    import io

    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            try:
                if not reader.decrypt(""):  # many PDFs are "encrypted" with an empty password: restrictions only
                    return {"error": "encrypted", "detail": "it needs a password"}
            except (DependencyError, NotImplementedError) as exc:
                return {"error": "encrypted", "detail": str(exc)}
        total = len(reader.pages)
        texts: list[str] = []
        size = 0
        for page in reader.pages[:max_pages]:
            text = page.extract_text() or ""
            texts.append(text[:max_chars - size])
            size += len(texts[-1])
            if size >= max_chars:
                break
        return {"pages": total, "texts": texts}
    except FileNotDecryptedError as exc:
        return {"error": "encrypted", "detail": str(exc)}
    except MemoryError:
        return {"error": "too_big", "detail": "it unpacks to more memory than a file may take"}
    except Exception as exc:  # (a process of its own: whatever pypdf trips over, the file is not readable)
        return {"error": "malformed", "detail": f"{type(exc).__name__}: {exc}"[:300]}


def main(argv: list[str]) -> int:
    max_pages, max_chars, memory_bytes, cpu_seconds = (int(a) for a in argv[:4])
    limit_resources(memory_bytes, cpu_seconds)
    data = sys.stdin.buffer.read()
    try:
        result = extract(data, max_pages, max_chars)
    except MemoryError:
        result = {"error": "too_big", "detail": "it unpacks to more memory than a file may take"}
    sys.stdout.write(json.dumps(result))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
