"""The offline model's ASGI middleware, driven with a plain function standing in for llama.cpp's app."""
from __future__ import annotations

import json
from typing import Any

from integrations.local_model.middleware import OpenAIConformance

SCOPE = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}


async def call(app: Any, body: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(messages sent back, the request the wrapped app read)."""
    sent: list[dict[str, Any]] = []
    raw = json.dumps(body).encode()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    seen: dict[str, Any] = {}

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(json.loads((await receive())["body"]))
        await app(scope, receive, send)

    await OpenAIConformance(inner)(SCOPE, receive, send)
    return sent, seen


async def test_max_completion_tokens_becomes_the_max_tokens_llama_cpp_reads():
    async def answer(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})

    sent, seen = await call(answer, {"model": "smollm2", "max_completion_tokens": 64})
    assert seen["max_tokens"] == 64
    assert sent[0]["status"] == 200


async def test_a_stream_failing_before_its_first_event_is_a_documented_context_error():
    async def fail(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise ValueError("Requested tokens (4000) exceed context window of 2048")

    sent, _ = await call(fail, {"model": "smollm2", "stream": True})
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["code"] == "context_length_exceeded"
