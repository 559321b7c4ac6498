"""Logs as an operator reads them: one structured line per event, never a secret in any of them."""
import asyncio
import io
import json
import logging
import re
import warnings
from urllib.parse import quote, urlencode

import pytest
from telethon.crypto import AuthKey
from telethon.sessions import StringSession

from bot.logs import DeprecationSignals, UpstreamLog, configure_logging, log_upstream_call
from integrations.clock import ManualClock
from integrations.errors import ModelNotFound, RateLimited, Unavailable
from integrations.redaction import Redactor
from integrations.resilience.breaker import CircuitBreaker
from integrations.resilience.compose import Upstream
from integrations.resilience.retry import RetryPolicy, retry_call

ANTHROPIC = "sk-ant-sentinel-logs-anthropic-00000000000"
OPENAI = "sk-sentinel-logs-openai-0000000000000000"
BOT_TOKEN = "7777777:AAsentinelBotTokenSentinelBotToken00000"
API_HASH = "0123456789abcdef0123456789abcdef"
NOTION = "ntn_sentinelNotionToken000000000000000"
PERPLEXITY = "pplx-sentinelPerplexity000000000"
# Known to the redactor by value only: no recognisable shape, and characters a URL encodes.
OPAQUE = "opaque/sentinel+value=="
CONFIGURED = [ANTHROPIC, OPENAI, BOT_TOKEN, API_HASH, NOTION, PERPLEXITY, OPAQUE]


def telethon_session_string() -> str:
    session = StringSession()
    session.set_dc(2, "149.154.167.40", 443)
    session.auth_key = AuthKey(bytes(range(256)))
    return session.save()


SESSION = telethon_session_string()


def forms(secret: str) -> list[str]:
    """The secret and the ways it shows up in URLs and form bodies."""
    return [secret, quote(secret, safe=""), quote(secret, safe="").lower(), urlencode({"k": secret})[2:]]


