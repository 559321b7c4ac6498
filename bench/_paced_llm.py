"""A local OpenAI-compatible server that streams one Markdown answer at a model's pace, in its own process.

Benchmarks that compare the bot with the raw SDK need the same answer streamed the same way to
both, and the server's own CPU kept out of the process being measured. The model name says what
to stream: `paced-<characters>-<seconds>-<chunks>` streams `<characters>` of typical chat Markdown
(headings, lists, code, links) in `<chunks>` evenly spaced SSE chunks over `<seconds>`, in the
documented chat.completion.chunk format (the fake in tests/fakes/openai_server.py, plus pacing).

`start()` runs it in a child process (`--serve`: it prints `PORT <n>` and serves until its stdin
closes). Only for benchmarks.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import AsyncIterator, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.http_server import HttpServer, RecordedRequest, Response  # noqa: E402
from tests.fakes.openai_server import Reply, _Completion  # noqa: E402

ANSWER_BLOCK = (
    "## Step\n\nEdit the **config** and set `timeout` as [documented](https://example.com).\n\n"
    "1. Open it.\n2. Change it, then *save* it.\n\n```python\nconfig['timeout'] = 30\n```\n\n"
    "Some plain prose follows here, a sentence or two long, as models like to write between lists.\n\n"
)


# A question answered at once with a short answer, to warm up a client before measuring it.
WARM_UP = "warm up"


def answer(characters: int) -> str:
    """The Markdown answer of about `characters` characters (whole blocks, cut at a line end)."""
    text = ANSWER_BLOCK * (characters // len(ANSWER_BLOCK) + 1)
    cut = text.rfind("\n", 0, characters)
    return text[: cut if cut > 0 else characters]


def model_name(characters: int, seconds: float, chunks: int) -> str:
    return f"paced-{characters}-{seconds:g}-{chunks}"


def _parse(model: str) -> tuple[int, float, int]:
    _, characters, seconds, chunks = model.split("-")
    return int(characters), float(seconds), int(chunks)


# For each request: when it arrived, when its first content was sent, when its last byte was
# sent (time.monotonic(), which all processes of a machine share); GET /v1/timings lists them.
_TIMINGS: list[list[float]] = []


async def _paced(events: AsyncIterator[bytes], gap: float, timing: list[float]) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    async for event in events:
        if len(timing) == 1 and b'"content": "' in event and b'"content": ""' not in event:
            timing.append(time.monotonic())
        yield event
        next_at += gap
        delay = next_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
    timing.append(time.monotonic())


def timings(base_url: str) -> list[list[float]]:
    """What the server running at `base_url` recorded so far, oldest request first."""
    with urllib.request.urlopen(f"{base_url}/timings") as response:
        return json.loads(response.read())


async def _handle(request: RecordedRequest) -> Response:
    if request.path.endswith("/models"):
        return Response.json({"object": "list", "data": []})
    if request.path.endswith("/timings"):
        return Response.json(_TIMINGS)
    timing = [time.monotonic()]
    _TIMINGS.append(timing)
    body = request.json
    characters, seconds, chunks = _parse(body["model"])
    if body["messages"][-1]["content"] == WARM_UP:
        characters, seconds, chunks = 200, 0.05, 5
    completion = _Completion(body["model"], Reply(answer(characters), chunks=chunks), include_usage=True)
    headers = {"content-type": "text/event-stream; charset=utf-8", "x-request-id": "req_paced"}
    return Response(200, headers, _paced(completion.events(), seconds / max(chunks, 1), timing))


async def _serve() -> None:
    async with HttpServer(_handle) as server:
        print("PORT", server.url.rsplit(":", 1)[1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


@contextmanager
def start() -> Iterator[str]:
    """Run the server in a child process; yields its base URL (ending in /v1)."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        port = child.stdout.readline().split()[1]
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        asyncio.run(_serve())
    else:
        print("a helper of bench/latency.py and bench/scale.py; nothing to run on its own")
