"""OpenAIChat and AnthropicChat driven through the real SDKs against strict local fakes.

Every failure an upstream can produce must come out as one project error type, after exactly one
HTTP request (the SDKs' own retries are off), without the API key in any message.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from email.utils import format_datetime
from types import ModuleType
from typing import Any, AsyncIterator

import anthropic
import httpx
import pytest

import tests.fakes.anthropic_server as anthropic_fake
import tests.fakes.openai_server as openai_fake
from integrations.anthropic import AnthropicChat
from integrations.clock import ManualClock, wait_for
from integrations.errors import (
    AuthFailed,
    BadRequest,
    ContextTooLong,
    MalformedResponse,
    ModelNotFound,
    QuotaExhausted,
    RateLimited,
    Unavailable,
    UpstreamError,
)
from integrations.http_errors import LimitHint
from integrations.llm import ChatMessage, ChatRequest, StreamResult, Usage
from integrations.openai import OpenAIChat
from tests.fakes.anthropic_server import PREFILL_REFUSAL, FakeAnthropic
from tests.fakes.http_server import RESET
from tests.fakes.openai_server import FakeOpenAI

KEY = "sk-sentinel-Zq7Xw3Vb9Nm2Lk5J"
WRONG_KEY = "sk-rotated-away-Hf4Tg8Rd1Qp6"
# Real-time guard against a hang; the behaviour under test never waits on it.
GUARD = 5.0


@dataclass
class Rig:
    """One provider wired to its fake, plus the fake's behaviour factories."""

    fake: Any
    chat: Any
    behaviours: ModuleType
    model: str

    def request(self, *turns: ChatMessage, system: str | None = "Be brief.", model: str | None = None) -> ChatRequest:
        messages = turns or (ChatMessage("user", "Hi"),)
        return ChatRequest(model=model or self.model, messages=messages, system=system)


async def _openai_rig(**chat_options: Any) -> AsyncIterator[Rig]:
    async with FakeOpenAI(api_key=KEY) as fake:
        chat = OpenAIChat(api_key=chat_options.pop("api_key", KEY), base_url=fake.base_url, **chat_options)
        try:
            yield Rig(fake, chat, openai_fake, "gpt-test")
        finally:
            await chat.aclose()


async def _anthropic_rig(**chat_options: Any) -> AsyncIterator[Rig]:
    clock = ManualClock()
    async with FakeAnthropic(api_key=KEY, now=clock.now) as fake:
        chat_options.setdefault("now", clock.now)
        chat = AnthropicChat(api_key=chat_options.pop("api_key", KEY), base_url=fake.base_url, **chat_options)
        try:
            yield Rig(fake, chat, anthropic_fake, "claude-test")
        finally:
            await chat.aclose()


RIGS = {"openai": _openai_rig, "anthropic": _anthropic_rig}


@pytest.fixture(params=sorted(RIGS))
async def rig(request):
    async for built in RIGS[request.param]():
        yield built


@pytest.fixture
async def openai_rig():
    async for built in _openai_rig():
        yield built


@pytest.fixture
async def anthropic_rig():
    async for built in _anthropic_rig():
        yield built


async def collect(chat: Any, request: ChatRequest) -> tuple[list[str], StreamResult, UpstreamError | None]:
    deltas: list[str] = []
    result = StreamResult()
    try:
        async for delta in chat.stream(request, result):
            deltas.append(delta)
    except UpstreamError as err:
        return deltas, result, err
    return deltas, result, None


def assert_no_secret(err: BaseException, *secrets: str) -> None:
    for secret in secrets:
        for text in (str(err), repr(err), err.args[0]):
            assert secret not in text
            # The real OpenAI echoes a masked key that keeps its last four characters.
            assert secret[-4:] not in text


# --- streaming ---------------------------------------------------------------------------------


async def test_stream_yields_text_in_order_and_fills_usage_and_request_id(rig):
    rig.fake.script(rig.behaviours.Reply("alpha beta gamma delta", chunks=4))

    deltas, result, error = await collect(rig.chat, rig.request())

    assert error is None
    assert deltas == ["alpha ", "beta ", "gamma ", "delta"]
    assert result.usage == Usage(input_tokens=12, output_tokens=4)
    assert result.request_id == rig.fake.request_ids[-1]
    assert result.stop_reason in ("stop", "end_turn")
    assert rig.fake.calls == 1


