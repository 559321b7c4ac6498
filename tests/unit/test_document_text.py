"""Documents' settings and text, as an operator and a user meet them: which files are read, how
their bytes become text, and what a bad DOC_* value says."""
from __future__ import annotations

import pytest

from bot.config import ConfigError, DocumentSettings, load_settings
from integrations.document_text import Unreadable, decode_text, document_kind, read_document
from tests.fakes.pdfs import damaged_pdf, scanned_pdf, text_pdf


@pytest.mark.parametrize(
    ("name", "mime", "kind"),
    [
        ("report.PDF", "application/octet-stream", "pdf"),
        (None, "application/pdf", "pdf"),
        ("notes.md", "text/markdown", "text"),
        ("main.rs", "application/octet-stream", "text"),
        ("data.json", "application/json", "text"),
        ("Dockerfile", "application/octet-stream", "unknown"),
        ("NOTES", "application/octet-stream", "unknown"),
        ("scan.png", "image/png", "image"),
        ("photos.zip", "application/zip", None),
        ("setup.exe", "application/x-msdownload", None),
        ("cv.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", None),
    ],
)
def test_a_file_is_judged_by_its_name_and_type_before_it_is_downloaded(name, mime, kind):
    assert document_kind(name, mime) == kind


def test_text_is_decoded_from_utf8_or_utf16_with_a_mark_and_binaries_are_refused():
    assert decode_text("\ufeffhéllo".encode("utf-8")) == "héllo"
    assert decode_text("héllo wörld".encode("utf-16")) == "héllo wörld"
    with pytest.raises(Unreadable) as refused:
        decode_text(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert refused.value.problem == "not_text"
    with pytest.raises(Unreadable):
        decode_text(bytes(range(128, 256)) * 10)


def test_a_pdf_gives_its_pages_text_and_count():
    document = read_document(text_pdf("First (page)", "Second\\page"), "pdf", max_pages=5)
    assert document.pages == 2
    assert document.text == "First (page)\n\nSecond\\page"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (scanned_pdf(2), "scanned"),
        (text_pdf("x", password="pw"), "encrypted"),
        (damaged_pdf(), "damaged"),
        (b"not a pdf at all", "damaged"),
        (text_pdf("a", "b", "c"), "too_many_pages"),
    ],
)
def test_a_pdf_that_cannot_be_read_says_why(data, problem):
    with pytest.raises(Unreadable) as refused:
        read_document(data, "pdf", max_pages=2)
    assert refused.value.problem == problem


def test_document_limits_are_read_from_doc_settings(tmp_path):
    settings = load_settings({"DOC_MAX_MB": "2.5", "DOC_MAX_PAGES": "40", "DOC_MAX_CHARS": "8000"}, cwd=tmp_path)
    assert settings.documents == DocumentSettings(max_bytes=int(2.5 * 2**20), max_pages=40, max_chars=8000)
    assert load_settings({}, cwd=tmp_path).documents == DocumentSettings()


def test_a_bad_document_limit_is_named_with_what_it_must_be(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_settings({"DOC_MAX_MB": "lots", "DOC_MAX_PAGES": "0"}, cwd=tmp_path)
    assert caught.value.problems == [
        "DOC_MAX_MB must be a positive number of megabytes, not 'lots'.",
        "DOC_MAX_PAGES must be a positive whole number, not '0'.",
    ]
