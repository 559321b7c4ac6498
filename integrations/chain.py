"""The model chain: one answer, whichever models it takes.

Models are tried in order (the user's pick first). A model that fails before its first token
(error, open breaker, or no first token in time) hands over silently to the next. A model that
fails after it started answering hands over too: the next model is asked to continue from the
text already shown, the overlap is dropped, and the caller gets a `ModelTookOver` event so the
user sees who took over. Only when every model failed does the caller see an error.

No first token in time is not retried on the spot (`NoFirstToken` is not retryable): the next
model is asked at once. Only when every model has failed does a model that stalled get one more
try, and only if no other model stalled: each stall costs the user one first-token timeout, and
a lone one at most two.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, field
from typing import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence, TypeVar

from integrations.clock import Clock, Watchdog, wait_for
from integrations.context_window import estimate_conversation, estimate_tokens, trim_to_budget
from integrations.errors import BadRequest, ContextTooLong, MalformedResponse, Unavailable, UpstreamError
from integrations.llm import ChatMessage, ChatProvider, ChatRequest, ModelRef, StreamResult, Usage

log = logging.getLogger(__name__)

T = TypeVar("T")
OpenPolicy = Callable[[ModelRef, ChatRequest, Callable[[], Awaitable["OpenedStream"]]], Awaitable["OpenedStream"]]

CONTINUE_INSTRUCTION = (
    "Your previous reply was cut off by a technical fault. Continue it from exactly where it stops, "
    "mid-sentence if need be. Do not repeat any of it and do not add a preamble."
)
OVERLAP_WINDOW = 300


@dataclass(frozen=True)
class ChainTimeouts:
    first_token: float = 20.0
    idle: float = 30.0
    total: float = 300.0


@dataclass(frozen=True)
class ChainModel:
    ref: ModelRef
    provider: ChatProvider
    context_tokens: int = 100_000
    # Shown with every reply from this model (the small offline model says what it is).
    marker: str | None = None
    # Whether it takes images (integrations/vision.py): a question with images skips it if not.
    sees_images: bool = True


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ModelTookOver:
    previous: ModelRef
    model: ModelRef
    reason: str


# Stop reasons that mean the answer was cut at its length limit (OpenAI, Anthropic, Responses API).
LENGTH_STOPS = frozenset({"length", "max_tokens", "max_output_tokens"})


@dataclass(frozen=True)
class Completed:
    model: ModelRef
    marker: str | None
    usage: tuple[tuple[ModelRef, Usage], ...]
    # The answer stopped at the token limit, not because it was done.
    truncated: bool = False


ChainEvent = TextDelta | ModelTookOver | Completed


class CannotSeeImages(BadRequest):
    """The question has images and this model takes none: skipped without being asked."""


class NoFirstToken(Unavailable):
    """The model sent nothing within the first-token timeout: ask the next model, do not wait again."""

    retryable = False


@dataclass
class Failure:
    model: ModelRef
    error: UpstreamError


class AllModelsFailed(Exception):
    def __init__(self, failures: Sequence[Failure], partial_text: str = "", usage: Sequence[tuple[ModelRef, Usage]] = ()) -> None:
        self.failures = list(failures)
        self.partial_text = partial_text
        self.usage = tuple(usage)
        summary = "; ".join(f"{f.model}: {f.error}" for f in self.failures) or "no model is configured"
        super().__init__(f"every model failed ({summary})")


@dataclass
class OpenedStream:
    stream: AsyncIterator[str]
    first: str
    result: StreamResult
    # Called once the stream is over, however it ended (e.g. to settle a token reservation).
    on_finish: list[Callable[[StreamResult], None]] = field(default_factory=list)

    @property
    def request_id(self) -> str | None:
        return self.result.request_id

    def finish(self) -> None:
        callbacks, self.on_finish = self.on_finish, []
        for callback in callbacks:
            callback(self.result)


_END = object()


async def _next_chunk(stream: AsyncIterator[str]) -> object:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return _END


async def _pass_through(ref: ModelRef, request: ChatRequest, call: Callable[[], Awaitable[OpenedStream]]) -> OpenedStream:
    return await call()


@dataclass
class ModelChain:
    models: Sequence[ChainModel]
    clock: Clock
    timeouts: ChainTimeouts = field(default_factory=ChainTimeouts)
    open_policy: OpenPolicy = _pass_through
    # Models still starting (the offline model, started in the background so that the bot's own
    # start does not wait for it): a question that finds no model at all waits for them.
    starting: "asyncio.Future[Sequence[ChainModel]] | None" = None
    starting_wait: float = 120.0

    def models_when_started(self, models: "asyncio.Future[Sequence[ChainModel]]") -> None:
        """Take the chain `models` will give (the same models plus those that started)."""
        self.starting = models

        def adopt(done: "asyncio.Future[Sequence[ChainModel]]") -> None:
            if not done.cancelled() and done.exception() is None:
                self.models = done.result()

        models.add_done_callback(adopt)

    @property
    def started(self) -> bool:
        """Whether every model has started (the offline model may still be on its way)."""
        return self.starting is None or self.starting.done()

    async def _started(self) -> None:
        if self.models or self.starting is None or self.starting.done():
            return
        try:
            await wait_for(self.clock, asyncio.shield(self.starting), self.starting_wait)
        except TimeoutError:
            pass

    @property
    def refs(self) -> list[ModelRef]:
        return [m.ref for m in self.models]

    def find(self, text: str) -> ModelRef | None:
        """Match `provider:model` or a bare model name against the configured chain."""
        wanted = text.strip().lower()
        for ref in self.refs:
            if wanted in (str(ref).lower(), ref.model.lower()):
                return ref
        return None

    def sees_images(self, preferred: ModelRef | None = None) -> bool:
        """Whether any model of the chain could answer a question with images."""
        return any(model.sees_images for model in self.ordered(preferred))

    def ordered(self, preferred: ModelRef | None) -> list[ChainModel]:
        first = [m for m in self.models if m.ref == preferred]
        return first + [m for m in self.models if m.ref != preferred]

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        system: str | None,
        max_tokens: int,
        preferred: ModelRef | None = None,
    ) -> AsyncGenerator[ChainEvent, None]:
        await self._started()
        failures: list[Failure] = []
        usage: list[tuple[ModelRef, Usage]] = []
        shown = ""
        previous: ModelRef | None = None
        deadline = self.clock.monotonic() + self.timeouts.total
        with_images = any(message.images for message in messages)
        for model in self._attempts(preferred, failures):
            if with_images and not model.sees_images:
                failures.append(Failure(model.ref, CannotSeeImages("can't see images", upstream=str(model.ref))))
                continue
            conversation = list(messages)
            if shown:
                conversation += [ChatMessage("assistant", shown), ChatMessage("user", CONTINUE_INSTRUCTION)]
            try:
                opened = await self._open(model, conversation, system, max_tokens)
            except UpstreamError as error:
                log.info("model %s failed before answering: %s", model.ref, error)
                failures.append(Failure(model.ref, error))
                continue
            if previous is not None and shown:
                yield ModelTookOver(previous, model.ref, str(failures[-1].error) if failures else "")
            produced = ""
            try:
                async for text in self._continue(opened, model, shown, deadline):
                    produced += text
                    yield TextDelta(text)
            except UpstreamError as error:
                log.warning("model %s failed mid-answer after %d characters: %s", model.ref, len(produced), error)
                failures.append(Failure(model.ref, error))
                usage.append((model.ref, opened.result.usage))
                shown += produced
                previous = model.ref
                continue
            usage.append((model.ref, opened.result.usage))
            yield Completed(model.ref, model.marker, tuple(usage), opened.result.stop_reason in LENGTH_STOPS)
            return
        raise AllModelsFailed(failures, shown, usage)

    def _attempts(self, preferred: ModelRef | None, failures: list[Failure]) -> Iterator[ChainModel]:
        """Each model once, in order; then, if exactly one of them stalled, that one once more.

        A lone stall may be a fluke worth a second try; after two the user has waited long enough.
        Read lazily while `failures` fills up; the stall's entry gives way to the second try's outcome.
        """
        order = self.ordered(preferred)
        yield from order
        stalls = [f for f in failures if isinstance(f.error, NoFirstToken)]
        if len(stalls) == 1:
            failures.remove(stalls[0])
            log.info("%s was the only model to stall and no other is left: trying it once more", stalls[0].model)
            yield next(m for m in order if m.ref == stalls[0].model)

    async def _open(self, model: ChainModel, conversation: list[ChatMessage], system: str | None, max_tokens: int) -> OpenedStream:
        budget = model.context_tokens - max_tokens - estimate_tokens(system or "")
        trimmed_once = False
        while True:
            request = ChatRequest(model.ref.model, trim_to_budget(conversation, budget, model.ref.provider), system, max_tokens)
            try:
                return await self.open_policy(model.ref, request, functools.partial(self._first_token, model, request))
            except ContextTooLong:
                if trimmed_once or len(request.messages) <= 1:
                    raise
                # Our estimate was too generous for this model: drop the older half and try once more.
                trimmed_once = True
                budget = estimate_conversation(request.messages, model.ref.provider) // 2

    async def _first_token(self, model: ChainModel, request: ChatRequest) -> OpenedStream:
        result = StreamResult()
        stream = model.provider.stream(request, result)
        # A watchdog, not wait_for: the first token is awaited here, not in two tasks of its own,
        # so it reaches the user without extra turns of the event loop.
        watchdog = Watchdog(self.clock)
        try:
            with watchdog.limit(self.timeouts.first_token):
                first = await _next_chunk(stream)
        except TimeoutError:
            await _close(stream)
            raise NoFirstToken(f"no first token within {self.timeouts.first_token:g} s", upstream=str(model.ref)) from None
        except BaseException:
            await _close(stream)
            raise
        finally:
            watchdog.close()
        if first is _END:
            raise MalformedResponse("the model returned an empty answer", upstream=str(model.ref))
        return OpenedStream(stream, str(first), result)

    async def _continue(self, opened: OpenedStream, model: ChainModel, shown: str, deadline: float) -> AsyncIterator[str]:
        """Yield the model's text, dropping what repeats `shown`, with idle and total timeouts.

        One watchdog times every chunk's wait: `wait_for` would start two tasks per chunk."""
        pending = opened.first
        deduplicated = not shown
        watchdog = Watchdog(self.clock)
        try:
            while True:
                if deduplicated and pending:
                    yield pending
                    pending = ""
                timeout = min(self.timeouts.idle, deadline - self.clock.monotonic())
                if timeout <= 0:
                    raise Unavailable(f"answer exceeded {self.timeouts.total:g} s", upstream=str(model.ref))
                try:
                    with watchdog.limit(timeout):
                        chunk = await _next_chunk(opened.stream)
                except TimeoutError:
                    raise Unavailable(f"stream stalled for {timeout:g} s", upstream=str(model.ref)) from None
                if chunk is _END:
                    break
                pending += str(chunk)
                if not deduplicated and len(pending) >= OVERLAP_WINDOW:
                    pending = drop_overlap(shown, pending)
                    deduplicated = True
            if not deduplicated:
                pending = drop_overlap(shown, pending)
            if pending:
                yield pending
        finally:
            watchdog.close()
            await _close(opened.stream)
            opened.finish()


def drop_overlap(shown: str, continuation: str) -> str:
    """Remove the start of `continuation` that repeats the end of `shown`."""
    tail = shown[-OVERLAP_WINDOW:]
    for size in range(min(len(tail), len(continuation)), 0, -1):
        if tail.endswith(continuation[:size]) and (size >= 8 or size == len(continuation) or continuation[:size].strip() == ""):
            return continuation[size:]
    return continuation


async def _close(stream: AsyncIterator[str]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # closing a broken stream may raise again; the failure is already handled
            pass