async def test_text_with_line_separators_in_it_arrives_whole(rig):
    # Raw UTF-8 in the stream's JSON: U+2028 and U+0085 are line breaks to Python's splitlines,
    # not to SSE, so a chunk carrying them is still one chunk.
    text = "naïve\u2028café\x85done"
    rig.fake.script(rig.behaviours.Reply(text, chunks=1))

    deltas, result, error = await collect(rig.chat, rig.request())

    assert error is None
    assert "".join(deltas) == text
    assert result.stop_reason in ("stop", "end_turn")


async def test_anthropic_streams_read_to_their_end_leave_the_connection_for_the_next_request(anthropic_rig):
    # The body is read past message_stop to its end, so the pooled connection is reused.
    for _ in range(2):
        _, _, error = await collect(anthropic_rig.chat, anthropic_rig.request())
        assert error is None

    first, second = anthropic_rig.fake.connections
    assert first is second


async def test_openai_sends_system_first_and_asks_for_usage(openai_rig):
    conversation = (ChatMessage("user", "Hi"), ChatMessage("assistant", "Hello"), ChatMessage("user", "How are you?"))

    await collect(openai_rig.chat, openai_rig.request(*conversation, system="Be brief."))

    sent = openai_rig.fake.chat_requests[0].json
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "How are you?"},
    ]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["max_completion_tokens"] == 1024


async def test_anthropic_sends_system_as_a_parameter_and_merges_same_role_turns(anthropic_rig):
    conversation = (
        ChatMessage("user", "First."),
        ChatMessage("user", "Second."),
        ChatMessage("assistant", "Noted."),
        ChatMessage("user", "Go on."),
    )

    _, _, error = await collect(anthropic_rig.chat, anthropic_rig.request(*conversation, system="Be brief."))

    assert error is None
    sent = anthropic_rig.fake.message_requests[0].json
    assert sent["system"] == "Be brief."
    assert sent["messages"] == [
        {"role": "user", "content": "First.\n\nSecond."},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "Go on."},
    ]


async def test_list_models_returns_the_upstream_ids(rig):
    assert await rig.chat.list_models() == rig.fake.models


async def test_anthropic_list_models_follows_pages(anthropic_rig):
    anthropic_rig.fake.models = [f"claude-{n}" for n in range(45)]

    assert await anthropic_rig.chat.list_models() == anthropic_rig.fake.models


# --- prefill -----------------------------------------------------------------------------------


async def test_anthropic_fake_refuses_a_trailing_assistant_message(anthropic_rig):
    client = anthropic.AsyncAnthropic(api_key=KEY, base_url=anthropic_rig.fake.base_url, max_retries=0)
    try:
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.messages.create(
                model="claude-test",
                max_tokens=10,
                messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Partial answer"}],
            )
    finally:
        await client.close()
    assert caught.value.api_message == PREFILL_REFUSAL


async def test_anthropic_chat_never_ends_with_an_assistant_message(anthropic_rig):
    conversation = (ChatMessage("user", "Tell me a story."), ChatMessage("assistant", "Once upon a"))

    deltas, _, error = await collect(anthropic_rig.chat, anthropic_rig.request(*conversation))

    assert error is None and deltas
    assert anthropic_rig.fake.message_requests[0].json["messages"] == [{"role": "user", "content": "Tell me a story."}]


async def test_anthropic_chat_refuses_a_conversation_without_a_user_turn_locally(anthropic_rig):
    _, _, error = await collect(anthropic_rig.chat, anthropic_rig.request(ChatMessage("assistant", "Hello")))

    assert isinstance(error, BadRequest)
    assert anthropic_rig.fake.calls == 0


# --- failures common to both providers ----------------------------------------------------------


async def test_reset_before_headers_is_unavailable(rig):
    rig.fake.script(RESET)

    deltas, _, error = await collect(rig.chat, rig.request())

    assert isinstance(error, Unavailable) and deltas == []
    assert error.upstream == rig.chat.name
    assert rig.fake.calls == 1
    assert_no_secret(error, KEY)


