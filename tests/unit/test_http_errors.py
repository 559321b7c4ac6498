from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from integrations.errors import AuthFailed, BadRequest, QuotaExhausted, RateLimited, Unavailable
from integrations.http_errors import (
    LimitHint,
    anthropic_limit_hint,
    error_class_for_status,
    openai_limit_hint,
    parse_duration,
    rate_limit_wait,
    reset_seconds,
    retry_after_seconds,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("6m0s", 360.0),
        ("1.5s", 1.5),
        ("20ms", 0.02),
        ("1h2m3s", 3723.0),
        ("0s", 0.0),
        ("250us", 0.00025),
        (" 7s ", 7.0),
    ],
)
def test_parse_duration_reads_openai_reset_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "abc", "5x", "s5", "1m 5s", "-3s"])
def test_parse_duration_refuses_text_that_is_not_a_duration(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@given(
    hours=st.integers(0, 48),
    minutes=st.integers(0, 59),
    seconds=st.integers(0, 59),
    millis=st.integers(0, 999),
)
def test_parse_duration_adds_up_every_unit(hours, minutes, seconds, millis):
    text = f"{hours}h{minutes}m{seconds}s{millis}ms"
    assert parse_duration(text) == pytest.approx(hours * 3600 + minutes * 60 + seconds + millis / 1000)


def test_retry_after_prefers_milliseconds_over_seconds():
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "3"}, NOW) == 0.25


def test_retry_after_reads_seconds_with_any_header_case():
    assert retry_after_seconds({"Retry-After": "7"}, NOW) == 7.0


def test_retry_after_reads_an_http_date_relative_to_the_injected_now():
    later = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    assert retry_after_seconds({"retry-after": later}, NOW) == 90.0


def test_retry_after_in_the_past_means_no_wait():
    earlier = format_datetime(NOW - timedelta(minutes=5), usegmt=True)
    assert retry_after_seconds({"retry-after": earlier}, NOW) == 0.0


@pytest.mark.parametrize("headers", [{}, {"retry-after": "soon"}, {"retry-after-ms": "nan"}, {"retry-after": "inf"}])
def test_retry_after_is_none_when_absent_or_unreadable(headers):
    assert retry_after_seconds(headers, NOW) is None


def test_unreadable_milliseconds_fall_back_to_seconds():
    assert retry_after_seconds({"retry-after-ms": "later", "retry-after": "2"}, NOW) == 2.0


def test_openai_limit_hint_reads_all_six_headers():
    headers = {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "120ms",
        "x-ratelimit-limit-tokens": "30000",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert openai_limit_hint(headers) == LimitHint(500, 499, 0.12, 30000, 0, 360.0)


def test_openai_limit_hint_leaves_unreadable_values_unknown():
    hint = openai_limit_hint({"x-ratelimit-remaining-requests": "many", "x-ratelimit-reset-requests": "later"})
    assert hint == LimitHint()


def test_openai_limit_hint_is_none_without_rate_limit_headers():
    assert openai_limit_hint({"x-request-id": "req_1"}) is None


def test_anthropic_limit_hint_turns_reset_times_into_seconds_from_now():
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2026-11-26T12:00:12Z",
        "anthropic-ratelimit-tokens-limit": "80000",
        "anthropic-ratelimit-tokens-remaining": "79000",
        "anthropic-ratelimit-tokens-reset": "2026-11-26T12:00:00.500000+00:00",
    }
    assert anthropic_limit_hint(headers, NOW) == LimitHint(50, 0, 12.0, 80000, 79000, 0.5)


def test_anthropic_limit_hint_uses_the_tighter_of_input_and_output_tokens_without_a_combined_budget():
    headers = {
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-input-tokens-remaining": "39000",
        "anthropic-ratelimit-input-tokens-reset": "2026-11-26T12:00:05Z",
        "anthropic-ratelimit-output-tokens-limit": "8000",
        "anthropic-ratelimit-output-tokens-remaining": "10",
        "anthropic-ratelimit-output-tokens-reset": "2026-11-26T12:00:30Z",
    }
    hint = anthropic_limit_hint(headers, NOW)
    assert (hint.tokens_limit, hint.tokens_remaining, hint.tokens_reset_s) == (8000, 10, 30.0)


def test_anthropic_limit_hint_is_none_without_rate_limit_headers():
    assert anthropic_limit_hint({"request-id": "req_1"}, NOW) is None


def test_exhausted_budget_decides_when_to_try_again():
    hint = LimitHint(requests_remaining=12, requests_reset_s=1.0, tokens_remaining=0, tokens_reset_s=20.0)
    assert hint.exhausted_reset_s() == 20.0


def test_without_an_exhausted_budget_the_longest_reset_is_the_safe_wait():
    hint = LimitHint(requests_remaining=3, requests_reset_s=4.0, tokens_remaining=9, tokens_reset_s=2.0)
    assert hint.exhausted_reset_s() == 4.0
    assert LimitHint().exhausted_reset_s() is None


def test_rate_limit_wait_prefers_what_the_upstream_asked_for():
    hint = LimitHint(requests_remaining=0, requests_reset_s=30.0)
    assert rate_limit_wait({"retry-after": "2"}, NOW, hint) == 2.0
    assert rate_limit_wait({}, NOW, hint) == 30.0
    assert rate_limit_wait({}, NOW, None) is None


@pytest.mark.parametrize(
    "value, seconds",
    [
        ("60", 60.0),
        (" 1.5 ", 1.5),
        ("1m30s", 90.0),
        (str(int(NOW.timestamp()) + 42), 42.0),
        (str(int(NOW.timestamp()) - 5), 0.0),
        ("-3", None),
        ("nan", None),
        ("soon", None),
        (None, None),
    ],
)
def test_reset_seconds_reads_seconds_durations_and_unix_times(value, seconds):
    assert reset_seconds(value, NOW) == seconds


def test_rate_limit_wait_reads_a_named_reset_header_after_retry_after_and_before_the_hint():
    hint = LimitHint(requests_remaining=0, requests_reset_s=30.0)
    headers = {"X-RateLimit-Reset": "12"}
    assert rate_limit_wait(headers, NOW, hint) == 30.0
    assert rate_limit_wait(headers, NOW, hint, reset_header="x-ratelimit-reset") == 12.0
    assert rate_limit_wait({**headers, "Retry-After": "2"}, NOW, hint, reset_header="x-ratelimit-reset") == 2.0
    assert rate_limit_wait({}, NOW, hint, reset_header="x-ratelimit-reset") == 30.0


@pytest.mark.parametrize(
    "status, error",
    [
        (429, RateLimited),
        (401, AuthFailed),
        (403, AuthFailed),
        (402, QuotaExhausted),
        (400, BadRequest),
        (404, BadRequest),
        (422, BadRequest),
        (408, Unavailable),
        (409, Unavailable),
        (500, Unavailable),
        (502, Unavailable),
        (503, Unavailable),
        (529, Unavailable),
        (200, Unavailable),
    ],
)
def test_status_codes_map_to_project_errors(status, error):
    assert error_class_for_status(status) is error
