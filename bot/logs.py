"""Structured logs to stderr (journald keeps them), with every secret redacted.

Each line is `time level logger message key=value ...`. The redaction filter rewrites the final
text of every record, so a secret cannot leak through arguments, exception text or tracebacks.
"""
from __future__ import annotations

import logging
import re
import sys
from typing import Iterable

REDACTED = "[redacted]"
# Shapes that are secret whatever their value: auth headers, bearer tokens, bot tokens, key prefixes.
SECRET_SHAPES = [
    re.compile(r"(?i)(authorization|x-api-key|api[_-]?key|api[_-]?hash|token|secret|password)(\"?\s*[:=]\s*\"?)(bearer\s+)?[^\s\"',;]+"),
    re.compile(r"(?i)bearer\s+[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"\b\d{6,12}:[A-Za-z0-9_-]{30,}\b"),
    re.compile(r"\b(sk|pk|rk)-[A-Za-z0-9_-]{16,}\b"),
    re.compile(r"\bsk-ant-[A-Za-z0-9_-]{16,}\b"),
    re.compile(r"\b(secret|ntn)_[A-Za-z0-9]{20,}\b"),
    re.compile(r"\bpplx-[A-Za-z0-9]{16,}\b"),
]


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        for secret in secrets:
            if secret and len(secret) >= 6 and secret not in self._secrets:
                self._secrets.append(secret)
        self._secrets.sort(key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        for shape in SECRET_SHAPES:
            text = shape.sub(_redact_match, text)
        return text


def _redact_match(match: re.Match[str]) -> str:
    if match.re is SECRET_SHAPES[0]:
        return f"{match.group(1)}{match.group(2)}{REDACTED}"
    return REDACTED


class RedactingFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self._redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        text = super().format(record)
        if fields:
            text += " " + " ".join(f"{k}={_quote(v)}" for k, v in fields.items())
        return self._redactor(text)


def _quote(value: object) -> str:
    text = str(value)
    return f'"{text}"' if (" " in text or not text) else text


def configure_logging(level: str, redactor: Redactor, stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(RedactingFormatter(redactor))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter (every HTTP request, every Telegram update) drowns what matters.
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "telethon", "openai", "anthropic", "aiosqlite"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
