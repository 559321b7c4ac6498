"""A scripted in-process ChatProvider for unit tests of the chain's logic.

End-to-end tests use the real SDKs against fake servers; this fake exists so the chain's
ordering, timeouts and failover can be checked step by step on a ManualClock.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import AsyncIterator, Sequence

from integrations.llm import ChatRequest, StreamResult, Usage


@dataclass
class Script:
    chunks: Sequence[str] = ()
    # Raised before the first chunk (fail_after=0) or after that many chunks.
    error: Exception | None = None
    fail_after: int = 0
    # Block forever after this many chunks (a stalled stream).
    stall_after: int | None = None
    usage: Usage = field(default_factory=lambda: Usage(10, 5))


class ScriptedProvider:
    def __init__(self, name: str, scripts: Sequence[Script] = (), default: Script | None = None) -> None:
        self.name = name
        self._scripts = list(scripts)
        self._default = default or Script(("ok",))
        self.requests: list[ChatRequest] = []
        self.closed_streams = 0

    async def stream(self, request: ChatRequest, result: StreamResult) -> AsyncIterator[str]:
        self.requests.append(request)
        script = self._scripts.pop(0) if self._scripts else self._default
        try:
            for index, chunk in enumerate(script.chunks):
                if script.error is not None and index == script.fail_after:
                    raise script.error
                if script.stall_after is not None and index == script.stall_after:
                    await asyncio.Event().wait()
                yield chunk
            if script.error is not None and script.fail_after >= len(script.chunks):
                raise script.error
            if script.stall_after is not None and script.stall_after >= len(script.chunks):
                await asyncio.Event().wait()
            result.usage = script.usage
        finally:
            self.closed_streams += 1

    async def aclose(self) -> None:
        return None