@pytest.mark.parametrize("cut", ["reset", "hang-up", "early-end"])
async def test_stream_cut_after_some_text_is_unavailable(rig, cut):
    text = "one two three four five six"
    behaviours = {
        "reset": rig.behaviours.cut_after(2, text, abortive=True),
        "hang-up": rig.behaviours.cut_after(2, text, abortive=False),
        "early-end": rig.behaviours.end_early(2, text),
    }
    rig.fake.script(behaviours[cut])

    deltas, result, error = await collect(rig.chat, rig.request())

    assert deltas == ["one ", "two "]
    assert isinstance(error, Unavailable)
    assert error.request_id == result.request_id == rig.fake.request_ids[-1]
    assert rig.fake.calls == 1
    assert_no_secret(error, KEY)


async def test_malformed_chunk_is_a_malformed_response(rig):
    rig.fake.script(rig.behaviours.malformed_after(2))

    deltas, _, error = await collect(rig.chat, rig.request())

    assert deltas == ["one ", "two "]
    assert isinstance(error, MalformedResponse)
    assert rig.fake.calls == 1


async def test_refused_key_is_auth_failed_without_leaking_it_and_a_rotated_key_works(rig):
    rig.chat.set_api_key(WRONG_KEY)

    _, _, error = await collect(rig.chat, rig.request())

    assert isinstance(error, AuthFailed) and error.status == 401
    assert_no_secret(error, WRONG_KEY, KEY)
    assert error.__cause__ is None and error.__suppress_context__
    assert WRONG_KEY not in repr(rig.chat)

    rig.chat.set_api_key(KEY)
    deltas, _, error = await collect(rig.chat, rig.request())
    assert error is None and deltas
    assert rig.fake.calls == 2


async def test_unknown_model_is_model_not_found(rig):
    _, _, error = await collect(rig.chat, rig.request(model="retired-model"))

    assert isinstance(error, ModelNotFound) and error.status == 404
    assert error.request_id == rig.fake.request_ids[-1]
    assert rig.fake.calls == 1


async def test_stalled_stream_yields_nothing_until_the_outer_deadline_cancels_it(rig):
    clock = ManualClock()
    rig.fake.script(rig.behaviours.stall_after(2, "one two three four five six"))
    received: asyncio.Queue[str] = asyncio.Queue()

    async def consume() -> None:
        async for delta in rig.chat.stream(rig.request(), StreamResult()):
            received.put_nowait(delta)

    reply = asyncio.ensure_future(wait_for(clock, consume(), 30))
    first = [await asyncio.wait_for(received.get(), GUARD) for _ in range(2)]
    await asyncio.wait_for(rig.fake.server.stall_began.wait(), GUARD)
    await clock.advance(29)

    assert first == ["one ", "two "]
    assert received.empty() and not reply.done()

    await clock.advance(1)
    with pytest.raises(TimeoutError):
        await reply
    await asyncio.wait_for(rig.fake.server.wait_for_connections(0), GUARD)
    assert rig.fake.calls == 1


async def test_released_stall_lets_the_reply_finish(rig):
    rig.fake.script(rig.behaviours.stall_after(3, "one two three four five six"))

    async def release_when_stalled() -> None:
        await rig.fake.server.stall_began.wait()
        rig.fake.server.release_stalls()

    releaser = asyncio.ensure_future(release_when_stalled())
    deltas, _, error = await asyncio.wait_for(collect(rig.chat, rig.request()), GUARD)
    await releaser

    assert error is None
    assert "".join(deltas) == "one two three four five six"


# --- OpenAI failures ------------------------------------------------------------------------------

LIMITS_SPENT = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s"}


@pytest.mark.parametrize(
    "behaviour, error_type, retry_after",
    [
        (openai_fake.rate_limited(retry_after="3"), RateLimited, 3.0),
        (openai_fake.rate_limited(retry_after="1", retry_after_ms="250"), RateLimited, 0.25),
        (openai_fake.rate_limited(**LIMITS_SPENT), RateLimited, 1.5),
        (openai_fake.insufficient_quota(), QuotaExhausted, None),
        (openai_fake.context_length_exceeded(), ContextTooLong, None),
        (openai_fake.server_error(500), Unavailable, None),
        (openai_fake.server_error(503), Unavailable, None),
        (openai_fake.Fail(422, "invalid_request_error", "Invalid 'temperature'."), BadRequest, None),
    ],
    ids=["retry-after", "retry-after-ms", "ratelimit-reset", "quota", "context", "500", "503", "422"],
)
async def test_openai_error_responses_map_to_project_errors(openai_rig, behaviour, error_type, retry_after):
    openai_rig.fake.script(behaviour)

    deltas, _, error = await collect(openai_rig.chat, openai_rig.request())

    assert type(error) is error_type and deltas == []
    assert error.retry_after == retry_after
    assert error.status == behaviour.status
    assert error.request_id == openai_rig.fake.request_ids[-1]
    assert error.upstream == "openai"
    assert openai_rig.fake.calls == 1
    assert_no_secret(error, KEY)


