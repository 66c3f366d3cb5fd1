"""PDFs read by pypdf in its worker process (``bots/files/pdf.py``): text pages, the page limit, and files that
must get a notice instead of an answer or a hang: encrypted, damaged, a bomb. The PDFs are made by the tests
(``testkit/pdf.py``)."""

from __future__ import annotations

import resource

import pytest

from bots.files.limits import FileLimits
from bots.files.pdf import PdfError, read_pdf
from bots.files.read import FileText, Incoming, Skipped, read_files
from testkit.pdf import bomb_pdf, damaged_pdf, encrypted_pdf, text_pdf

pytestmark = pytest.mark.timeout(120)
MEMORY = FileLimits().pdf_memory_bytes


async def test_a_pdfs_text_layer_is_read_page_by_page() -> None:
    pdf = await read_pdf(text_pdf(["The launch is on Tuesday (at 9).", "Budget: 12,000 EUR"]), max_pages=10,
                         timeout_s=30, memory_bytes=MEMORY)
    assert pdf.pages == 2
    assert "The launch is on Tuesday (at 9)." in pdf.texts[0] and "Budget: 12,000 EUR" in pdf.texts[1]


async def test_only_the_first_pages_are_read_and_the_total_is_known() -> None:
    pdf = await read_pdf(text_pdf([f"Page number {i}" for i in range(1, 13)]), max_pages=5, timeout_s=30,
                         memory_bytes=MEMORY)
    assert pdf.pages == 12 and len(pdf.texts) == 5 and "Page number 5" in pdf.texts[4]


async def test_a_pdf_encrypted_with_an_empty_password_is_read() -> None:
    data = encrypted_pdf(["Open to anyone, printing restricted."], password="", algorithm="AES-256")
    pdf = await read_pdf(data, max_pages=10, timeout_s=30, memory_bytes=MEMORY)
    assert pdf.pages == 1 and "Open to anyone, printing restricted." in pdf.texts[0]


@pytest.mark.parametrize("data,reason", [
    (encrypted_pdf(["secret plans"]), "it is encrypted (password protected)"),
    (damaged_pdf(), "it could not be read as a PDF (damaged or malformed)"),
], ids=["encrypted", "damaged"])
async def test_encrypted_and_damaged_pdfs_get_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(PdfError) as caught:
        await read_pdf(data, max_pages=10, timeout_s=30, memory_bytes=MEMORY)
    assert str(caught.value) == reason


async def test_a_pdf_bomb_costs_the_bot_neither_memory_nor_an_endless_wait() -> None:
    bomb = bomb_pdf()  # ~6 MB that unpack to 40 x 60 MB of operators
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(PdfError) as caught:
        await read_pdf(bomb, max_pages=50, timeout_s=3, memory_bytes=MEMORY)
    assert str(caught.value) in ("it could not be read within 3 s",
                                 "it takes more memory or time to read than a file may",
                                 "it unpacks to more memory than a file may take")
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024  # the unpacking happened in the worker, not here


async def test_through_the_file_reader_each_pdf_is_read_or_skipped_with_a_note() -> None:
    files = {"plan.pdf": text_pdf(["Milestones: alpha in May."]), "locked.pdf": encrypted_pdf(["x"]),
             "scan.pdf": text_pdf(["", ""])}

    def incoming(name: str) -> Incoming:
        async def fetch(max_bytes: int) -> bytes:
            return files[name]
        return Incoming(name, len(files[name]), "application/pdf", fetch)

    read = await read_files([incoming(n) for n in files], FileLimits())
    assert isinstance(read[0], FileText) and read[0].kind == "pdf" and "alpha in May" in read[0].parts[0]
    assert read[1] == Skipped("locked.pdf", "it is encrypted (password protected)")
    assert read[2] == Skipped("scan.pdf", "it has no text to read (a scan, or images only)")
