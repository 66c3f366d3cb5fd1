"""PDF files the tests make themselves: pages of text (a real text layer, Helvetica), an encrypted one, a damaged
one and a bomb (a few megabytes that unpack to gigabytes of content-stream operators).

    data = text_pdf(["Page one says hello.", "Page two."])
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Sequence


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _content(text: str) -> bytes:
    lines = [f"({_escape(line)}) Tj T*" for line in text.splitlines() or [""]]
    return ("BT /F1 11 Tf 14 TL 72 760 Td\n" + "\n".join(lines) + "\nET").encode("latin-1")


def build_pdf(contents: Sequence[bytes], *, compressed: bool = False) -> bytes:
    """A PDF with one page per content stream (raw operators, or with ``compressed`` already deflated), the font
    F1 being Helvetica."""
    objects: list[bytes] = []
    n = len(contents)
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode())
    font = 3 + 2 * n
    for i, stream in enumerate(contents):
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
                       f"/Resources << /Font << /F1 {font} 0 R >> >> >>".encode())
        data = stream
        flate = b" /Filter /FlateDecode" if compressed else b""
        objects.append(b"<< /Length " + str(len(data)).encode() + flate + b" >>\nstream\n" + data + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def text_pdf(pages: Sequence[str]) -> bytes:
    """A PDF whose pages hold these texts (ASCII, one line of the PDF per line of text)."""
    return build_pdf([_content(text) for text in pages])


def encrypted_pdf(pages: Sequence[str], password: str = "secret", algorithm: str = "RC4-128") -> bytes:
    """The same, encrypted with a user password (RC4 by default; ``AES-256`` needs pypdf's crypto extra). With the
    password "", anyone may open it: only its permissions are restricted, as with many PDFs people share."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(text_pdf(pages))))
    writer.encrypt(user_password=password, owner_password=password + "-owner", algorithm=algorithm)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def damaged_pdf() -> bytes:
    """A file that starts like a PDF and then is nothing of the kind."""
    return b"%PDF-1.7\n" + bytes(range(256)) * 40 + b"\n1 0 obj << /Type /Catalog /Pages 9 0 R"


def bomb_pdf(pages: int = 40, unpacked_mb: int = 60) -> bytes:
    """A PDF bomb: ``pages`` pages whose compressed content streams each unpack to ``unpacked_mb`` MB of text
    operators (about a thousand times their size)."""
    operator = b"BT /F1 1 Tf (AAAAAAAA) Tj ET\n"
    packed = zlib.compress(operator * (unpacked_mb * 1_000_000 // len(operator)), 9)
    return build_pdf([packed] * pages, compressed=True)
