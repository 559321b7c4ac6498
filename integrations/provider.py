"""The set-up every SDK adapter shares: one pooled SDK client, its key, and what its responses report.

`SdkAdapter` builds the vendor SDK's client with the SDK's own retries off (the resilience layer
retries), rotates its key, closes it, reads how long a 429 asked us to wait, and words an
upstream's error message without the key in it. `ChatSdkAdapter` adds what the chat models
(`OpenAIChat`, `AnthropicChat`) have beyond that: model listing and reports of every response's
headers and rate-limit budget to their observers. Subclasses translate SDK errors into the
project's types; nothing here imports an SDK (`Sdk` names the pieces of one).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, ClassVar, Iterator, Mapping, TypeVar

from integrations.errors import MalformedResponse, Unavailable, UpstreamError
from integrations.http_errors import LimitHint, rate_limit_wait, utc_now
from integrations.llm import StreamResult

logger = logging.getLogger(__name__)

_Item = TypeVar("_Item")

_MESSAGE_LIMIT = 300


@dataclass(frozen=True)
class Sdk:
    """The pieces of one vendor SDK (openai, anthropic) that the shared set-up uses."""

    client: Callable[..., Any]  # AsyncOpenAI, AsyncAnthropic
    timeout: Callable[..., Any]  # its Timeout(read, connect=...)
    error: type[Exception]  # the base of everything it raises
    # A refused credential: its text may echo the key, so it is never kept as a cause.
    refusals: tuple[type[Exception], ...]
    # Failures it lets through unwrapped while it reads a response body.
    transport_errors: tuple[type[BaseException], ...] = ()


class SdkAdapter:
    """One upstream reached through a vendor SDK; subclasses translate its errors (`_translate`)."""

    # Read when a 429 has no Retry-After: a header holding the reset of the whole budget.
    reset_header: ClassVar[str | None] = None

    def __init__(
        self,
        sdk: Sdk,
        *,
        api_key: str,
        base_url: str | None,
        name: str,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.name = name
        self._sdk = sdk
        self._api_key = api_key
        self._now = now
        self._client = sdk.client(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=sdk.timeout(read_timeout, connect=connect_timeout),
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, base_url={str(self._client.base_url)!r})"

    def set_api_key(self, api_key: str) -> None:
        """Use a rotated key from the next request on; the SDK reads it for every request."""
        self._api_key = api_key
        self._client.api_key = api_key

    async def aclose(self) -> None:
        await self._client.close()

    def rate_limit_wait(self, headers: Mapping[str, str]) -> float | None:
        """Retry-After when given; else the reset header, if any; else when the exhausted budget refills."""
        now = self._now()
        return rate_limit_wait(headers, now, self._limit_hint(headers, now), reset_header=self.reset_header)

    def _limit_hint(self, headers: Mapping[str, str], now: datetime) -> LimitHint | None:
        """The rate budget the upstream's headers report; None when it reports none we read."""
        return None

    def _translate(self, err: Any, *, request_id: str | None) -> UpstreamError:
        """The project error an SDK error (`self._sdk.error`) stands for."""
        raise NotImplementedError

    @contextmanager
    def _reading(self, request_id: str | None, item: str) -> Iterator[None]:
        """Turn what reading a streamed response raises into the project's error types."""
        try:
            yield
        except self._sdk.error as err:
            raise self._translate(err, request_id=request_id) from self._cause(err)
        except self._sdk.transport_errors as err:
            raise Unavailable(
                f"the stream broke off ({type(err).__name__})", upstream=self.name, request_id=request_id
            ) from err
        except ValueError as err:
            # json.JSONDecodeError and UnicodeDecodeError: an `item` that is not the documented JSON.
            raise MalformedResponse(
                f"unreadable {item} ({type(err).__name__})", upstream=self.name, request_id=request_id
            ) from err

    def _cause(self, err: Exception) -> BaseException | None:
        """Keep the SDK error as the cause, except a refused credential whose text may echo the key."""
        return None if isinstance(err, self._sdk.refusals) else err

    def _error_text(self, label: str, message: str) -> str:
        return describe_error(label, message, self._api_key)


class ChatSdkAdapter(SdkAdapter):
    """A chat model upstream: lists its models and reports each response's headers and rate budget."""

    default_name: ClassVar[str]
    sdk: ClassVar[Sdk]

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        name: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        on_limits: Callable[[LimitHint], None] | None = None,
        on_headers: Callable[[Mapping[str, str]], None] | None = None,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        super().__init__(
            self.sdk,
            api_key=api_key,
            base_url=base_url,
            name=name or self.default_name,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            now=now,
        )
        self._on_limits = on_limits
        # Sees every response's headers (Deprecation / Sunset signals).
        self._on_headers = on_headers

    async def list_models(self) -> list[str]:
        try:
            return [model.id async for model in self._client.models.list()]
        except self._sdk.error as err:
            raise self._translate(err, request_id=None) from self._cause(err)
        except self._sdk.transport_errors as err:
            raise Unavailable(f"connection failed ({type(err).__name__})", upstream=self.name) from err
        except ValueError as err:
            raise MalformedResponse("the model list is not valid JSON", upstream=self.name) from err

    def _take_from(self, take: Callable[[_Item, StreamResult], str], item: _Item, result: StreamResult, what: str) -> str:
        """`take(item, result)`: the text of one streamed item, recording usage and stop reason in `result`."""
        try:
            return take(item, result)
        except (AttributeError, TypeError, KeyError) as err:
            # A documented field that is missing shows up here: the SDKs build their objects
            # leniently (AttributeError), a chunk read as JSON lacks the key (KeyError).
            raise MalformedResponse(
                f"{what} lacks a documented field", upstream=self.name, request_id=result.request_id
            ) from err

    def _report_limits(self, headers: Mapping[str, str]) -> None:
        if self._on_headers is not None:
            try:
                self._on_headers(headers)
            except Exception:  # an observer must never break a reply
                logger.exception("%s: on_headers callback failed", self.name)
        hint = self._limit_hint(headers, self._now())
        if hint is None or self._on_limits is None:
            return
        try:
            self._on_limits(hint)
        except Exception:
            # A broken observer must not fail the call it was only watching.
            logger.exception("%s: on_limits callback failed", self.name)


def describe_error(label: str, message: str, secret: str = "") -> str:
    """`label: message` for an upstream's error, the key taken out and the message cut short."""
    if secret:
        message = message.replace(secret, "[redacted]")
    return f"{label}: {message[:_MESSAGE_LIMIT]}" if message else label


def root_cause_name(err: BaseException) -> str:
    """The type of what an SDK error wraps (a connect error, a reset), else its own type."""
    cause = err.__cause__ or err.__context__
    return type(cause).__name__ if cause is not None else type(err).__name__
