"""Switchboard's settings: read at start, validated all at once, secrets kept out of sight.

Sources, strongest first: a file named like the setting in systemd's `$CREDENTIALS_DIRECTORY`
(`LoadCredential=`), the process environment, then the `.env` file. Values are stripped and an
empty value counts as unset, so a variable exported empty (as docker compose does for an unset
`${VAR}`) does not hide the file's value.

Every problem is collected and reported in one `ConfigError`, so an operator fixes the whole file
in one pass rather than one restart per typo. A name that looks like a setting but is none (a typo:
`OPENAI_APIKEY`) is not a problem but a warning naming the closest setting. Secrets are wrapped in
`Secret` as soon as they are read, and problems about them say what is wrong without echoing them.

Each default is written once, on its settings dataclass below; `load_settings` reads it from there
(`Settings.llm_max_tokens`), and `bot.settings_parsing` turns a value's text into a number.
"""
from __future__ import annotations

import difflib
import hmac
import importlib.util
import io
import logging
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence, TypeVar
from urllib.parse import SplitResult, urlsplit

from dotenv.parser import parse_stream

from bot.settings_parsing import (
    OFF,
    boolean,
    duration,
    non_negative_float,
    positive_float,
    positive_int,
    share,
)
from handlers.modes import BUILTIN_MODES, Mode, ModesFileError, with_modes_file
from integrations.llm import ModelRef

logger = logging.getLogger(__name__)

T = TypeVar("T")

