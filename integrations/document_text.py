"""The text of a document a user sent: what kind of file it is, and its words.

Plain text, Markdown and code files are decoded (UTF-8, or UTF-16 with a byte-order mark); a PDF is
read page by page with pypdf (its text layer: a scanned PDF has none, and says so). Everything
else is not read. A file is judged first by its name and Telegram's MIME type, before anything is
downloaded, so an archive or a program is refused without fetching it; a file whose name and type
say nothing (application/octet-stream, no known extension) is fetched and read if it decodes as text.

Parsing runs on untrusted bytes: pypdf's failures on a damaged file are many and not one type, so
any of them is reported as `Unreadable("damaged")`. The caller runs `read_document` in a thread:
a large PDF takes CPU seconds the event loop must not wait for.
"""
from __future__ import annotations

import codecs
import io
import logging
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

log = logging.getLogger(__name__)

DocumentKind = Literal["text", "pdf", "image", "unknown"]
Problem = Literal["scanned", "encrypted", "damaged", "not_text", "too_many_pages"]

# Extensions of files that are text: prose, Markdown, data and configuration, and source code.
TEXT_EXTENSIONS = frozenset(
    """
    txt text md markdown mdx rst adoc org tex bib csv tsv log json jsonl ndjson yaml yml toml ini cfg
    conf properties env xml html htm xhtml css scss sass less svg srt vtt
    py pyi ipynb js mjs cjs jsx ts tsx vue svelte go rs java kt kts scala groovy gradle c h cc cpp cxx
    hpp hh cs fs fsx m mm swift php rb pl pm lua r jl dart ex exs erl hrl hs clj cljs elm ml mli nim
    zig v sql sh bash zsh fish ps1 bat cmd awk sed make mk cmake dockerfile tf hcl nix proto graphql
    gql diff patch asm s
    """.split()
)
# Names of text files that often have no extension.
TEXT_NAMES = frozenset({"dockerfile", "makefile", "readme", "license", "procfile", "gemfile", "rakefile", "jenkinsfile"})
# MIME types (besides text/*) of text, as Telegram clients label files.
TEXT_MIME_TYPES = frozenset(
    {
        "application/json", "application/xml", "application/x-yaml", "application/yaml", "application/toml",
        "application/javascript", "application/x-javascript", "application/typescript", "application/sql",
        "application/x-sh", "application/x-shellscript", "application/x-python", "application/x-python-code",
        "application/x-tex", "application/x-latex", "application/ld+json", "application/x-ndjson",
    }
)
# What says nothing about a file: read it if its bytes turn out to be text.
UNDECLARED_MIME_TYPES = frozenset({"", "application/octet-stream"})
# A decoded file with more than this share of undecodable characters is not text.
MAX_REPLACEMENT_SHARE = 0.01


@dataclass(frozen=True)
class DocumentText:
    text: str
    # A PDF's page count; None for other files.
    pages: int | None = None


class Unreadable(Exception):
    """A document whose text cannot be had, and why (`problem`); `pages` where that is the reason."""

    def __init__(self, problem: Problem, detail: str = "", *, pages: int | None = None) -> None:
        super().__init__(f"{problem}: {detail}" if detail else problem)
        self.problem = problem
        self.pages = pages


def document_kind(file_name: str | None, mime_type: str | None) -> DocumentKind | None:
    """What a file is by its name and MIME type, before it is downloaded: "unknown" when nothing
    says (to be read if its bytes are text), None when it is a kind the bot does not read."""
    mime = (mime_type or "").lower().split(";")[0].strip()
    extension = file_extension(file_name)
    if mime == "application/pdf" or extension == "pdf":
        return "pdf"
    if mime.startswith("image/"):
        return "image"
    if extension in TEXT_EXTENSIONS or mime.startswith("text/") or mime in TEXT_MIME_TYPES:
        return "text"
    stem = PurePosixPath(file_name or "").name.lower()
    if stem in TEXT_NAMES or (not extension and mime in UNDECLARED_MIME_TYPES):
        return "unknown"
    return None


def file_extension(file_name: str | None) -> str:
    """The extension, lower case and without its dot ("" for none)."""
    return PurePosixPath(file_name or "").suffix.lower().lstrip(".")


def read_document(data: bytes, kind: DocumentKind, *, max_pages: int) -> DocumentText:
    """The document's text; raises `Unreadable`. `kind` is from `document_kind` (not "image")."""
    if kind == "pdf":
        return _read_pdf(data, max_pages)
    return DocumentText(decode_text(data))


def decode_text(data: bytes) -> str:
    """Bytes of a text file as text: UTF-8 (a byte-order mark dropped) or UTF-16 with its mark.
    Raises `Unreadable("not_text")` for bytes that are not text (NULs, or many invalid sequences)."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as error:
            raise Unreadable("not_text", str(error)) from None
    if b"\x00" in data:
        raise Unreadable("not_text", "it holds NUL bytes")
    text = data.decode("utf-8-sig", errors="replace")
    if text.count("\ufffd") > max(1, len(text) * MAX_REPLACEMENT_SHARE):
        raise Unreadable("not_text", "it is not UTF-8")
    return text


def _read_pdf(data: bytes, max_pages: int) -> DocumentText:
    # Imported here: only a bot that is sent a PDF pays for loading pypdf.
    from pypdf import PdfReader
    from pypdf.errors import DependencyError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            # Many PDFs are encrypted with an empty password (only editing or printing is restricted):
            # those open, RC4 and AES alike (AES through pypdf's `crypto` extra, `cryptography`; an
            # install without it refuses them as encrypted rather than failing).
            try:
                opened = reader.decrypt("")
            except (DependencyError, NotImplementedError) as error:
                raise Unreadable("encrypted", str(error)) from None
            if not opened:
                raise Unreadable("encrypted", "a password is needed")
        pages = len(reader.pages)
        if pages > max_pages:
            raise Unreadable("too_many_pages", f"{pages} pages", pages=pages)
        texts = [page.extract_text() or "" for page in reader.pages]
    except Unreadable:
        raise
    except Exception as error:  # pypdf raises many types on a damaged file (PdfReadError, KeyError, ValueError...)
        log.info("could not read a PDF: %s: %s", type(error).__name__, error)
        raise Unreadable("damaged", f"{type(error).__name__}: {error}") from None
    text = "\n\n".join(page.strip() for page in texts if page.strip())
    if not text:
        raise Unreadable("scanned", f"no text on {pages} pages", pages=pages)
    return DocumentText(text, pages)
