"""Files in a question (``bots.files``), without a platform or a process: what a file is, its text, the limits,
and how files share the context with a note for each one cut or skipped."""

from __future__ import annotations

import codecs
import io
import zipfile

import pytest

from bots.files.limits import FileLimits
from bots.files.read import DEFAULT_QUESTION, FetchError, FileText, Incoming, Skipped, compose, read_files
from bots.files.sniff import NotText, decode_text, size_text, sniff
from engine.errors import ConfigError


def zip_bytes() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("inner.txt", "hello")
    return out.getvalue()


def test_the_bytes_decide_what_a_file_is_not_its_name() -> None:
    assert sniff(b"name,age\nAnn,3\n", "people.csv", "text/csv").kind == "text"
    assert sniff(b"%PDF-1.4\n...", "report.bin").kind == "pdf"
    renamed = sniff(zip_bytes(), "notes.txt", "text/plain")
    assert renamed.kind == "binary" and "ZIP archive" in renamed.what
    assert sniff(b"\x89PNG\r\n\x1a\n....", "x.txt").what == "a PNG image"
    assert sniff(b"abc\x00def", "data.log").kind == "binary"
    assert "not a valid PDF" in sniff(b"hello", "paper.pdf").what


def test_text_must_be_utf8_or_utf16_with_its_mark() -> None:
    assert decode_text("héllo\r\nwörld".encode()) == "héllo\nwörld"
    assert decode_text(codecs.BOM_UTF8 + b"x") == "x"
    assert decode_text(codecs.BOM_UTF16_LE + "hi ☃".encode("utf-16-le")) == "hi ☃"
    with pytest.raises(NotText, match="not UTF-8 text \\(byte 2 is not valid UTF-8\\)"):
        decode_text("é".encode("latin-1").join([b"a", b"b"]))
    with pytest.raises(NotText, match="control characters"):
        decode_text(bytes(range(1, 32)) * 50)


def test_sizes_read_as_people_write_them() -> None:
    assert (size_text(950), size_text(12_345), size_text(8_000_000), size_text(12_300_000)) == (
        "950 bytes", "12 KB", "8 MB", "12.3 MB")


def test_file_limits_are_settings_checked_at_start() -> None:
    limits = FileLimits.from_environ({"FILE_MAX_BYTES": "1000", "FILE_MAX_COUNT": "2", "FILE_MAX_PDF_PAGES": "3",
                                      "FILE_EXTRACT_TIMEOUT_S": "1.5"})
    assert (limits.max_bytes, limits.max_count, limits.max_pdf_pages, limits.extract_timeout_s) == (1000, 2, 3, 1.5)
    with pytest.raises(ConfigError, match="FILE_MAX_PDF_PAGES"):
        FileLimits.from_environ({"FILE_MAX_PDF_PAGES": "0"})


def incoming(name: str, data: bytes, size: int | None = None, fetched: list[str] | None = None) -> Incoming:
    async def fetch(max_bytes: int) -> bytes:
        if fetched is not None:
            fetched.append(name)
        if len(data) > max_bytes:
            raise FetchError("it is larger than the limit")
        return data

    return Incoming(name, len(data) if size is None else size, "", fetch)


async def test_each_file_is_read_or_skipped_with_its_reason_and_too_big_ones_are_not_downloaded() -> None:
    fetched: list[str] = []
    limits = FileLimits(max_bytes=1000, max_count=4)
    files = [incoming("a.txt", b"alpha", fetched=fetched), incoming("big.log", b"x" * 5000, fetched=fetched),
             incoming("z.txt", zip_bytes(), fetched=fetched),
             incoming("bad.txt", b"caf\xe9", fetched=fetched), incoming("fifth.txt", b"e", fetched=fetched)]
    read = await read_files(files, limits)
    assert read[0] == FileText("a.txt", "text", ("alpha",))
    assert isinstance(read[1], Skipped) and read[1].reason == "it is 5 KB: files over 1 KB are not read"
    assert isinstance(read[2], Skipped) and "ZIP archive" in read[2].reason
    assert isinstance(read[3], Skipped) and "not UTF-8" in read[3].reason
    assert read[4] == Skipped("fifth.txt", "only the first 4 files of a message are read")
    assert fetched == ["a.txt", "z.txt", "bad.txt"]  # the size was checked before any download


async def test_a_download_that_fails_is_a_note_not_an_error() -> None:
    async def fetch(max_bytes: int) -> bytes:
        raise FetchError("the bot may not read files here (its token lacks files:read)")

    read = await read_files([Incoming("x.txt", 10, "text/plain", fetch)], FileLimits())
    assert read == [Skipped("x.txt", "the bot may not read files here (its token lacks files:read)")]


def test_files_come_before_the_question_and_fit_the_budget_with_notes() -> None:
    small = FileText("a.txt", "text", ("short file",))
    long_text = "\n".join(f"line {i} of the log" for i in range(1000))
    big = FileText("b.log", "text", (long_text,))
    text, notes = compose("What failed?", [small, big, Skipped("c.zip", "it is a ZIP archive")], 4000)
    assert text.startswith("--- a.txt ---\nshort file\n--- end of a.txt ---\n\n--- b.log ---\nline 0 of the log")
    assert text.endswith("--- end of b.log ---\n\nWhat failed?")
    assert len(text.encode()) <= 4000 + len("\n\nWhat failed?")
    assert notes[0].startswith("b.log: read the first ") and notes[0].endswith(
        " of 1,000 lines (the rest does not fit the model's context)")
    assert notes[1] == "c.zip: skipped, it is a ZIP archive"


def test_a_pdf_is_cut_at_whole_pages_and_the_page_limit_is_noted() -> None:
    pages = tuple(f"Page {i} " + "text " * 100 for i in range(1, 31))
    read = [FileText("r.pdf", "pdf", pages, pages=120)]
    text, notes = compose("", read, 10_000_000)
    assert notes == ("r.pdf: read the first 30 of 120 pages",) and "(pages 1-30 of 120)" in text
    assert text.endswith(DEFAULT_QUESTION)
    text, notes = compose("Q?", read, 3000)
    assert notes[0].startswith("r.pdf: read the first ") and "of 120 pages (the rest does not fit" in notes[0]
    assert "Page 1 " in text and "Page 30 " not in text
    whole = [FileText("w.pdf", "pdf", ("one", "two"), pages=2)]
    assert compose("Q?", whole, 10_000)[1] == ()