async def test_openai_retry_after_as_http_date_counts_from_the_injected_now():
    clock = ManualClock()
    later = format_datetime(clock.now() + timedelta(seconds=42), usegmt=True)
    async for built in _openai_rig(now=clock.now):
        built.fake.script(openai_fake.rate_limited(retry_after=later))
        _, _, error = await collect(built.chat, built.request())

    assert isinstance(error, RateLimited) and error.retry_after == 42.0


@pytest.mark.parametrize(
    "error_fields, error_type",
    [
        ({}, Unavailable),
        ({"type": "invalid_request_error", "code": "context_length_exceeded"}, ContextTooLong),
        ({"type": "insufficient_quota", "code": "insufficient_quota"}, QuotaExhausted),
        ({"type": "tokens", "code": "rate_limit_exceeded"}, RateLimited),
    ],
    ids=["server-error", "context", "quota", "rate-limit"],
)
async def test_openai_error_object_inside_the_stream_maps_by_its_type(openai_rig, error_fields, error_type):
    openai_rig.fake.script(openai_fake.error_in_stream(2, **error_fields))

    deltas, result, error = await collect(openai_rig.chat, openai_rig.request())

    assert deltas == ["one ", "two "]
    assert type(error) is error_type
    assert error.request_id == result.request_id
    assert openai_rig.fake.calls == 1


async def test_openai_reports_rate_limit_headers_to_on_limits():
    hints: list[LimitHint] = []
    async for built in _openai_rig(on_limits=hints.append):
        await collect(built.chat, built.request())
        built.fake.script(openai_fake.rate_limited(**LIMITS_SPENT))
        await collect(built.chat, built.request())

    assert hints[0] == LimitHint(10000, 9999, 0.006, 200000, 199000, 0.3)
    assert (hints[1].requests_remaining, hints[1].requests_reset_s) == (0, 1.5)


async def test_openai_compatible_server_gets_its_own_name_in_errors():
    async for built in _openai_rig(name="local"):
        built.fake.script(openai_fake.server_error(502))
        _, _, error = await collect(built.chat, built.request())

    assert isinstance(error, Unavailable) and error.upstream == "local"
    assert str(error).startswith("local: ")


# --- Anthropic failures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "behaviour, error_type, retry_after",
    [
        (anthropic_fake.rate_limited(retry_after="7"), RateLimited, 7.0),
        (anthropic_fake.overloaded(), Unavailable, None),
        (anthropic_fake.api_error(), Unavailable, None),
        (anthropic_fake.billing_error(), QuotaExhausted, None),
        (anthropic_fake.prompt_too_long(), ContextTooLong, None),
        (anthropic_fake.Fail(403, "permission_error", "Your API key does not have permission."), AuthFailed, None),
        (anthropic_fake.Fail(400, "invalid_request_error", "temperature: out of range"), BadRequest, None),
    ],
    ids=["429", "529", "500", "billing", "prompt-too-long", "403", "400"],
)
async def test_anthropic_error_responses_map_to_project_errors(anthropic_rig, behaviour, error_type, retry_after):
    anthropic_rig.fake.script(behaviour)

    deltas, _, error = await collect(anthropic_rig.chat, anthropic_rig.request())

    assert type(error) is error_type and deltas == []
    assert error.retry_after == retry_after
    assert error.status == behaviour.status
    assert error.request_id == anthropic_rig.fake.request_ids[-1]
    assert error.upstream == "anthropic"
    assert anthropic_rig.fake.calls == 1
    assert_no_secret(error, KEY)


async def test_anthropic_429_without_retry_after_waits_for_the_exhausted_budget(anthropic_rig):
    anthropic_rig.fake.limits = {"requests": (50, 0, 12.0), "tokens": (80_000, 70_000, 1.0)}
    anthropic_rig.fake.script(anthropic_fake.rate_limited(retry_after=None))

    _, _, error = await collect(anthropic_rig.chat, anthropic_rig.request())

    assert isinstance(error, RateLimited) and error.retry_after == 12.0


