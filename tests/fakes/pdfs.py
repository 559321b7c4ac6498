"""Real PDF files for tests, made with pypdf: pages of text, pages without a text layer (as a
scanner makes them), a password-protected one and a damaged one."""
from __future__ import annotations

import io

from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject


def text_pdf(*pages: str, password: str | None = None, algorithm: str = "RC4-128") -> bytes:
    """A PDF with one page per text (lines split on newlines), in Helvetica, with a text layer.
    `password`: encrypted with that user password ("" makes a PDF that opens without one but is
    still encrypted), by `algorithm` (RC4 in pure Python; "AES-128" or "AES-256" need `cryptography`)."""
    writer = PdfWriter()
    font = writer._add_object(
        DictionaryObject(
            {
                NameObject("/Type"): NameObject("/Font"),
                NameObject("/Subtype"): NameObject("/Type1"),
                NameObject("/BaseFont"): NameObject("/Helvetica"),
            }
        )
    )
    for text in pages:
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})})
        content = DecodedStreamObject()
        content.set_data(_text_operators(text))
        page[NameObject("/Contents")] = writer._add_object(content)
    if password is not None:
        writer.encrypt(user_password=password, owner_password="owner", algorithm=algorithm)
    return _written(writer)


def scanned_pdf(pages: int = 2) -> bytes:
    """A PDF whose pages carry no text layer (what a scanner without OCR makes)."""
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(612, 792)
    return _written(writer)


def damaged_pdf() -> bytes:
    """The first bytes of a PDF, cut off: no cross-reference table, no objects."""
    return text_pdf("A whole page of text that never arrives.")[:60]


def _text_operators(text: str) -> bytes:
    lines = [line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in text.split("\n")]
    shown = " 0 -14 Td ".join(f"({line}) Tj" for line in lines)
    return f"BT /F1 12 Tf 72 720 Td {shown} ET".encode("latin-1")


def _written(writer: PdfWriter) -> bytes:
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()
