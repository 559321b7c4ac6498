"""The text of one setting turned into its value (a count, an amount, a duration, a share, a
yes/no), or None when the text is not one; the caller words the problem.
"""
from __future__ import annotations

import math
import re

OFF = frozenset({"off", "none", "never"})

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_DIGITS = re.compile(r"[0-9]+")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(d|h|min|m|s)?", re.IGNORECASE)
_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "min": 60.0, "m": 60.0, "s": 1.0, "": 1.0}


def positive_int(text: str) -> int | None:
    # A regex rather than int(): int() also takes "+5", "1_000" and non-ASCII digits.
    if not _DIGITS.fullmatch(text):
        return None
    return int(text) or None


def positive_float(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None


def non_negative_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def boolean(text: str) -> bool | None:
    """true/false, yes/no, on/off, 1/0, in any case."""
    lowered = text.lower()
    return True if lowered in _TRUE else False if lowered in _FALSE else None


def share(text: str) -> float | None:
    """0.75 or 75%: above 0, at most 1."""
    value = positive_float(text.removesuffix("%").strip())
    if value is not None and text.endswith("%"):
        value /= 100
    return value if value is not None and value <= 1 else None


def duration(text: str) -> float | None:
    """Seconds from 6h, 90m, 2d, 1h30m or 3600 (a bare number is seconds)."""
    compact = text.replace(" ", "")
    parts = list(_DURATION_PART.finditer(compact))
    if not parts or "".join(part[0] for part in parts) != compact:
        return None
    if len(parts) > 1 and not all(part[2] for part in parts):
        return None  # "1h30" is ambiguous
    seconds = sum(float(part[1]) * _DURATION_UNITS[(part[2] or "").lower()] for part in parts)
    return seconds if math.isfinite(seconds) and seconds > 0 else None