PROVIDERS = ("anthropic", "openai", "local")
DEFAULT_MODELS = (ModelRef("anthropic", "claude-sonnet-4-6"), ModelRef("openai", "gpt-5.1"))
DEFAULT_SYSTEM_PROMPT = (
    "You are Switchboard, a helpful assistant chatting with people on Telegram. "
    "Answer accurately and concisely, in the language the user writes in, and say so when you "
    "are not sure. Format replies in Markdown (bold, italics, lists, links, inline code and "
    "fenced code blocks); avoid tables and HTML, which Telegram cannot display."
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOCAL_MODES = ("auto", "off")
LOG_FORMATS = ("kv", "json")
PERPLEXITY_PRESETS = ("fast", "low", "medium", "high", "xhigh")

_API_HASH = re.compile(r"[0-9a-fA-F]{32}")
_BOT_TOKEN = re.compile(r"[0-9]+:[A-Za-z0-9_-]{35,}")
_ENV_LINE_NAME = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")  # what an HTTP header value can carry unmangled
_TELEGRAM_REQUIRED = ("TELEGRAM_API_ID", "TELEGRAM_API_HASH", "TELEGRAM_BOT_TOKEN")
_MY_TELEGRAM = "copy it from https://my.telegram.org (API development tools)"
_TELEGRAM_HELP = (
    "get the API id and hash at https://my.telegram.org (API development tools) and the bot token "
    "from @BotFather, or unset every TELEGRAM_* setting to run in console mode"
)
# A name with one of these prefixes is meant for Switchboard (or the SDKs it drives).
SETTING_PREFIXES = ("TELEGRAM_", "OPENAI_", "ANTHROPIC_", "NOTION_", "PERPLEXITY_", "LLM_", "STT_", "REDIS_", "DATABASE_")
# Read by the OpenAI and Anthropic SDKs themselves, so not unknown although Switchboard never reads them.
SDK_SETTINGS = frozenset({
    "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "OPENAI_WEBHOOK_SECRET", "OPENAI_CUSTOM_HEADERS", "OPENAI_LOG",
    "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_CUSTOM_HEADERS", "ANTHROPIC_WEBHOOK_SIGNING_KEY", "ANTHROPIC_LOG",
})
# Without a prefix, a name this close to a setting's is taken for a typo of it (ADMIN_ID, LOGLEVEL);
# with one, a setting this close is suggested (NOTION_DB_ID: NOTION_DATABASE_ID).
_TYPO_SIMILARITY = 0.85
_SUGGESTION_SIMILARITY = 0.75


class Secret:
    """A secret string that does not show itself in reprs, logs or f-strings by accident."""

    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str) -> None:
        object.__setattr__(self, "_value", value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Secret is immutable")

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


class ConfigError(Exception):
    """Everything wrong with the settings, each problem naming the setting and the fix."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = [f"Switchboard cannot start: {count} configuration {noun}:"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


@dataclass(frozen=True)
class EnvFile:
    """An env file's settings, and the lines python-dotenv could not read (it would skip them)."""

    values: Mapping[str, str | None]
    # (line number, the setting the line seems to be about, if its start says)
    unreadable: tuple[tuple[int, str | None], ...] = ()

    @classmethod
    def parse(cls, text: str) -> EnvFile:
        values: dict[str, str | None] = {}
        unreadable = []
        # No ${VAR} expansion: a key containing "$" stays intact, and nothing leaks in from
        # variables the operator did not mean to reference.
        for binding in parse_stream(io.StringIO(text)):
            if binding.error:
                name = _ENV_LINE_NAME.match(binding.original.string)
                unreadable.append((binding.original.line, name[1] if name else None))
            elif binding.key is not None:
                values[binding.key] = binding.value
        return cls(values, tuple(unreadable))


class CredentialSource:
    """Looks settings up in their sources on every call, so a rotated key is seen without a restart.

    Strongest first: `credentials_dir/NAME`, `environ`, `env_file`. `get` raises OSError or
    UnicodeDecodeError if a file exists but cannot be read; a missing file is simply no value.
    """

    def __init__(
        self,
        environ: Mapping[str, str],
        env_file: Path | None = None,
        credentials_dir: Path | None = None,
    ) -> None:
        self.environ = environ
        self.env_file = env_file
        self.credentials_dir = credentials_dir

    def get(self, name: str) -> str | None:
        return self.pick(name, self.read_env_file().values)

    def read_env_file(self) -> EnvFile:
        if self.env_file is None or not self.env_file.is_file():
            return EnvFile({})
        return EnvFile.parse(self.env_file.read_text(encoding="utf-8"))

    def pick(self, name: str, file_values: Mapping[str, str | None]) -> str | None:
        """`get`, against env-file values already read (one consistent snapshot for start-up)."""
        for value in (self.read_credential(name), self.environ.get(name), file_values.get(name)):
            value = (value or "").strip()
            if value:
                return value
        return None

    def credential_path(self, name: str) -> Path | None:
        return None if self.credentials_dir is None else self.credentials_dir / name

    def read_credential(self, name: str) -> str | None:
        path = self.credential_path(name)
        if path is None:
            return None
        try:
            return path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            return None


@dataclass(frozen=True)
class DcOverride:
    """TELEGRAM_DC: connect to this data centre instead of the one Telethon picks (test servers)."""

    dc_id: int
    host: str
    port: int


@dataclass(frozen=True)
class TelegramSettings:
    api_id: int
    api_hash: Secret
    bot_token: Secret
    session_path: Path
    dc: DcOverride | None = None


@dataclass(frozen=True)
class PerplexitySettings:
    api_key: Secret
    base_url: str = "https://api.perplexity.ai/v1"
    model: str = "perplexity/sonar"
    # A preset (fast, low, medium, high, xhigh) bundles model and tools; it replaces `model`.
    preset: str | None = None
    requests_per_minute: float = 50.0


@dataclass(frozen=True)
class SttSettings:
    """Speech to text for voice and audio messages: an OpenAI-compatible /v1/audio/transcriptions."""

    model: str
    # None: a server that takes no key (a self-hosted faster-whisper-server).
    api_key: Secret | None
    # Where the key is read again after a 401: STT_API_KEY, or OPENAI_API_KEY it fell back to.
    key_setting: str = "STT_API_KEY"
    base_url: str = "https://api.openai.com/v1"
    max_seconds: float = 600.0
    # OpenAI and Groq (free tier) refuse uploads over 25 MB.
    max_bytes: int = 25 * 1024 * 1024
    requests_per_minute: float = 50.0
    timeout: float = 120.0
    # USD per minute of audio, overriding the built-in price of `model`.
    price_per_minute: float | None = None


@dataclass(frozen=True)
class PhotoSettings:
    """Photos and image files, answered by a model that can see them."""

    # Larger images (by Telegram's own figure) are refused before download (IMAGE_MAX_MB).
    max_bytes: int = 20 * 1024 * 1024
    # At most this many images in one question; an album with more gets a reply (ALBUM_MAX_IMAGES).
    max_images: int = 10
    # The models that take images (LLM_VISION_MODELS); None: the known table (integrations/vision.py).
    vision_models: frozenset[ModelRef] | None = None


@dataclass(frozen=True)
class NotionSettings:
    token: Secret
    database_id: str
    base_url: str | None = None
    requests_per_second: float = 3.0


@dataclass(frozen=True)
class RedisSettings:
    """REDIS_URL: rate limits, token budgets, breakers and flood pauses shared by every instance."""

    url: Secret  # may carry a password
    # INSTANCES: how many instances share the limits; while Redis is unreachable each keeps 1/N.
    instances: int = 1
    # REDIS_TIMEOUT: longest one Redis call may take before this instance's own share takes over.
    timeout: float = 0.5


@dataclass(frozen=True)
class InstanceSettings:
    """Several instances against one PostgreSQL (DATABASE_URL): one leads (receives from Telegram),
    every one answers the chats it holds (bot/chat_sharing.py), another takes over when it dies."""

    # INSTANCE_NAME: how /status names this instance; give each instance on one host its own.
    name: str = field(default_factory=socket.gethostname)
    # LEASE_SECONDS: a leader that cannot confirm its lease for this long stops receiving; a
    # worker tries to take the lease every second. Also how long a chat's claim outlives the last
    # time its instance kept it.
    lease_seconds: float = 10.0


@dataclass(frozen=True)
class LimitSettings:
    """How hard the bot may push each upstream, and how long it waits on one."""

    anthropic_requests_per_minute: float = 50.0
    anthropic_tokens_per_minute: int = 400_000
    openai_requests_per_minute: float = 500.0
    openai_tokens_per_minute: int = 500_000
    retry_after_cap: float = 20.0
    breaker_failures: int = 5
    breaker_window: float = 60.0
    breaker_cooldown: float = 30.0
    user_messages_per_minute: int = 10
    # None: no daily budget unless an admin sets one with /budget.
    user_daily_budget_usd: float | None = None
    # None: no monthly budget unless an admin sets one with /budget <id> <usd> month.
    user_monthly_budget_usd: float | None = None
    search_cache_ttl: float = 300.0
    schema_cache_ttl: float = 3600.0
    cache_max_entries: int = 2000
    shutdown_grace: float = 20.0
    # A message the bot could not answer before it stopped gets a short note instead of an answer
    # when the bot comes back later than this.
    pending_max_age: float = 3600.0
    # Longest one call to Perplexity or Notion may take (a whole streamed search answer included).
    knowledge_timeout: float = 120.0


@dataclass(frozen=True)
class ConversationSettings:
    """How long a conversation grows: summarised past a share of the model's window, and started
    afresh after being idle."""

    # Summarise older turns once the context passes this share of the answering model's context
    # window (COMPACT_AT); None: never, only trim.
    compact_at: float | None = 0.75
    # Longest a summary may take, in seconds (COMPACT_TIMEOUT).
    compact_timeout: float = 20.0
    # Seconds after which an idle conversation starts afresh (CONVERSATION_IDLE_RESET); None: never.
    idle_reset: float | None = None


@dataclass(frozen=True)
class DocumentSettings:
    """Documents users send (text, Markdown, code, PDF): how much of them is read."""

    # Larger files (by Telegram's own figure) are refused before download (DOC_MAX_MB).
    max_bytes: int = 20 * 1024 * 1024
    # PDFs with more pages are refused (DOC_MAX_PAGES): reading one takes CPU time.
    max_pages: int = 100
    # Characters of a document kept in the conversation (DOC_MAX_CHARS); the rest is cut, saying so.
    max_chars: int = 40_000


@dataclass(frozen=True, kw_only=True)
class Settings:
    telegram: TelegramSettings | None = None
    openai_api_key: Secret | None = None
    openai_base_url: str | None = None
    anthropic_api_key: Secret | None = None
    anthropic_base_url: str | None = None
    llm_models: tuple[ModelRef, ...] = ()
    admin_ids: frozenset[int] = frozenset()
    allowed_user_ids: frozenset[int] = frozenset()
    allow_everyone: bool = False
    state_dir: Path = Path("state-data")
    # DATABASE_URL: the state in PostgreSQL; None keeps it in SQLite under state_dir.
    database_url: Secret | None = None
    llm_first_token_timeout: float = 20.0
    llm_idle_timeout: float = 30.0
    llm_total_timeout: float = 300.0
    llm_connect_timeout: float = 10.0
    llm_max_tokens: int = 1024
    llm_context_tokens: int = 100_000
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    # What /mode offers: the built-in modes, extended by LLM_MODES_FILE.
    modes: tuple[Mode, ...] = BUILTIN_MODES
    log_level: str = "INFO"
    env_file: Path | None = None
    llm_local: str = "auto"
    perplexity: PerplexitySettings | None = None
    notion: NotionSettings | None = None
    stt: SttSettings | None = None
    photos: PhotoSettings = field(default_factory=PhotoSettings)
    redis: RedisSettings | None = None
    instance: InstanceSettings = field(default_factory=InstanceSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    conversation: ConversationSettings = field(default_factory=ConversationSettings)
    documents: DocumentSettings = field(default_factory=DocumentSettings)
    # "model=input/output" USD per million tokens, overriding the built-in price table.
    llm_prices: tuple[tuple[str, float, float], ...] = ()
    log_format: str = "kv"
    credentials: CredentialSource = field(
        default_factory=lambda: CredentialSource({}), compare=False, repr=False
    )
    # Not problems, but worth a line at start: names that look like settings but are none.
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def secret_values(self) -> tuple[str, ...]:
        """Every secret's raw value, for the log redaction filter."""
        secrets = [self.openai_api_key, self.anthropic_api_key]
        if self.database_url is not None and urlsplit(self.database_url.reveal()).password:
            secrets.append(Secret(urlsplit(self.database_url.reveal()).password or ""))
        if self.perplexity is not None:
            secrets.append(self.perplexity.api_key)
        if self.notion is not None:
            secrets.append(self.notion.token)
        if self.stt is not None:
            secrets.append(self.stt.api_key)
        if self.telegram is not None:
            secrets += [self.telegram.api_hash, self.telegram.bot_token]
        redis_password = urlsplit(self.redis.url.reveal()).password if self.redis is not None else None
        if redis_password:
            secrets.append(Secret(redis_password))
        return tuple(secret.reveal() for secret in secrets if secret)


def telegram_hint() -> str:
    return (
        "Running in console mode: set TELEGRAM_API_ID, TELEGRAM_API_HASH and TELEGRAM_BOT_TOKEN "
        "(in .env or the environment) to run the bot on Telegram."
    )


def load_settings(
    environ: Mapping[str, str] | None = None,
    env_file: Path | None = None,
    *,
    cwd: Path | None = None,
) -> Settings:
    """Read and check every setting; raise one ConfigError listing all problems."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    problems: list[str] = []
    source = CredentialSource(
        environ, _env_file(env_file, cwd, problems), _credentials_dir(environ, cwd, problems)
    )
    read = _Reader(source, cwd, problems)

    state_dir = _state_dir(read, cwd)
    telegram_intended, telegram = _telegram(read, state_dir)
    if not telegram_intended and environ.get("NOTIFY_SOCKET", "").strip():
        # systemd's Type=notify: a console there reads an empty stdin, exits 0 at once, and is
        # restarted over and over.
        problems.append(
            "TELEGRAM_API_ID, TELEGRAM_API_HASH and TELEGRAM_BOT_TOKEN are not set, but Switchboard runs "
            "as a systemd service (NOTIFY_SOCKET is set), where the console cannot work: "
            "get the API id and hash at https://my.telegram.org (API development tools) and the bot "
            "token from @BotFather, and give them to the service (its env file or credentials)."
        )

    openai_api_key = read.secret("OPENAI_API_KEY")
    anthropic_api_key = read.secret("ANTHROPIC_API_KEY")
    openai_base_url = read.url("OPENAI_BASE_URL")
    configured = {"local"}
    if read.raw("OPENAI_API_KEY") or read.raw("OPENAI_BASE_URL"):
        configured.add("openai")
    if read.raw("ANTHROPIC_API_KEY"):
        configured.add("anthropic")

    admin_ids = read.id_set("ADMIN_IDS")
    allowed_user_ids = read.id_set("ALLOWED_USER_IDS")
    allow_everyone = read.boolean("ALLOW_EVERYONE", Settings.allow_everyone)
    access_readable = all(
        read.is_valid(name) for name in ("ADMIN_IDS", "ALLOWED_USER_IDS", "ALLOW_EVERYONE")
    )
    if telegram_intended and access_readable:
        if not (admin_ids or allowed_user_ids or allow_everyone):
            problems.append(
                "ADMIN_IDS and ALLOWED_USER_IDS are both empty, so nobody could use the bot on "
                "Telegram. Fix it one of three ways: set ADMIN_IDS to your own Telegram user id "
                "(ask @userinfobot), set ALLOWED_USER_IDS to the users who may chat, "
                "or set ALLOW_EVERYONE=true to let anyone who finds the bot use it."
            )

    settings = Settings(
        telegram=telegram,
        openai_api_key=openai_api_key,
        openai_base_url=openai_base_url,
        anthropic_api_key=anthropic_api_key,
        anthropic_base_url=read.url("ANTHROPIC_BASE_URL"),
        llm_models=_models(read, configured),
        admin_ids=admin_ids,
        allowed_user_ids=allowed_user_ids,
        allow_everyone=allow_everyone,
        state_dir=state_dir,
        database_url=_database_url(read),
        llm_first_token_timeout=read.seconds("LLM_FIRST_TOKEN_TIMEOUT", Settings.llm_first_token_timeout),
        llm_idle_timeout=read.seconds("LLM_IDLE_TIMEOUT", Settings.llm_idle_timeout),
        llm_total_timeout=read.seconds("LLM_TOTAL_TIMEOUT", Settings.llm_total_timeout),
        llm_connect_timeout=read.seconds("LLM_CONNECT_TIMEOUT", Settings.llm_connect_timeout),
        llm_max_tokens=read.count("LLM_MAX_TOKENS", Settings.llm_max_tokens),
        llm_context_tokens=read.count("LLM_CONTEXT_TOKENS", Settings.llm_context_tokens),
        system_prompt=read.raw("LLM_SYSTEM_PROMPT") or Settings.system_prompt,
        modes=_modes(read),
        log_level=read.choice("LOG_LEVEL", LOG_LEVELS, Settings.log_level, aliases={"WARN": "WARNING"}),
        env_file=source.env_file,
        llm_local=read.choice("LLM_LOCAL", LOCAL_MODES, Settings.llm_local),
        perplexity=_perplexity(read),
        notion=_notion(read),
        stt=_stt(read, openai_api_key),
        photos=_photos(read),
        redis=_redis(read),
        instance=_instance(read),
        limits=_limits(read),
        llm_prices=_prices(read),
        conversation=_conversation(read),
        documents=_documents(read),
        log_format=read.choice("LOG_FORMAT", LOG_FORMATS, Settings.log_format),
        credentials=source,
        warnings=read.unknown_names(environ),
    )
    if problems:
        raise ConfigError(problems)
    logger.debug("settings read from the environment and %s", source.env_file or "no .env file")
    return settings


class _Reader:
    """Reads settings from one snapshot of the env file, turning every bad value into a problem."""

    def __init__(self, source: CredentialSource, cwd: Path, problems: list[str]) -> None:
        self.source = source
        self.cwd = cwd
        self.problems = problems
        self.invalid: set[str] = set()
        self.seen: dict[str, str | None] = {}
        try:
            env_file = source.read_env_file()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"env file {source.env_file}: cannot be read ({_reason(exc)}).")
            env_file = EnvFile({})
        self.file_values = env_file.values
        for line, name in env_file.unreadable:
            about = f" (it seems to set {name})" if name else ""
            # The line itself is not shown: it may hold a secret.
            problems.append(
                f"env file {source.env_file}: line {line}{about} is not NAME=value, so it would be "
                "ignored; an unclosed quote or a space in the name is the usual cause. Fix or remove it."
            )

    def problem(self, name: str, text: str) -> None:
        self.invalid.add(name)
        self.problems.append(f"{name} {text}")

    def is_valid(self, name: str) -> bool:
        return name not in self.invalid

    def raw(self, name: str) -> str | None:
        # Remembered, so start-up sees one snapshot and an unreadable file is reported once.
        if name not in self.seen:
            self.seen[name] = self._pick(name)
        return self.seen[name]

    def _pick(self, name: str) -> str | None:
        try:
            return self.source.pick(name, self.file_values)
        except (OSError, UnicodeDecodeError) as exc:
            self.problem(
                name,
                f"comes from the credential file {self.source.credential_path(name)}, which "
                f"cannot be read ({_reason(exc)}); check the LoadCredential= line of the unit.",
            )
            return None

    def secret(self, name: str) -> Secret | None:
        value = self.raw(name)
        if value is None:
            return None
        if not _HEADER_SAFE.fullmatch(value):
            self.problem(
                name,
                "contains spaces, line breaks or non-ASCII characters, so it cannot be a key; "
                "paste it again without the surrounding text.",
            )
        return Secret(value)

    def parsed(self, name: str, default: T, parse: Callable[[str], T | None], expected: str) -> T:
        value = self.raw(name)
        if value is None:
            return default
        result = parse(value)
        if result is None:
            self.problem(name, f"must be {expected}, not {value!r}.")
            return default
        return result

    def seconds(self, name: str, default: float) -> float:
        return self.parsed(name, default, positive_float, "a positive number of seconds")

    def count(self, name: str, default: int) -> int:
        return self.parsed(name, default, positive_int, "a positive whole number")

    def boolean(self, name: str, default: bool) -> bool:
        return self.parsed(name, default, boolean, "true or false (also yes/no, on/off, 1/0)")

    def choice(
        self,
        name: str,
        allowed: Sequence[str],
        default: str,
        aliases: Mapping[str, str] | None = None,
    ) -> str:
        def parse(text: str) -> str | None:
            for candidate in (text.upper(), text.lower()):
                candidate = (aliases or {}).get(candidate, candidate)
                if candidate in allowed:
                    return candidate
            return None

        return self.parsed(name, default, parse, "one of " + ", ".join(allowed))

    def id_set(self, name: str) -> frozenset[int]:
        entries = (self.raw(name) or "").replace(",", " ").split()
        bad = [entry for entry in entries if positive_int(entry) is None]
        if bad:
            self.problem(
                name,
                f"must list Telegram user ids (positive whole numbers, separated by commas or "
                f"spaces); these entries are not: {', '.join(repr(entry) for entry in bad)}.",
            )
        return frozenset(int(entry) for entry in entries if entry not in bad)

    def url(self, name: str) -> str | None:
        value = self.raw(name)
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # Not echoed: a URL may carry a token in its user info or query.
            self.problem(
                name,
                "must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8080/v1.",
            )
            return None
        return value

    def path(self, name: str, default: Path) -> Path:
        value = self.raw(name)
        return default if value is None else self.cwd / Path(value).expanduser()

    def unknown_names(self, environ: Mapping[str, str]) -> tuple[str, ...]:
        """A warning for each name in the env file or the environment that looks like a setting
        but is none, with the closest setting's name. Call it after every setting was read: the
        settings are the names asked for."""
        known = [*self.seen, "CREDENTIALS_DIRECTORY"]
        warnings = []
        for where, names in ((f"in {self.source.env_file}", self.file_values), ("in the environment", environ)):
            for name in sorted(set(names) - set(known) - SDK_SETTINGS):
                closest = difflib.get_close_matches(name, known, n=1, cutoff=_SUGGESTION_SIMILARITY)
                typo = bool(closest) and difflib.SequenceMatcher(None, name, closest[0]).ratio() >= _TYPO_SIMILARITY
                if not (name.startswith(SETTING_PREFIXES) or typo):
                    continue
                advice = f": did you mean {closest[0]}?" if closest else " (.env.example lists every setting)."
                warnings.append(f"{name} ({where}) is not a Switchboard setting, so it is ignored{advice}")
        return tuple(warnings)


def _env_file(explicit: Path | None, cwd: Path, problems: list[str]) -> Path | None:
    if explicit is None:
        default = cwd / ".env"
        return default if default.is_file() else None
    path = cwd / explicit
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        problems.append(
            f"env file {path} {what}; pass the path of an existing file, or copy .env.example "
            "to .env and fill it in."
        )
        return None
    return path


def _credentials_dir(environ: Mapping[str, str], cwd: Path, problems: list[str]) -> Path | None:
    value = environ.get("CREDENTIALS_DIRECTORY", "").strip()
    if not value:
        return None
    path = cwd / value
    if not path.is_dir():
        problems.append(
            f"CREDENTIALS_DIRECTORY {path} is not a directory; systemd sets it for units with "
            "LoadCredential=, so unset it when running the bot by hand."
        )
        return None
    return path


def _state_dir(read: _Reader, cwd: Path) -> Path:
    # systemd joins several StateDirectory= entries with ":"; ours is the first.
    systemd_dir = (read.raw("STATE_DIRECTORY") or "").split(":")[0]
    default = cwd / systemd_dir if systemd_dir else cwd / Settings.state_dir
    path = read.path("STATE_DIR", default)
    if path.exists() and not path.is_dir():
        read.problem("STATE_DIR", f"points at {path}, which is a file; it must be a directory.")
    return path


def _database_url(read: _Reader) -> Secret | None:
    """DATABASE_URL: postgresql://user:password@host:port/database, or unset for SQLite."""
    url = read.secret("DATABASE_URL")
    if url is None:
        return None
    parts = _split_url(url.reveal())
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname or not parts.path.strip("/"):
        # Not echoed: the URL may carry a password.
        read.problem(
            "DATABASE_URL",
            "must be a postgresql:// URL with a host and a database, e.g. "
            "postgresql://switchboard:PASSWORD@127.0.0.1:5432/switchboard; unset it to keep the state in "
            "SQLite under STATE_DIR.",
        )
        return None
    return url


def _split_url(value: str) -> SplitResult:
    """`value` split into its parts; one whose port is no number gets no host, to be reported."""
    parts = urlsplit(value)
    try:
        _ = parts.port
    except ValueError:
        return parts._replace(netloc="")
    return parts


def _telegram(read: _Reader, state_dir: Path) -> tuple[bool, TelegramSettings | None]:
    """(whether Telegram mode is intended, its settings if they are all valid)."""
    values = {name: read.raw(name) for name in (*_TELEGRAM_REQUIRED, "TELEGRAM_DC")}
    # Read even in console mode: every setting is read, so a name never read is not one.
    session_path = read.path("TELEGRAM_SESSION", state_dir / "switchboard.session")
    if not any(values.values()):
        return False, None
    before = len(read.problems)
    for name in _TELEGRAM_REQUIRED:
        if values[name] is None:
            read.problem(name, f"is not set, but other TELEGRAM_* settings are; {_TELEGRAM_HELP}.")

    api_id = values["TELEGRAM_API_ID"]
    if api_id is not None and positive_int(api_id) is None:
        read.problem(
            "TELEGRAM_API_ID",
            f"must be a positive whole number, not {api_id!r}; {_MY_TELEGRAM}.",
        )
    api_hash = values["TELEGRAM_API_HASH"]
    if api_hash is not None and not _API_HASH.fullmatch(api_hash):
        read.problem(
            "TELEGRAM_API_HASH",
            f"must be 32 hexadecimal characters (this value has {len(api_hash)} characters "
            f"and is not shown); {_MY_TELEGRAM}.",
        )
    bot_token = values["TELEGRAM_BOT_TOKEN"]
    if bot_token is not None and not _BOT_TOKEN.fullmatch(bot_token):
        read.problem(
            "TELEGRAM_BOT_TOKEN",
            "does not look like a bot token (digits, a colon, then at least 35 letters, digits, "
            "'_' or '-'; the value is not shown); copy it again from @BotFather.",
        )
    dc = _dc_override(read, values["TELEGRAM_DC"])

    if len(read.problems) > before or api_id is None or api_hash is None or bot_token is None:
        return True, None
    return True, TelegramSettings(
        int(api_id), Secret(api_hash), Secret(bot_token), session_path, dc
    )


def _dc_override(read: _Reader, value: str | None) -> DcOverride | None:
    if value is None:
        return None
    dc_id, _, rest = value.partition(":")
    host, _, port = rest.rpartition(":")  # rpartition keeps an IPv6 host's colons in the host
    host = host.strip().removeprefix("[").removesuffix("]")
    number, port_number = positive_int(dc_id.strip()), positive_int(port.strip())
    if number is None or not host or port_number is None or port_number > 65535:
        read.problem(
            "TELEGRAM_DC",
            f"must be id:host:port, e.g. 2:149.154.167.40:443 (port 1-65535), not {value!r}; "
            "leave it unset to let Telethon choose.",
        )
        return None
    return DcOverride(number, host, port_number)


def _models(read: _Reader, configured: set[str]) -> tuple[ModelRef, ...]:
    text = read.raw("LLM_MODELS")
    if text is None:
        return tuple(model for model in DEFAULT_MODELS if model.provider in configured)
    key_hint = {
        "anthropic": "ANTHROPIC_API_KEY is not set",
        "openai": "neither OPENAI_API_KEY nor OPENAI_BASE_URL (for a keyless "
        "OpenAI-compatible server) is set",
    }
    models: dict[ModelRef, None] = {}  # a dict keeps first-seen order while dropping repeats
    for entry in filter(None, (part.strip() for part in text.split(","))):
        try:
            model = ModelRef.parse(entry)
        except ValueError:
            read.problem(
                "LLM_MODELS",
                f"entry {entry!r} is not provider:model, e.g. anthropic:claude-sonnet-4-6.",
            )
            continue
        if model.provider not in PROVIDERS:
            read.problem(
                "LLM_MODELS",
                f"entry {entry!r} names an unknown provider {model.provider!r}; "
                f"use one of {', '.join(PROVIDERS)}.",
            )
        elif model.provider not in configured:
            read.problem(
                "LLM_MODELS",
                f"lists {model} but {key_hint[model.provider]}; set it or remove the model.",
            )
        else:
            models[model] = None
    return tuple(models)


def _perplexity(read: _Reader) -> PerplexitySettings | None:
    key = read.secret("PERPLEXITY_API_KEY")
    base_url = read.url("PERPLEXITY_BASE_URL")
    model = read.raw("PERPLEXITY_MODEL") or PerplexitySettings.model
    preset = read.raw("PERPLEXITY_PRESET")
    if preset is not None and preset.lower() not in PERPLEXITY_PRESETS:
        read.problem("PERPLEXITY_PRESET", f"must be one of {', '.join(PERPLEXITY_PRESETS)}, not {preset!r}.")
        preset = None
    rpm = read.parsed("PERPLEXITY_REQUESTS_PER_MINUTE", PerplexitySettings.requests_per_minute, positive_float, "a positive number")
    if key is None:
        if base_url or read.raw("PERPLEXITY_MODEL") or preset:
            read.problem("PERPLEXITY_API_KEY", "is needed for /search (other PERPLEXITY_* settings are set); set it or unset them.")
        return None
    return PerplexitySettings(key, base_url or PerplexitySettings.base_url, model, preset.lower() if preset else None, rpm)


def _notion(read: _Reader) -> NotionSettings | None:
    token = read.secret("NOTION_TOKEN")
    database_id = read.raw("NOTION_DATABASE_ID")
    base_url = read.url("NOTION_BASE_URL")
    rps = read.parsed("NOTION_REQUESTS_PER_SECOND", NotionSettings.requests_per_second, positive_float, "a positive number")
    if database_id is not None:
        compact = database_id.replace("-", "")
        if not re.fullmatch(r"[0-9a-fA-F]{32}", compact):
            read.problem("NOTION_DATABASE_ID", "must be the 32-character id from the database's URL (with or without dashes).")
    if token is None and database_id is None:
        if base_url:
            read.problem("NOTION_TOKEN", "is needed for /note (NOTION_BASE_URL is set); set it or unset NOTION_BASE_URL.")
        return None
    if token is None:
        read.problem("NOTION_TOKEN", "is needed because NOTION_DATABASE_ID is set: create an internal integration at https://www.notion.so/my-integrations.")
        return None
    if database_id is None:
        read.problem("NOTION_DATABASE_ID", "is needed because NOTION_TOKEN is set: copy the id from the database's URL and share the database with the integration.")
        return None
    return NotionSettings(token, database_id, base_url, rps)


def _redis(read: _Reader) -> RedisSettings | None:
    """REDIS_URL shares the limits between instances; INSTANCES says how many share them."""
    url = read.secret("REDIS_URL")
    instances = read.count("INSTANCES", RedisSettings.instances)
    timeout = read.seconds("REDIS_TIMEOUT", RedisSettings.timeout)
    if url is None:
        return None
    parts = _split_url(url.reveal())
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        # Not echoed: the URL may carry a password.
        read.problem(
            "REDIS_URL",
            "must be a redis:// (or rediss://, unix://) URL with a host, e.g. redis://127.0.0.1:6379/0; "
            "unset it to keep every limit in this instance.",
        )
        return None
    if importlib.util.find_spec("redis") is None:
        read.problem(
            "REDIS_URL",
            "is set, but the redis package is not installed: run "
            "`pip install -c constraints.txt -e '.[redis]'` (or unset REDIS_URL).",
        )
        return None
    return RedisSettings(url, instances, timeout)


def _instance(read: _Reader) -> InstanceSettings:
    """INSTANCE_NAME and LEASE_SECONDS (used only with DATABASE_URL, where instances share the state)."""
    name = read.raw("INSTANCE_NAME")
    if name is not None and not _INSTANCE_NAME.fullmatch(name):
        read.problem(
            "INSTANCE_NAME",
            "must be 1-64 letters, digits, dots, dashes, underscores or colons (e.g. bot-a or host1:2), "
            f"not {name!r}.",
        )
        name = None
    lease = read.seconds("LEASE_SECONDS", InstanceSettings.lease_seconds)
    if not 2 <= lease <= 300:
        read.problem(
            "LEASE_SECONDS",
            f"must be between 2 and 300 seconds (a standby takes over within about this long after the "
            f"leader's host vanishes; at once when its process dies), not {lease:g}.",
        )
        lease = InstanceSettings.lease_seconds
    return InstanceSettings(name, lease) if name is not None else InstanceSettings(lease_seconds=lease)


_INSTANCE_NAME = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _modes(read: _Reader) -> tuple[Mode, ...]:
    if read.raw("LLM_MODES_FILE") is None:
        return BUILTIN_MODES
    try:
        return with_modes_file(read.path("LLM_MODES_FILE", Path()))
    except ModesFileError as error:
        read.problem("LLM_MODES_FILE", f"{error}. Fix the file, or unset LLM_MODES_FILE to offer the built-in modes only.")
        return BUILTIN_MODES


def _stt(read: _Reader, openai_api_key: Secret | None) -> SttSettings | None:
    """STT_MODEL turns voice messages on; the key falls back to OPENAI_API_KEY on OpenAI's endpoint."""
    default = SttSettings("", None)
    model = read.raw("STT_MODEL")
    base_url = read.url("STT_BASE_URL") or default.base_url
    key = read.secret("STT_API_KEY")
    max_seconds = read.seconds("STT_MAX_SECONDS", default.max_seconds)
    max_mb = read.parsed("STT_MAX_MB", default.max_bytes / 2**20, positive_float, "a positive number of megabytes")
    rpm = read.parsed("STT_REQUESTS_PER_MINUTE", default.requests_per_minute, positive_float, "a positive number")
    timeout = read.seconds("STT_TIMEOUT", default.timeout)
    price = read.parsed("STT_PRICE_PER_MINUTE", default.price_per_minute, non_negative_float, "a number of US dollars per minute (0 or more)")
    if model is None:
        others = [name for name in ("STT_BASE_URL", "STT_API_KEY", "STT_MAX_SECONDS", "STT_MAX_MB",
                                    "STT_REQUESTS_PER_MINUTE", "STT_TIMEOUT", "STT_PRICE_PER_MINUTE") if read.raw(name)]
        if others:
            read.problem(
                "STT_MODEL",
                f"is needed for voice messages ({', '.join(others)} set); set it (e.g. whisper-1) or unset them.",
            )
        return None
    key_setting = "STT_API_KEY"
    if key is None and urlsplit(base_url).hostname == "api.openai.com":
        key, key_setting = openai_api_key, "OPENAI_API_KEY"
        if key is None:
            read.problem(
                "STT_API_KEY",
                "(or OPENAI_API_KEY) is needed to transcribe with OpenAI (STT_MODEL is set); set one, "
                "or point STT_BASE_URL at a server that needs no key.",
            )
    return SttSettings(
        model, key, key_setting, base_url, max_seconds, int(max_mb * 2**20), rpm, timeout, price
    )


def _photos(read: _Reader) -> PhotoSettings:
    default = PhotoSettings()
    max_mb = read.parsed("IMAGE_MAX_MB", default.max_bytes / 2**20, positive_float, "a positive number of megabytes")
    max_images = read.count("ALBUM_MAX_IMAGES", default.max_images)
    listed = read.raw("LLM_VISION_MODELS")
    vision_models = default.vision_models
    if listed is not None:
        models = set()
        for entry in filter(None, (part.strip() for part in listed.split(","))):
            try:
                models.add(ModelRef.parse(entry))
            except ValueError:
                read.problem("LLM_VISION_MODELS", f"entry {entry!r} is not provider:model, e.g. openai:gpt-5.1.")
        vision_models = frozenset(models)
    return PhotoSettings(int(max_mb * 2**20), max_images, vision_models)


def _limits(read: _Reader) -> LimitSettings:
    default = LimitSettings()

    def budget(name: str, default: float | None) -> float | None:
        return read.parsed(name, default, positive_float, "a positive amount of US dollars")

    def number(name: str, default: float) -> float:
        return read.parsed(name, default, positive_float, "a positive number")

    return LimitSettings(
        anthropic_requests_per_minute=number("ANTHROPIC_REQUESTS_PER_MINUTE", default.anthropic_requests_per_minute),
        anthropic_tokens_per_minute=read.count("ANTHROPIC_TOKENS_PER_MINUTE", default.anthropic_tokens_per_minute),
        openai_requests_per_minute=number("OPENAI_REQUESTS_PER_MINUTE", default.openai_requests_per_minute),
        openai_tokens_per_minute=read.count("OPENAI_TOKENS_PER_MINUTE", default.openai_tokens_per_minute),
        retry_after_cap=read.seconds("RETRY_AFTER_CAP", default.retry_after_cap),
        breaker_failures=read.count("BREAKER_FAILURES", default.breaker_failures),
        breaker_window=read.seconds("BREAKER_WINDOW", default.breaker_window),
        breaker_cooldown=read.seconds("BREAKER_COOLDOWN", default.breaker_cooldown),
        user_messages_per_minute=read.count("USER_MESSAGES_PER_MINUTE", default.user_messages_per_minute),
        user_daily_budget_usd=budget("USER_DAILY_BUDGET_USD", default.user_daily_budget_usd),
        user_monthly_budget_usd=budget("USER_MONTHLY_BUDGET_USD", default.user_monthly_budget_usd),
        search_cache_ttl=read.seconds("SEARCH_CACHE_TTL", default.search_cache_ttl),
        schema_cache_ttl=read.seconds("NOTION_SCHEMA_TTL", default.schema_cache_ttl),
        cache_max_entries=read.count("CACHE_MAX_ENTRIES", default.cache_max_entries),
        shutdown_grace=read.seconds("SHUTDOWN_GRACE_SECONDS", default.shutdown_grace),
        pending_max_age=read.seconds("PENDING_MAX_AGE", default.pending_max_age),
        knowledge_timeout=read.seconds("KNOWLEDGE_TIMEOUT", default.knowledge_timeout),
    )


def _conversation(read: _Reader) -> ConversationSettings:
    default = ConversationSettings()
    return ConversationSettings(
        compact_at=_unless_off(
            read, "COMPACT_AT", default.compact_at, share,
            "a share of the model's context window above 0 and at most 1 (e.g. 0.75 or 75%), or off",
        ),
        compact_timeout=read.seconds("COMPACT_TIMEOUT", default.compact_timeout),
        idle_reset=_unless_off(
            read, "CONVERSATION_IDLE_RESET", default.idle_reset, duration,
            "a duration such as 6h, 90m, 2d or 1h30m (a bare number is seconds), or off",
        ),
    )


def _documents(read: _Reader) -> DocumentSettings:
    default = DocumentSettings()
    max_mb = read.parsed("DOC_MAX_MB", default.max_bytes / 2**20, positive_float, "a positive number of megabytes")
    return DocumentSettings(
        max_bytes=int(max_mb * 2**20),
        max_pages=read.count("DOC_MAX_PAGES", default.max_pages),
        max_chars=read.count("DOC_MAX_CHARS", default.max_chars),
    )


def _unless_off(read: _Reader, name: str, default: float | None, parse: Callable[[str], float | None], expected: str) -> float | None:
    """A setting that `off` turns off (None); anything else is parsed."""
    value = read.raw(name)
    if value is not None and value.lower() in OFF:
        return None
    return read.parsed(name, default, parse, expected)


def _prices(read: _Reader) -> tuple[tuple[str, float, float], ...]:
    text = read.raw("LLM_PRICES")
    if text is None:
        return ()
    prices = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        model, _, pair = entry.partition("=")
        input_price, _, output_price = pair.partition("/")
        per_input, per_output = non_negative_float(input_price.strip()), non_negative_float(output_price.strip())
        if not model.strip() or per_input is None or per_output is None:
            read.problem("LLM_PRICES", f"entry {entry!r} must look like model=input/output in USD per million tokens, e.g. gpt-5.1=1.25/10.")
            continue
        prices.append((model.strip(), per_input, per_output))
    return tuple(prices)


def _reason(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "it is not UTF-8 text"  # str(exc) would quote a byte of the content
    return getattr(exc, "strerror", None) or type(exc).__name__
