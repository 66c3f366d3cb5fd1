"""What a file is, from its first bytes, name and declared type; and the text of a text file. Pure functions.

A file's name and declared type are hints people and platforms get wrong (a ZIP archive renamed ``notes.txt``),
so the bytes decide: a known binary signature, a NUL byte or text that is not UTF-8 (or UTF-16 with its byte-order
mark) is not read as text.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

Kind = Literal["text", "pdf", "binary"]

# signatures of formats people attach that are not text (a prefix of the file's bytes -> what to call it)
SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a ZIP archive (or a Word, Excel or PowerPoint file)"), (b"PK\x05\x06", "an empty ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"), (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"), (b"Rar!", "a RAR archive"),
    (b"BZh", "a bzip2 archive"), (b"\xfd7zXZ\x00", "an xz archive"), (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"), (b"RIFF", "a media file (RIFF)"),
    (b"\x7fELF", "a program (ELF)"), (b"MZ", "a Windows program"), (b"\xd0\xcf\x11\xe0", "an old Office document"),
    (b"SQLite format 3\x00", "an SQLite database"), (b"\x00\x00\x00", "a binary file"), (b"OggS", "an Ogg file"),
    (b"ID3", "an MP3 file"), (b"fLaC", "a FLAC file"), (b"%!PS", "a PostScript file"),
)


@dataclass(frozen=True, slots=True)
class Sniffed:
    kind: Kind
    what: str = ""  # for a binary file: what it seems to be ("a ZIP archive")


def sniff(data: bytes, name: str, mimetype: str = "") -> Sniffed:
    """Text, PDF or binary, by the bytes first, then the name and declared type."""
    head = data[:1024]
    if b"%PDF-" in head:
        return Sniffed("pdf")
    suffix = PurePosixPath(name.lower()).suffix.lstrip(".")
    if suffix == "pdf" or mimetype == "application/pdf":
        return Sniffed("binary", "not a valid PDF (it lacks the %PDF header)")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return Sniffed("text")
    for signature, what in SIGNATURES:
        if head.startswith(signature):
            return Sniffed("binary", what)
    if b"\x00" in data[:65536]:
        return Sniffed("binary", "a binary file")
    return Sniffed("text")


class NotText(ValueError):
    """The bytes are not text the bot can read; the message says why, for the asker."""


def decode_text(data: bytes) -> str:
    """The text of a text file: UTF-8 (a byte-order mark allowed), or UTF-16 with its byte-order mark. Raises
    ``NotText`` for anything else (Latin-1, Windows code pages, binary data), with where it went wrong."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return _clean(data.decode("utf-16"))
        except UnicodeDecodeError:
            raise NotText("not valid UTF-16 text") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotText(f"not UTF-8 text (byte {exc.start + 1} is not valid UTF-8): save it as UTF-8") from None
    controls = sum(1 for c in text[:65536] if ord(c) < 32 and c not in "\t\n\r\f\v\x1b")
    if controls > max(8, len(text[:65536]) // 100):
        raise NotText("a binary file (it is full of control characters)")
    return _clean(text)


def _clean(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")


def size_text(size: int) -> str:
    """Bytes for people: 950 bytes, 12 KB, 3.4 MB."""
    if size < 1000:
        return f"{size} bytes"
    if size < 1_000_000:
        return f"{size / 1000:.0f} KB"
    return f"{size / 1_000_000:.1f} MB".replace(".0 MB", " MB")