@pytest.mark.parametrize(
    "error_type_name, error_type",
    [("overloaded_error", Unavailable), ("api_error", Unavailable), ("rate_limit_error", RateLimited)],
)
async def test_anthropic_error_event_inside_the_stream_maps_by_its_type(anthropic_rig, error_type_name, error_type):
    anthropic_rig.fake.script(anthropic_fake.error_event_after(2, error_type_name))

    deltas, result, error = await collect(anthropic_rig.chat, anthropic_rig.request())

    assert deltas == ["one ", "two "]
    assert type(error) is error_type
    assert error.request_id == result.request_id == anthropic_rig.fake.request_ids[-1]
    assert anthropic_rig.fake.calls == 1


_DELTA = {"type": "content_block_delta", "index": 0}


@pytest.mark.parametrize(
    "name, payload",
    [
        ("content_block_delta", {**_DELTA, "delta": {"type": "text_delta"}}),
        ("content_block_delta", {**_DELTA, "delta": {"type": "text_delta", "text": 3}}),
        ("content_block_delta", _DELTA),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": "6"}}),
        ("message_start", {"type": "message_start", "message": {"id": "msg_1"}}),
        ("content_block_delta", ["not", "an", "object"]),
        ("message_stop", {}),
    ],
    ids=["text-missing", "text-a-number", "delta-missing", "tokens-a-string", "usage-missing", "a-list", "type-missing"],
)
async def test_anthropic_event_off_the_documented_schema_is_a_malformed_response(anthropic_rig, name, payload):
    anthropic_rig.fake.script(anthropic_fake.odd_event_after(2, name, payload))

    deltas, result, error = await collect(anthropic_rig.chat, anthropic_rig.request())

    assert deltas == ["one ", "two "]
    assert isinstance(error, MalformedResponse)
    assert error.request_id == result.request_id == anthropic_rig.fake.request_ids[-1]


async def test_anthropic_reports_rate_limit_headers_to_on_limits():
    hints: list[LimitHint] = []
    async for built in _anthropic_rig(on_limits=hints.append):
        built.fake.limits = {"requests": (50, 49, 1.25), "tokens": (80_000, 79_000, 0.5)}
        await collect(built.chat, built.request())

    assert hints == [LimitHint(50, 49, 1.25, 80_000, 79_000, 0.5)]


# --- the fakes are as strict as the real APIs ---------------------------------------------------


async def test_openai_fake_requires_bearer_auth_model_and_messages(openai_rig):
    url = f"{openai_rig.fake.base_url}/chat/completions"
    auth = {"Authorization": f"Bearer {KEY}"}
    hello = [{"role": "user", "content": "Hi"}]
    async with httpx.AsyncClient() as client:
        anonymous = await client.post(url, json={"model": "gpt-test", "messages": hello})
        no_model = await client.post(url, headers=auth, json={"messages": hello})
        no_messages = await client.post(url, headers=auth, json={"model": "gpt-test"})
        empty = await client.post(url, headers=auth, json={"model": "gpt-test", "messages": []})
        whole = await client.post(url, headers=auth, json={"model": "gpt-test", "messages": hello})

    assert anonymous.status_code == 401
    assert [r.status_code for r in (no_model, no_messages, empty)] == [400, 400, 400]
    assert all(r.json()["error"]["type"] == "invalid_request_error" for r in (anonymous, no_model, no_messages, empty))
    assert all(r.headers["x-request-id"] for r in (anonymous, no_model))
    assert whole.json()["object"] == "chat.completion"
    assert whole.json()["choices"][0]["message"]["content"] == "Hello from the fake."


async def test_anthropic_fake_requires_a_version_header_and_accepts_x_api_key(anthropic_rig):
    url = f"{anthropic_rig.fake.base_url}/v1/messages"
    body = {"model": "claude-test", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}
    async with httpx.AsyncClient() as client:
        unversioned = await client.post(url, headers={"x-api-key": KEY}, json=body)
        accepted = await client.post(url, headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"}, json=body)
        no_max_tokens = await client.post(
            url,
            headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
            json={"model": "claude-test", "messages": body["messages"]},
        )

    assert unversioned.status_code == 400
    assert unversioned.json()["error"]["type"] == "invalid_request_error"
    assert unversioned.json()["request_id"] == unversioned.headers["request-id"]
    assert accepted.status_code == 200 and accepted.json()["content"][0]["text"]
    assert no_max_tokens.status_code == 400
