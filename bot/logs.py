"""Structured logs to stderr (journald keeps them), with every secret redacted.

One record is one line: key=value pairs (`LOG_FORMAT=kv`, the default) or a JSON object
(`LOG_FORMAT=json`). Extra fields travel in `extra={"fields": {...}}`. Tracebacks stay on the line
(escaped), so a log shipper never splits an error from its cause.

The redaction runs on the final text of every record (message, fields, exception text and
traceback), so a secret cannot leak through an argument, a repr or an SDK's error message. It
removes the configured secrets (also URL-encoded), and anything shaped like one: Authorization
headers, bearer tokens, bot tokens, provider key prefixes and Telethon StringSession strings.

`UpstreamLog` logs every attempt of an upstream call (upstream, operation, status, latency,
attempt, request id); `DeprecationSignals` collects what says an upstream is going away.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import PurePath
from types import FrameType
from typing import Awaitable, Callable, Iterator, Mapping, TextIO, TypeVar

from integrations.clock import Clock
from integrations.errors import ModelNotFound, UpstreamError
from integrations.redaction import Redactor

T = TypeVar("T")

# --- formatting -------------------------------------------------------------------------------

_BARE = re.compile(r"[A-Za-z0-9_.:/@+%,-]+")


def logfmt_value(value: object) -> str:
    """A value as logfmt writes it: bare when safe, else quoted with \\ \" and newlines escaped."""
    text = "" if value is None else str(value)
    if _BARE.fullmatch(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


class _StructuredFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def pairs(self, record: logging.LogRecord) -> list[tuple[str, object]]:
        """Everything the line says, each value already redacted, in a stable order."""
        redact = self._redactor
        when = datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
        pairs: list[tuple[str, object]] = [
            ("time", when.replace("+00:00", "Z")),
            ("level", record.levelname.lower()),
            ("logger", record.name),
            ("msg", redact(record.getMessage())),
        ]
        for key, value in (getattr(record, "fields", None) or {}).items():
            pairs.append((str(key), redact(str(value)) if isinstance(value, str) or not _plain(value) else value))
        if record.exc_info and record.exc_info[0] is not None:
            pairs.append(("exc_type", record.exc_info[0].__name__))
            pairs.append(("exc", redact(self.formatException(record.exc_info))))
        if record.stack_info:
            pairs.append(("stack", redact(self.formatStack(record.stack_info))))
        return pairs


def _plain(value: object) -> bool:
    return value is None or isinstance(value, (bool, int, float))


class KeyValueFormatter(_StructuredFormatter):
    def format(self, record: logging.LogRecord) -> str:
        line = " ".join(f"{key}={logfmt_value(value)}" for key, value in self.pairs(record))
        return self._redactor(line)


class JsonFormatter(_StructuredFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(dict(self.pairs(record)), ensure_ascii=False, default=str)


FORMATTERS = {"kv": KeyValueFormatter, "json": JsonFormatter}
# Library chatter (every HTTP request, every Telegram update) drowns what matters.
NOISY_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "telethon", "openai", "anthropic", "notion_client", "aiosqlite")


def configure_logging(
    level: str, redactor: Redactor, stream: TextIO | None = None, *, log_format: str = "kv"
) -> logging.Handler:
    """Send every record to `stream` (stderr) in `log_format`, redacted; returns the handler.

    Python warnings become records too (logger `py.warnings`), so they are redacted and structured
    like everything else instead of printed raw.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(FORMATTERS[log_format](redactor))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)
    return handler


# --- upstream calls ---------------------------------------------------------------------------

_upstream_log = logging.getLogger("switchboard.upstream")


def status_of(error: BaseException) -> str:
    """A short status for a failed call: the project error type in snake case, e.g. rate_limited."""
    name = type(error).__name__
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclass
class UpstreamAttempt:
    """What one attempt learnt; set `request_id` when the answer carries one."""

    upstream: str
    operation: str
    attempt: int
    request_id: str | None = None


@contextmanager
def log_upstream_call(
    upstream: str,
    operation: str,
    clock: Clock,
    *,
    attempt: int = 1,
    logger: logging.Logger = _upstream_log,
) -> Iterator[UpstreamAttempt]:
    """Log one attempt: status=ok at INFO, an UpstreamError at WARNING, with latency and request id."""
    record = UpstreamAttempt(upstream, operation, attempt)
    started = clock.monotonic()
    status, level, http = "ok", logging.INFO, None
    try:
        yield record
    except UpstreamError as error:
        status, level, http = status_of(error), logging.WARNING, error.status
        record.request_id = record.request_id or error.request_id
        raise
    except BaseException as error:
        # A cancelled call (the user's /cancel, a shutdown) did not fail.
        cancelled = isinstance(error, asyncio.CancelledError)
        status, level = ("cancelled", logging.INFO) if cancelled else (status_of(error), logging.WARNING)
        raise
    finally:
        fields: dict[str, object] = {
            "upstream": upstream,
            "operation": operation,
            "status": status,
            "latency_ms": round((clock.monotonic() - started) * 1000),
            "attempt": attempt,
            "request_id": record.request_id or "-",
        }
        if http is not None:
            fields["http_status"] = http
        logger.log(level, "upstream call", extra={"fields": fields})


class UpstreamLog:
    """Per upstream: wraps each attempt of a call (what `Upstream.call` and `retry_call` run).

        calls = UpstreamLog("notion", clock)
        await upstream.call(calls.attempts("pages.create", lambda: client.pages.create(...)))

    Each attempt is logged with its number; a result with a `request_id` attribute fills it in.
    `on_attempt` fits `retry_call(on_attempt=...)` and logs the wait before the next attempt.
    """

    def __init__(self, upstream: str, clock: Clock, *, logger: logging.Logger = _upstream_log) -> None:
        self.upstream = upstream
        self._clock = clock
        self._logger = logger

    def attempts(self, operation: str, fn: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
        counter = 0

        async def attempt() -> T:
            nonlocal counter
            counter += 1
            with log_upstream_call(self.upstream, operation, self._clock, attempt=counter, logger=self._logger) as record:
                result = await fn()
                record.request_id = getattr(result, "request_id", None) or None
                return result

        return attempt

    def on_attempt(self, attempt: int, error: UpstreamError, wait: float) -> None:
        self._logger.info(
            "upstream retry",
            extra={"fields": {"upstream": self.upstream, "attempt": attempt, "status": status_of(error), "retry_in_s": round(wait, 2)}},
        )


# --- deprecation signals ----------------------------------------------------------------------

# Where a warning comes from tells which upstream it is about: an SDK, or our adapter for it.
_UPSTREAM_OF_PACKAGE = {
    "openai": "openai",
    "anthropic": "anthropic",
    "notion_client": "notion",
    "telethon": "telegram",
    "perplexity": "perplexity",
    "notion": "notion",
    "llama_cpp": "local",
}
_DEPRECATION_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


@dataclass(frozen=True)
class DeprecationSignal:
    upstream: str
    source: str  # "header", "warning" or "model"
    detail: str
    first_seen: datetime

    def describe(self) -> str:
        return f"{self.upstream}: {self.detail} (since {self.first_seen:%Y-%m-%d %H:%M} UTC)"


@dataclass
class DeprecationSignals:
    """Signs that an upstream is retiring something we use; each is logged once, all are listed."""

    clock: Clock
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("switchboard.deprecation"))
    _seen: dict[tuple[str, str, str], DeprecationSignal] = field(default_factory=dict)

    def report(self, upstream: str, source: str, detail: str) -> bool:
        """Record a signal; True (and one WARNING line) the first time it is seen."""
        key = (upstream, source, detail)
        if key in self._seen:
            return False
        self._seen[key] = DeprecationSignal(upstream, source, detail, self.clock.now())
        self.logger.warning(
            "deprecation signal", extra={"fields": {"upstream": upstream, "source": source, "detail": detail}}
        )
        return True

    def list(self) -> list[DeprecationSignal]:
        """Every signal seen, oldest first (for /status)."""
        return sorted(self._seen.values(), key=lambda signal: signal.first_seen)

    def from_headers(self, upstream: str, headers: Mapping[str, str]) -> bool:
        """RFC 9745 `Deprecation` and RFC 8594 `Sunset` headers of a response."""
        lowered = {name.lower(): value for name, value in headers.items()}
        parts = [f"{name.title()}: {lowered[name]}" for name in ("deprecation", "sunset") if lowered.get(name)]
        if not parts:
            return False
        link = lowered.get("link", "")
        if 'rel="deprecation"' in link or "rel=deprecation" in link or 'rel="sunset"' in link:
            parts.append(f"Link: {link}")
        return self.report(upstream, "header", "; ".join(parts))

    def from_error(self, error: BaseException) -> bool:
        """A model the upstream no longer knows is the loudest deprecation signal of all."""
        if isinstance(error, ModelNotFound):
            return self.report(error.upstream or "unknown", "model", error.message)
        return False

    def from_warning(
        self, message: Warning | str, category: type[Warning], filename: str, *, raised_in: str | None = None
    ) -> bool:
        """An SDK's DeprecationWarning (or one raised at our adapter's call into it).

        `filename` is where the warning points, which `stacklevel` moves up the stack: the
        anthropic SDK's deprecated-model warning points two frames above its `create`, past our
        adapter, into whatever drives the adapter's stream. `raised_in`, the file that called
        `warnings.warn`, names the SDK that issued it, so it is asked first.
        """
        if not issubclass(category, _DEPRECATION_CATEGORIES):
            return False
        upstream = (_upstream_of(raised_in) if raised_in else None) or _upstream_of(filename)
        if upstream is None:
            return False
        # One line: the SDKs wrap their advice ("...end-of-life on ...\nPlease migrate..."),
        # and /status shows each signal as one bullet.
        return self.report(upstream, "warning", " ".join(f"{category.__name__}: {message}".split()))

    @contextmanager
    def capturing_warnings(self) -> Iterator[None]:
        """While inside, deprecation warnings about upstreams become signals (others pass on).

        Python hides DeprecationWarning outside __main__ by default, so the SDKs' and adapters'
        ones are switched on here; each distinct one still reaches us once.
        """
        with warnings.catch_warnings():
            for category in _DEPRECATION_CATEGORIES:
                warnings.filterwarnings("default", category=category)
            previous = warnings.showwarning

            def show(
                message: Warning | str,
                category: type[Warning],
                filename: str,
                lineno: int,
                file: TextIO | None = None,
                line: str | None = None,
            ) -> None:
                if not self.from_warning(message, category, filename, raised_in=_warning_raised_in()):
                    previous(message, category, filename, lineno, file, line)

            warnings.showwarning = show
            yield


def _warning_raised_in() -> str | None:
    """The file that called `warnings.warn`, seen from inside `showwarning` (which runs in that call).

    The frames between are the warnings module's own (and this module's `show`); the C
    implementation of `warn` adds none.
    """
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename in (warnings.__file__, __file__):
        frame = frame.f_back
    return frame.f_code.co_filename if frame is not None else None


def _upstream_of(filename: str) -> str | None:
    """The upstream an SDK file (site-packages/openai/...) or our adapter (integrations/openai.py) serves."""
    parts = PurePath(filename).parts
    for packages in ("site-packages", "dist-packages"):
        if packages in parts[:-1]:
            return _UPSTREAM_OF_PACKAGE.get(parts[parts.index(packages) + 1].removesuffix(".py"))
    if len(parts) >= 2 and parts[-2] == "integrations":
        return _UPSTREAM_OF_PACKAGE.get(PurePath(filename).stem)
    return None
