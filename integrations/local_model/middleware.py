"""ASGI middleware that makes llama-cpp-python's chat completions behave as the OpenAI API does."""
from __future__ import annotations

import json
import traceback
from typing import Any, Awaitable, Callable

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class OpenAIConformance:
    """ASGI middleware closing two gaps between llama-cpp-python and the OpenAI API.

    - It reads only `max_tokens` and silently ignores the `max_completion_tokens` that current
      OpenAI clients send, which would leave replies unbounded: copy the limit over.
    - A streamed request that fails before its first token (a prompt longer than the context
      window, typically) gets a 200 and an empty event stream: hold the response start until
      the first event, and answer such a failure with the documented error envelope instead.
    """

    def __init__(self, app: Callable[[dict[str, Any], Receive, Send], Awaitable[None]]) -> None:
        self._app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope["path"].endswith("/chat/completions"):
            await self._app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its request
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        body = _with_max_tokens(body)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        held: dict[str, Any] | None = None
        answering = False

        async def send_once_answering(message: dict[str, Any]) -> None:
            nonlocal held, answering
            if not answering:
                if message["type"] == "http.response.start":
                    held = message
                    return
                if message["type"] == "http.response.body" and not message.get("body"):
                    return  # nothing to show yet; a failure may still turn this into an error
                if held is not None:
                    await send(held)
                answering = True
            await send(message)

        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        try:
            await self._app({**scope, "headers": headers}, replay, send_once_answering)
        except Exception as error:
            if answering:
                raise
            await _send_error(send, error)
            return
        if not answering and held is not None:
            await send(held)
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_error(send: Send, error: Exception) -> None:
    if "context window" in str(error):
        status, kind, code = 400, "invalid_request_error", "context_length_exceeded"
        message = f"This model's maximum context length was exceeded: {error}"
    else:
        traceback.print_exc()
        status, kind, code = 500, "server_error", None
        message = f"The local model failed: {type(error).__name__}"
    payload = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


def _with_max_tokens(body: bytes) -> bytes:
    try:
        payload = json.loads(body)
    except ValueError:
        return body  # the server answers it with its own validation error
    if not isinstance(payload, dict) or payload.get("max_tokens") is not None:
        return body
    limit = payload.get("max_completion_tokens")
    if not isinstance(limit, int):
        return body
    payload["max_tokens"] = limit
    return json.dumps(payload).encode()