@pytest.fixture
def log_output():
    """Configure logging as the bot does, into a buffer; yields a function returning (format -> text)."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buffers = {}

    def configure(fmt: str) -> io.StringIO:
        buffers[fmt] = io.StringIO()
        configure_logging("DEBUG", Redactor(CONFIGURED), buffers[fmt], log_format=fmt)
        return buffers[fmt]

    yield configure
    handlers, level = saved
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def login(token: str) -> None:
    raise PermissionError(f"Telegram refused bot token {token} (api_hash={API_HASH})")


def emit_everything(log: logging.Logger) -> None:
    log.info("anthropic key is %s", ANTHROPIC)
    log.info("sending", extra={"fields": {"authorization": f"Bearer {OPENAI}", "url": f"https://api.telegram.org/bot{BOT_TOKEN}/getMe"}})
    log.warning("request headers %r", {"x-api-key": ANTHROPIC, "Authorization": f"Bearer {NOTION}"})
    log.info("form body %s and query ?key=%s", urlencode({"key": OPAQUE}), quote(OPAQUE, safe=""))
    log.info("restored session %s", SESSION)
    log.debug('perplexity body {"api_key": "%s", "input": "hi"}', PERPLEXITY)
    log.info("opaque value %s, lower-case encoded %s", OPAQUE, quote(OPAQUE, safe="").lower())
    try:
        try:
            login(BOT_TOKEN)
        except PermissionError as error:
            raise RuntimeError(f"start-up failed with session {SESSION} and key {OPAQUE}") from error
    except RuntimeError:
        log.exception("could not start (token %s)", BOT_TOKEN)


@pytest.mark.parametrize("fmt", ["kv", "json"])
def test_no_secret_survives_in_any_line_including_tracebacks(log_output, fmt):
    out = log_output(fmt)
    emit_everything(logging.getLogger("bot.test"))
    text = out.getvalue()
    assert text.count("\n") == 8, "one line per record, tracebacks included"
    for secret in [*CONFIGURED, SESSION]:
        for form in forms(secret):
            assert form not in text, f"{form[:12]}... leaked"
    assert SESSION[:40] not in text
    assert "Traceback" in text and "PermissionError" in text and "RuntimeError" in text
    assert "anthropic key is [redacted]" in text


def test_python_warnings_are_logged_redacted_instead_of_printed(log_output):
    out = log_output("kv")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"retrying with key {OPAQUE}", UserWarning, stacklevel=1)
    [line] = out.getvalue().splitlines()
    assert "logger=py.warnings" in line and "retrying with key [redacted]" in line


def test_redaction_keeps_the_rest_of_the_line_readable():
    redact = Redactor([OPAQUE])
    assert redact("anthropic: invalid x-api-key (HTTP 401)") == "anthropic: invalid x-api-key (HTTP 401)"
    assert redact("max_tokens=1024 output_tokens=12") == "max_tokens=1024 output_tokens=12"
    assert redact("Authorization: Bearer abcdefghijklmnop, next") == "Authorization: [redacted], next"
    assert redact(f"key={OPAQUE} model=claude") == "key=[redacted] model=claude"
    assert redact("https://api.telegram.org/bot123456789:AAAbbbcccdddeeefffggghhhiiijjjkkklll/getMe") == "https://api.telegram.org/bot[redacted]/getMe"


def test_key_value_lines_carry_fields_and_quote_what_needs_it(log_output):
    out = log_output("kv")
    logging.getLogger("handlers.chat").warning("no model answered", extra={"fields": {"chat": 42, "reason": 'said "no"\nthen left'}})
    [line] = out.getvalue().splitlines()
    assert re.match(r"time=\S+Z level=warning logger=handlers\.chat ", line)
    assert 'msg="no model answered" chat=42 reason="said \\"no\\"\\nthen left"' in line


def test_json_lines_are_objects_with_the_fields_and_the_traceback(log_output):
    out = log_output("json")
    try:
        raise ValueError("bad value")
    except ValueError:
        logging.getLogger("bot.x").exception("it broke", extra={"fields": {"upstream": "notion", "attempt": 2}})
    [line] = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["level"] == "error" and record["logger"] == "bot.x" and record["msg"] == "it broke"
    assert record["upstream"] == "notion" and record["attempt"] == 2
    assert record["exc_type"] == "ValueError" and "bad value" in record["exc"]


def fields_of(caplog, message: str) -> list[dict]:
    return [r.fields for r in caplog.records if r.getMessage() == message]


class Answer:
    request_id = "req_2"


async def test_each_attempt_of_a_retried_call_is_logged_with_status_latency_and_request_id(caplog):
    caplog.set_level(logging.INFO)
    clock = ManualClock()
    calls = UpstreamLog("anthropic", clock)
    outcomes = [RateLimited("slow down", upstream="anthropic", status=429, request_id="req_1", retry_after=2.0)]

    async def create():
        await clock.sleep(0.25)
        if outcomes:
            raise outcomes.pop()
        return Answer()

    result = await clock.run_until_complete(
        retry_call(calls.attempts("messages.create", create), RetryPolicy(), clock, on_attempt=calls.on_attempt)
    )
    assert isinstance(result, Answer)
    first, second = fields_of(caplog, "upstream call")
    assert first == {"upstream": "anthropic", "operation": "messages.create", "status": "rate_limited", "latency_ms": 250, "attempt": 1, "request_id": "req_1", "http_status": 429}
    assert second == {"upstream": "anthropic", "operation": "messages.create", "status": "ok", "latency_ms": 250, "attempt": 2, "request_id": "req_2"}
    [retry] = fields_of(caplog, "upstream retry")
    assert retry["retry_in_s"] == 2.0 and retry["attempt"] == 1
    assert [r.levelname for r in caplog.records if r.getMessage() == "upstream call"] == ["WARNING", "INFO"]


async def test_wrapping_upstream_call_logs_every_attempt_inside_its_policies(caplog):
    caplog.set_level(logging.INFO)
    clock = ManualClock()
    upstream = Upstream("notion", clock, breaker=CircuitBreaker("notion", clock), retry=RetryPolicy(max_attempts=3, base=0.1, cap=0.1))
    calls = UpstreamLog("notion", clock)
    failures = [Unavailable("502", upstream="notion", status=502), Unavailable("503", upstream="notion", status=503)]

    async def retrieve():
        if failures:
            raise failures.pop(0)
        return {"object": "database"}

    await clock.run_until_complete(upstream.call(calls.attempts("databases.retrieve", retrieve)))
    logged = fields_of(caplog, "upstream call")
    assert [(f["attempt"], f["status"], f.get("http_status")) for f in logged] == [(1, "unavailable", 502), (2, "unavailable", 503), (3, "ok", None)]


async def test_a_cancelled_call_is_logged_as_cancelled_not_as_a_failure(caplog):
    caplog.set_level(logging.INFO)
    clock = ManualClock()

    async def slow():
        with log_upstream_call("openai", "chat.completions", clock):
            await clock.sleep(60)

    task = asyncio.ensure_future(slow())
    await clock.advance(3)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    [record] = [r for r in caplog.records if r.getMessage() == "upstream call"]
    assert record.levelname == "INFO" and record.fields["status"] == "cancelled" and record.fields["latency_ms"] == 3000


def test_deprecation_headers_are_logged_once_per_upstream_and_listed(caplog):
    signals = DeprecationSignals(ManualClock())
    headers = {"Deprecation": "@1767225600", "Sunset": "Wed, 01 Jul 2026 00:00:00 GMT", "Content-Type": "application/json"}
    assert signals.from_headers("openai", headers) is True
    assert signals.from_headers("openai", headers) is False
    assert signals.from_headers("openai", {"content-type": "application/json"}) is False
    assert len([r for r in caplog.records if r.getMessage() == "deprecation signal"]) == 1
    [signal] = signals.list()
    assert signal.upstream == "openai" and "Sunset: Wed, 01 Jul 2026" in signal.detail
    assert "openai: Deprecation: @1767225600" in signal.describe()


def test_a_model_the_upstream_no_longer_knows_is_a_deprecation_signal():
    signals = DeprecationSignals(ManualClock())
    assert signals.from_error(ModelNotFound("model claude-2.1 not found", upstream="anthropic", status=404))
    assert not signals.from_error(Unavailable("overloaded", upstream="anthropic", status=529))
    [signal] = signals.list()
    assert (signal.upstream, signal.source, signal.detail) == ("anthropic", "model", "model claude-2.1 not found")


def test_sdk_deprecation_warnings_become_signals_and_others_pass_on():
    signals = DeprecationSignals(ManualClock())
    passed_on = []
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *args, **kwargs: passed_on.append(str(message))
        before = warnings.showwarning
        with signals.capturing_warnings():
            sdk_file = "/opt/switchboard/.venv/lib/python3.11/site-packages/anthropic/resources/messages.py"
            warnings.warn_explicit("`max_tokens_to_sample` is deprecated", DeprecationWarning, sdk_file, 10, module="anthropic.resources.messages")
            warnings.warn_explicit("legacy call", DeprecationWarning, "/opt/switchboard/integrations/openai.py", 5, module="integrations.openai")
            warnings.warn_explicit("unrelated stdlib thing", DeprecationWarning, "/usr/lib/python3.11/asyncio/events.py", 1, module="asyncio.events")
        assert warnings.showwarning is before
    assert passed_on == ["unrelated stdlib thing"]
    assert [(s.upstream, s.source) for s in signals.list()] == [("anthropic", "warning"), ("openai", "warning")]
    assert "max_tokens_to_sample" in signals.list()[0].detail


def test_an_sdk_warning_that_points_above_our_adapter_is_still_the_sdks_signal():
    # anthropic warns about a deprecated model with stacklevel=3: past its `create` and our
    # adapter, into whatever drives the adapter (integrations/chain.py in the bot).
    sdk: dict[str, object] = {}
    source = (
        "import warnings\n"
        "def create(model):\n"
        "    warnings.warn(f\"The model '{model}' is deprecated and will reach end-of-life on June 1st.\\n"
        "Please migrate to a newer model.\", DeprecationWarning, stacklevel=3)\n"
    )
    exec(compile(source, "/opt/switchboard/.venv/lib/python3.11/site-packages/anthropic/resources/messages/messages.py", "exec"), sdk)

    def adapter() -> None:
        sdk["create"]("claude-old")  # type: ignore[operator]

    signals = DeprecationSignals(ManualClock())
    passed_on = []
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *args, **kwargs: passed_on.append(str(message))
        with signals.capturing_warnings():
            adapter()
    assert passed_on == []
    [signal] = signals.list()
    assert (signal.upstream, signal.source) == ("anthropic", "warning")
    assert signal.detail == (
        "DeprecationWarning: The model 'claude-old' is deprecated and will reach end-of-life on June 1st. "
        "Please migrate to a newer model."
    )
