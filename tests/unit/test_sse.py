"""integrations/sse.py reads a stream's events as the openai SDK's own decoder does, whatever the
stream holds (fields, comments, CRLF, LF or CR line ends, multi-line data) and however the body's
bytes are cut into reads (through httpx's `aiter_bytes`, as in the adapter). `id` and `retry` are
left out: the SDK dispatches an event that has only those, and we have no use for them."""
from __future__ import annotations

from typing import AsyncIterator

import httpx2
from hypothesis import given, settings
from hypothesis import strategies as st
from openai._streaming import SSEDecoder

from integrations.sse import ServerEvent, server_events

# Any character but CR and LF, among them the breaks only Python's splitlines splits at.
_VALUE = st.text(
    st.one_of(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), st.sampled_from("\x0c\x1c\x85\u2028")),
    max_size=12,
)
_LINE = st.one_of(
    st.builds(lambda v: f"data: {v}", _VALUE),
    st.builds(lambda v: f"data:{v}", _VALUE),
    st.just("data"),
    st.builds(lambda v: f"event: {v}", _VALUE),
    st.builds(lambda v: f": {v}", _VALUE),  # a comment
    st.builds(lambda v: f"other: {v}", _VALUE),
    st.just(""),  # the blank line that dispatches
)


async def _ours(body: bytes, cuts: list[int]) -> list[ServerEvent]:
    response = httpx2.Response(200, content=_reads(body, cuts))
    return [event async for event in server_events(response.aiter_bytes())]


async def _sdks(body: bytes, cuts: list[int]) -> list[ServerEvent]:
    events = SSEDecoder().aiter_bytes(_reads(body, cuts))
    return [ServerEvent(sse.event, sse.data) async for sse in events]


async def _reads(body: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    start = 0
    for cut in sorted(set(cuts)) + [len(body)]:
        if cut > start:
            yield body[start:cut]
            start = cut


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(_LINE, max_size=20),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
async def test_events_are_the_sdk_decoders_events_however_the_body_is_cut(lines, newline, cuts):
    body = "".join(line + newline for line in lines).encode()
    assert await _ours(body, cuts) == await _sdks(body, cuts)


async def test_a_chat_stream_reads_as_its_data_payloads():
    body = b'data: {"a": 1}\n\n: keep-alive\n\ndata: {"b":\ndata: 2}\n\ndata: [DONE]\n\n'
    assert await _ours(body, [3, 17, 30]) == [
        ServerEvent(None, '{"a": 1}'),
        ServerEvent(None, '{"b":\n2}'),
        ServerEvent(None, "[DONE]"),
    ]


async def test_a_json_string_with_a_line_separator_in_it_stays_one_payload():
    body = 'data: {"content": "one\u2028two\x85three"}\n\n'.encode()
    assert await _ours(body, [5]) == [ServerEvent(None, '{"content": "one\u2028two\x85three"}')]


async def test_an_event_cut_off_by_the_end_of_the_body_is_dropped():
    body = b"event: message_delta\ndata: {\"partial\": true}\n"
    assert await _ours(body, []) == []
    assert await _ours(b"event: ping\ndata: {}\n\n", []) == [ServerEvent("ping", "{}")]
