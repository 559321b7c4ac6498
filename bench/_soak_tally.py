"""What users ended up seeing in the crash soak, counted per message against "exactly one final reply".

A reply is *final* when it is the whole answer (`answer qN … done.`), a stopped one, or one clear
error note (given up, expired, every model failed); it is *partial* when it shows the beginning of
an answer and nothing replaced it. Each chat question should have exactly one final reply and no
partial one; each note exactly one Notion page, and its user one link.
"""
from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Mapping

# `make bench` runs every bench/*.py, this helper too: it then only imports.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._soak_models import TOKEN  # noqa: E402
from handlers.chat import SOMETHING_WENT_WRONG  # noqa: E402
from handlers.router import EXPIRED_NOTE, GAVE_UP_NOTE, NOT_ACCEPTED  # noqa: E402
from tests.fakes.notion_server import FakeNotion  # noqa: E402

Kind = Literal["answer", "error", "partial", "stray", "other"]
FINAL: tuple[Kind, ...] = ("answer", "error")

_ANSWER = re.compile(r"^answer (q\d+)\b")
_ERROR_OPENINGS = tuple(
    text.split("{")[0] for text in (NOT_ACCEPTED, SOMETHING_WENT_WRONG, EXPIRED_NOTE, GAVE_UP_NOTE)
) + ("Sorry, I could not get an answer",)
_NOTE_LINK = re.compile(r"(?:Saved|Already saved) to Notion: (\S+)")


def answer_token(text: str) -> str | None:
    """The question a reply shows the answer to, if it shows one."""
    found = _ANSWER.match(text)
    return found.group(1) if found else None


def kind_of(text: str, token: str | None = None) -> Kind:
    """What a reply is; given the question it replies to, a preview too short to name it
    ("answer") counts as partial and another question's answer as a stray."""
    if text.startswith(_ERROR_OPENINGS) or "The answer was cut off" in text:
        return "error"
    shown = answer_token(text)
    if shown is not None and token is not None and shown != token:
        return "stray"
    if shown is not None:
        return "answer" if text.endswith(("done.", "(stopped)")) else "partial"
    if token is not None and f"answer {token} ".startswith(text):
        return "partial"
    return "other"


@dataclass
class Tally:
    transport: str
    runs: int = 0
    kills: int = 0
    seconds: float = 0.0
    questions: int = 0
    once: int = 0
    twice: int = 0
    never: int = 0
    partial: int = 0
    error_notes: int = 0  # questions whose one final reply is an error note (e.g. given up)
    notes: int = 0
    notes_once: int = 0
    notes_twice: int = 0
    notes_missing: int = 0
    links_once: int = 0
    links_twice: int = 0
    links_never: int = 0
    remarks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def count_question(self, token: str, replies: Iterable[str]) -> None:
        """One chat question and every reply it got."""
        self.questions += 1
        replies = list(replies)
        kinds = Counter(kind_of(text, token) for text in replies)
        for text in replies:
            if kind_of(text, token) in ("stray", "other"):
                self.problems.append(f"{token} got a reply that is neither its answer nor an error note: {text!r}")
        finals = kinds["answer"] + kinds["error"]
        self.partial += kinds["partial"]
        if finals == 1:
            self.once += 1
            self.error_notes += kinds["error"]
        elif finals > 1:
            self.twice += 1
            self.problems.append(f"{token} answered {finals} times")
        else:
            self.never += 1
            self.problems.append(f"{token} never answered")
        if kinds["partial"]:
            shown = [text for text in replies if kind_of(text, token) == "partial"]
            self.problems.append(f"{token}: partial reply left beside the final one: {shown[0]!r}")

    def count_notes(self, tokens: Iterable[str], notion: FakeNotion, replies: Iterable[str]) -> None:
        """Pages per note in Notion, and links per note told to its user (by the page's URL)."""
        pages = Counter(token for page in notion.pages for token in TOKEN.findall(notion.title_of(page)))
        by_url = {page.url: TOKEN.findall(notion.title_of(page)) for page in notion.pages}
        links = Counter(token for text in replies for url in _NOTE_LINK.findall(text) for token in by_url.get(url, []))
        for token in tokens:
            self.notes += 1
            self.notes_once += pages[token] == 1
            self.notes_twice += pages[token] > 1
            self.notes_missing += pages[token] == 0
            self.links_once += links[token] == 1
            self.links_twice += links[token] > 1
            self.links_never += links[token] == 0
            if pages[token] != 1 or links[token] != 1:
                self.problems.append(f"note {token}: {pages[token]} page(s), link told {links[token]} time(s)")


def replies_by_token(texts: Iterable[str]) -> dict[str, list[str]]:
    """Replies that show an answer, by the question they answer."""
    replies: dict[str, list[str]] = {}
    for text in texts:
        token = answer_token(text)
        if token is not None:
            replies.setdefault(token, []).append(text)
    return replies


def count_unquoted(
    tally: Tally,
    questions: Iterable[str],
    texts: Iterable[str],
    statuses: Mapping[str, str],
    commands: Iterable[str] = (),
) -> list[str]:
    """Count questions whose replies quote nothing (the console, a private chat): an answer names
    its question; an error note names none and is given to a question, or a command (a /note
    given up), the database says ended with one. Returns the error notes left over (shown for
    no message)."""
    texts = list(texts)
    by_token = replies_by_token(texts)
    error_notes = [text for text in texts if kind_of(text) == "error"]
    for command in commands:
        if error_notes and statuses.get(command) in ("failed", "expired"):
            error_notes.pop()
    for token in questions:
        replies = by_token.get(token, [])
        answered = any(kind_of(reply) in FINAL for reply in replies)
        if error_notes and not answered and statuses.get(f"{token} please") in ("failed", "expired"):
            replies.append(error_notes.pop())
        tally.count_question(token, replies)
    return error_notes


ROWS: Mapping[str, str] = {
    "runs ended by SIGKILL (then one to finish)": "runs",
    "wall time, s": "seconds",
    "chat messages sent": "questions",
    "answered exactly once": "once",
    "  of which with an error note (e.g. given up)": "error_notes",
    "answered twice or more (target 0)": "twice",
    "never answered (target 0)": "never",
    "partial replies left behind": "partial",
    "notes queued (/note)": "notes",
    "notes delivered to Notion once": "notes_once",
    "notes delivered twice or more": "notes_twice",
    "notes missing in Notion": "notes_missing",
    "note link told once / twice+ / never": "links",
}


def report(tallies: list[Tally]) -> str:
    width = max(len(label) for label in ROWS)
    lines = [f"{'':<{width}}  " + "  ".join(f"{t.transport:>14}" for t in tallies)]
    for label, name in ROWS.items():
        cells = [_cell(t, name) for t in tallies]
        lines.append(f"{label:<{width}}  " + "  ".join(f"{cell:>14}" for cell in cells))
    for tally in tallies:
        for remark in tally.remarks:
            lines.append(f"{tally.transport}: {remark}")
        for problem in tally.problems:
            lines.append(f"{tally.transport}: PROBLEM {problem}")
    return "\n".join(lines)


def _cell(tally: Tally, name: str) -> str:
    if name == "links":
        return f"{tally.links_once} / {tally.links_twice} / {tally.links_never}"
    if name == "seconds":
        return f"{tally.seconds:.0f}"
    return str(getattr(tally, name))
