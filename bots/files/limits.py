"""The limits on files in a question (FILE_*), read once and checked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from engine.config import Env


@dataclass(frozen=True)
class FileLimits:
    """How much of a question's files is read. Each limit, when passed, is told to the asker in a note."""

    max_bytes: int = 8_000_000  # per file, checked before it is downloaded
    max_count: int = 5  # files per message; the rest are named and skipped
    max_pdf_pages: int = 50  # pages of a PDF read at most
    extract_timeout_s: float = 20.0  # to read the text out of one file (a PDF's worker process is killed then)
    pdf_memory_bytes: int = 768 * 2**20  # address space of the PDF worker process (not a setting)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> FileLimits:
        env = Env(environ)
        return cls(
            max_bytes=env.int("FILE_MAX_BYTES", cls.max_bytes, lo=0, hi=2**31),
            max_count=env.int("FILE_MAX_COUNT", cls.max_count, lo=0, hi=100),
            max_pdf_pages=env.int("FILE_MAX_PDF_PAGES", cls.max_pdf_pages, lo=1, hi=100_000),
            extract_timeout_s=env.float("FILE_EXTRACT_TIMEOUT_S", cls.extract_timeout_s, lo=0.0, hi=3600.0,
                                        lo_open=True),
        )
