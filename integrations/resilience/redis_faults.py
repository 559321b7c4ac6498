"""Why Redis could not be used, in one line that names the part of REDIS_URL to fix (`switchboard check`).

redis-py's own messages name its internals ("HELLO must be called with the client already
authenticated...", "Error 111 connecting to ..."); an operator needs the setting to change. The
URL is shown without its password (`redis_location`).
"""
from __future__ import annotations

import errno
from urllib.parse import urlsplit

from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from integrations.resilience.redis_link import redis_location

# What Redis says when it wants a password and none was given (RESP2 and RESP3 wordings).
_NO_PASSWORD_GIVEN = ("NOAUTH", "Authentication required", "HELLO must be called")


def redis_fault(error: BaseException, url: str, timeout: float) -> str:
    """One line: what went wrong reaching or using Redis at `url`, and what to do about it."""
    where = redis_location(url)
    user = urlsplit(url).username
    if isinstance(error, AuthenticationError):
        if any(marker in str(error) for marker in _NO_PASSWORD_GIVEN) and urlsplit(url).password is None:
            return f"Redis at {where} needs a password, which REDIS_URL lacks (redis://:PASSWORD@host:port/db)"
        who = f" of user {user}" if user else ""
        # No colon after "password": the redactor would take the words after it for one.
        return f"Redis at {where} refused the password{who}; check it in REDIS_URL"
    if isinstance(error, NoPermissionError):
        return f"Redis at {where} refused a command to user {user or 'default'} ({error}): allow it in the server's ACL"
    if isinstance(error, ResponseError) and "DB index" in str(error):
        database = urlsplit(url).path.lstrip("/") or "0"
        return (
            f"Redis at {where} has no database {database} (a server has 16 unless told otherwise, 0 to 15): "
            "fix the number at the end of REDIS_URL"
        )
    if isinstance(error, (TimeoutError, RedisTimeoutError)):
        return (
            f"Redis at {where} did not answer within {timeout:g} s: is the server stopped or overloaded, "
            "or is something dropping the connection?"
        )
    if isinstance(error, (RedisConnectionError, OSError)):
        return f"cannot reach Redis at {where} ({_reason(error)}): is redis-server running, and are the host and port in REDIS_URL right?"
    return f"Redis at {where} failed: {type(error).__name__}: {error}"


def _reason(error: BaseException) -> str:
    cause = error.__cause__ or error.__context__
    text = str(error)
    if isinstance(cause, ConnectionRefusedError) or "Error 111 " in text or "refused" in text.lower():
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text or f"Error {-2} " in text:
        return "no such host"
    if isinstance(cause, OSError) and cause.errno is not None:
        return errno.errorcode.get(cause.errno, str(cause.errno))
    return type(error).__name__
