"""Redaction: known secrets and secret-shaped text replaced by "[redacted]" before anything is shown.

Used by every layer that shows text which may have passed through an upstream (logs, /status,
/health, replies quoting an error): it removes the configured secrets (also URL-encoded) and
anything shaped like one: Authorization headers, bearer tokens, bot tokens, provider key prefixes
and Telethon StringSession strings.
"""
from __future__ import annotations

import re
from typing import Iterable
from urllib.parse import quote, quote_plus

REDACTED = "[redacted]"
# A key name followed by its value, as in headers, reprs, query strings and JSON.
_NAMED_SECRET = re.compile(
    r"(?i)\b(authorization|proxy-authorization|x-api-key|api[_-]?key|api[_-]?hash|access[_-]?token"
    r"|bot[_-]?token|auth[_-]?token|token|secret|password|session[_-]?string)"
    # Possessive, so "Bearer [redacted]" is left alone rather than matched without its "Bearer ".
    r"(['\"]?\s*[:=]\s*['\"]?)(?:bearer\s+|basic\s+)?+(?!\[redacted\])[^\s'\",;&)}\]]+"
)
# Shapes that are secret whatever they are called.
SECRET_SHAPES = [
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}"),
    # Bot tokens, also inside a Bot API URL (/bot123:ABC...) and URL-encoded (%3A).
    re.compile(r"(?<![0-9])[0-9]{6,12}(:|%3[Aa])[A-Za-z0-9_-]{30,}"),
    re.compile(r"\bsk-ant-[A-Za-z0-9_-]{16,}"),
    re.compile(r"\b(sk|pk|rk)-[A-Za-z0-9_-]{16,}"),
    re.compile(r"\b(secret|ntn)_[A-Za-z0-9]{20,}"),
    re.compile(r"\bpplx-[A-Za-z0-9]{16,}"),
    # Telethon StringSession: "1" then urlsafe base64 of DC, address, port and the 256-byte auth key.
    re.compile(r"(?<![A-Za-z0-9_-])1[A-Za-z0-9_-]{300,}={0,2}"),
]
_MIN_SECRET_LENGTH = 6


class Redactor:
    """Replaces known secrets and secret-shaped text with "[redacted]"."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        for secret in secrets:
            if not secret or len(secret) < _MIN_SECRET_LENGTH:
                continue
            # As written, and as it appears in a URL, a form body or lower-case percent-encoding.
            encoded = quote(secret, safe="")
            lower_hex = re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), encoded)
            for form in (secret, encoded, quote_plus(secret), lower_hex):
                if form not in self._secrets:
                    self._secrets.append(form)
        self._secrets.sort(key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        text = _NAMED_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        for shape in SECRET_SHAPES:
            text = shape.sub(REDACTED, text)
        return text
