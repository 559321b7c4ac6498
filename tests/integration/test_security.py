"""Who may do what, and input that must never crash the bot or reach an upstream uninvited."""
from __future__ import annotations

import ast
import os
import stat
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.health import HealthProbe
from handlers.render import render_markdown
from integrations.clock import ManualClock
from integrations.resilience.breaker import CircuitBreaker
from state.cache import SqliteCache
from state.db import Database
from tests.fakes.providers import ScriptedProvider
from tests.harness import USER
from tests.integration.test_admin import STRANGER, AdminBot, start_admin_bot

ROOT = Path(__file__).resolve().parents[2]
ADMIN_COMMANDS = ["status", "health", "breaker", "cache", "allow", "deny", "budget"]
# Everyone's, with an admin form (/usage <user id>, /usage all).
SHARED_COMMANDS = ["usage"]


class CountingProbe:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1


async def guarded_bot(stack: AsyncExitStack, tmp_path: Path, provider: ScriptedProvider) -> tuple[AdminBot, CountingProbe]:
    """A bot with something for every admin command to change: an open breaker, a cache, a probe."""
    probe = CountingProbe()
    admin = await start_admin_bot(
        stack, tmp_path, [("anthropic:claude-sonnet-4-6", provider)], health_probes=[HealthProbe("search", probe)]
    )
    admin.registry.register_breaker(CircuitBreaker("provider anthropic", admin.clock)).force_open("down")
    cache = SqliteCache(admin.database, admin.clock)
    admin.use(cache=cache)
    await cache.put("search", "q", '"answer"', ttl=3600)
    return admin, probe


async def state_of(admin: AdminBot, probe: CountingProbe) -> tuple:
    access = admin.services.access
    cache_entries = (await admin.services.features.cache.stats()).entries
    budgets = await admin.database.fetchall("SELECT user_id, period, usd FROM user_budgets")
    grants = await admin.database.fetchall("SELECT user_id, access FROM user_access")
    breaker = admin.registry.snapshot()["breakers"]["provider anthropic"]["state"]
    return (
        set(access.granted), set(access.revoked), dict(admin.settings.budgets),
        [tuple(r) for r in budgets], [tuple(r) for r in grants], breaker, cache_entries, probe.calls,
    )


@pytest.mark.parametrize(
    "text",
    [
        "/status",
        "/health",
        "/breaker reset all",
        "/breaker reset provider anthropic",
        "/cache clear",
        "/cache clear search",
        f"/allow {STRANGER}",
        f"/deny {USER}",
        f"/budget {USER} 0",
        f"/budget {USER} unlimited",
        f"/budget {USER} 0 month",
    ],
)
async def test_admin_command_from_a_non_admin_gets_the_unknown_command_help_and_changes_nothing(tmp_path, text):
    name = text.split()[0][1:]
    replies, help_text = await non_admin_says(tmp_path, text)
    assert replies == [render_markdown(f"I don't know /{name}.\n\n" + help_text).text]


@pytest.mark.parametrize("text", ["/usage all", f"/usage {STRANGER}", "/usage 12 13"])
async def test_another_users_usage_is_refused_to_a_non_admin_and_changes_nothing(tmp_path, text):
    replies, _ = await non_admin_says(tmp_path, text)
    assert replies == ["Only admins can see another user's usage; /usage on its own shows yours."]


async def non_admin_says(tmp_path: Path, text: str) -> tuple[list[str], str]:
    """The replies an allowed user who is no admin gets to `text`, and their /help; asserts nothing changed."""
    provider = ScriptedProvider("anthropic")
    async with AsyncExitStack() as stack:
        admin, probe = await guarded_bot(stack, tmp_path, provider)
        before = await state_of(admin, probe)
        await admin.say(text)
        assert await state_of(admin, probe) == before
        assert provider.requests == []
        return admin.replies(), admin.router.help_text(USER)


def test_every_admin_command_is_covered_by_the_refusal_test():
    from handlers.admin import admin_commands

    commands = admin_commands()
    assert sorted(c.name for c in commands) == sorted(ADMIN_COMMANDS)
    assert all(c.admin_only for c in commands)


@pytest.mark.parametrize(
    "text",
    ["hello", "/start", "/model", "/model 1", "/reset", "/help", "/cancel", "/nonsense"]
    + [f"/{c} 1001 1" for c in ADMIN_COMMANDS + SHARED_COMMANDS],
)
async def test_a_user_not_on_the_allowlist_causes_no_upstream_call_and_no_change(tmp_path, text):
    provider = ScriptedProvider("anthropic")
    async with AsyncExitStack() as stack:
        admin, probe = await guarded_bot(stack, tmp_path, provider)
        before = await state_of(admin, probe)
        await admin.say(text, chat_id=STRANGER, user_id=STRANGER)
        await admin.say(text + " again", chat_id=STRANGER, user_id=STRANGER)
        assert provider.requests == [] and probe.calls == 0
        assert await state_of(admin, probe) == before
        [refusal] = admin.replies(STRANGER)
        assert "private" in refusal and str(STRANGER) in refusal
        assert await admin.database.fetchall("SELECT id FROM messages") == [], "nothing of theirs is stored"


async def test_the_database_is_created_private_in_a_private_directory(tmp_path):
    old_umask = os.umask(0o022)
    try:
        state_dir = tmp_path / "state"
        database = await Database.open(state_dir / "switchboard.sqlite3", ManualClock())
        try:
            await database.execute("INSERT INTO user_preferences (user_id, model, updated_at) VALUES (1, 'm', 'now')")
        finally:
            await database.close()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    files = [p for p in state_dir.iterdir()]
    assert state_dir / "switchboard.sqlite3" in files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


async def test_an_oversized_message_is_refused_politely_without_an_upstream_call(tmp_path):
    provider = ScriptedProvider("anthropic")
    async with AsyncExitStack() as stack:
        admin, _ = await guarded_bot(stack, tmp_path, provider)
        await admin.say("x" * 16_001)
        [reply] = admin.replies()
        assert "16,001 characters long; the limit is 16,000" in reply
        assert provider.requests == []
        await admin.say("y" * 16_000)
        assert admin.replies()[-1] == "ok" and len(provider.requests) == 1


async def test_oversized_command_arguments_get_a_short_answer(tmp_path):
    async with AsyncExitStack() as stack:
        admin, probe = await guarded_bot(stack, tmp_path, ScriptedProvider("anthropic"))
        for text in ["/budget " + "9" * 20_000, "/usage " + "a" * 20_000, "/breaker reset " + "b" * 20_000, "/allow " + "1" * 20_000]:
            reply = await admin.admin_says(text)
            assert len(reply) < 1000
        assert admin.services.access.granted == set()


ODD_TEXTS = [
    "\u200fשלום עולם\u200f",  # right-to-left marks around Hebrew
    "\u202eevil.exe\u202c",  # right-to-left override
    "👨\u200d👩\u200d👧\u200d👦 family",  # zero-width joiners
    "🇺🇦🏳️\u200d🌈 flags",
    "e\u0301\u0301\u0301 combining",
    "\u200b",  # only a zero-width space: not blank to Python
    "\ufeffbom",
    "nul \x00 inside",
    "\x00",
    "tab\tand\r\nnewlines",
    "𝕳𝖊𝖑𝖑𝖔 astral",
    "/model \u200f1",
    "/\u200dreset",
    "**unclosed _markdown `code",
]


@pytest.mark.parametrize("text", ODD_TEXTS)
async def test_odd_unicode_gets_exactly_one_reply_and_reaches_the_model_intact(tmp_path, text):
    provider = ScriptedProvider("anthropic")
    async with AsyncExitStack() as stack:
        admin, _ = await guarded_bot(stack, tmp_path, provider)
        await admin.say(text)
        assert len(admin.replies()) == 1
        if provider.requests:
            assert provider.requests[-1].messages[-1].content == text


@pytest.mark.parametrize("text", ["/allow ١٢٣", "/budget 1001 ５", "/deny ¹²³", "/usage 12\u200b3"])
async def test_non_ascii_digits_are_not_taken_as_user_ids_or_amounts(tmp_path, text):
    async with AsyncExitStack() as stack:
        admin, probe = await guarded_bot(stack, tmp_path, ScriptedProvider("anthropic"))
        before = await state_of(admin, probe)
        reply = await admin.admin_says(text)
        assert "Use /" in reply or "not an amount" in reply or "numeric user id" in reply or "/budget <user id>" in reply
        assert await state_of(admin, probe) == before


# The console reads stdin with surrogateescape, so invalid UTF-8 arrives as lone surrogates.
@pytest.mark.parametrize("text", ["bad byte \udcff from the console", "/model \ud800"])
async def test_lone_surrogates_from_the_console_do_not_crash_the_router(tmp_path, text):
    async with AsyncExitStack() as stack:
        admin, _ = await guarded_bot(stack, tmp_path, ScriptedProvider("anthropic"))
        await admin.say(text)
        assert len(admin.replies()) == 1


@pytest.fixture
async def shared_bot(tmp_path):
    """One bot for all the examples of a Hypothesis test (a fresh database per example is too slow)."""
    async with AsyncExitStack() as stack:
        provider = ScriptedProvider("anthropic")
        admin, probe = await guarded_bot(stack, tmp_path, provider)
        yield admin, probe, provider


COMMAND_NAMES = ["start", "reset", "model", "help", "cancel", *ADMIN_COMMANDS, *SHARED_COMMANDS, "nonsense"]
texts = st.text(max_size=200)
commands = st.builds(lambda name, sep, args: f"/{name}{sep}{args}", st.sampled_from(COMMAND_NAMES), st.sampled_from([" ", "\n", "@switchboard_bot "]), texts)
HYPOTHESIS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@HYPOTHESIS
@given(text=st.one_of(texts, commands))
async def test_any_text_from_a_user_gets_exactly_one_reply(shared_bot, text):
    admin, _, _ = shared_bot
    before = len(admin.replies())
    await admin.say(text)
    assert len(admin.replies()) - before == (1 if text.strip() else 0)


@HYPOTHESIS
@given(text=st.builds(lambda name, args: f"/{name} {args}", st.sampled_from(ADMIN_COMMANDS + SHARED_COMMANDS), texts))
async def test_any_admin_command_arguments_get_exactly_one_clear_answer(shared_bot, text):
    admin, _, _ = shared_bot
    reply = await admin.admin_says(text)  # asserts exactly one reply
    assert reply.strip()


@HYPOTHESIS
@given(text=st.one_of(texts, commands))
async def test_no_text_from_a_stranger_reaches_an_upstream(shared_bot, text):
    admin, probe, provider = shared_bot
    await admin.say(text, chat_id=STRANGER, user_id=STRANGER)
    assert provider.requests == [] and probe.calls == 0
    assert len(admin.replies(STRANGER)) <= 1, "one refusal, then silence"


# Statements that must be SQL text with ? placeholders, never text built from values.
SQL_CALLS = {"execute", "executemany", "executescript", "execute_rowcount", "execute_fetchall", "fetchone", "fetchall"}
# (file, function): why building the SQL is safe there.
SQL_ALLOWED = {
    ("state/db.py", "_migrate"): "PRAGMA user_version takes no parameters; the version is an int from our own file name",
}


def _is_built(node: ast.expr, constants: frozenset[str]) -> bool:
    """True for SQL put together from values at run time: f-strings, %, + or .format().

    Module-level string constants (a column list) may be spliced in: they are code, not values.
    """
    if isinstance(node, ast.JoinedStr):
        return any(
            isinstance(part, ast.FormattedValue) and not _is_literal(part.value, constants) for part in node.values
        )
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mod, ast.Add)):
        return not (_is_literal(node.left, constants) and _is_literal(node.right, constants))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in {"format", "join", "replace"}
    return False


def _is_literal(node: ast.expr, constants: frozenset[str]) -> bool:
    """Text fixed in the code: string constants, names bound only to such text, + and if/else of them."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Name):
        return node.id in constants
    if isinstance(node, ast.IfExp):
        return _is_literal(node.body, constants) and _is_literal(node.orelse, constants)
    return (
        isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add)
        and _is_literal(node.left, constants) and _is_literal(node.right, constants)
    )


def _literal_locals(function: ast.AST, constants: frozenset[str]) -> frozenset[str]:
    """Local names every assignment of which is fixed text (e.g. one of two WHERE clauses)."""
    values: dict[str, list[ast.expr | None]] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    values.setdefault(target.id, []).append(node.value)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            values.setdefault(node.target.id, []).append(None if isinstance(node, ast.AugAssign) else node.value)
    return frozenset(
        name for name, assigned in values.items()
        if all(value is not None and _is_literal(value, constants) for value in assigned)
    )


def _module_string_constants(tree: ast.Module) -> frozenset[str]:
    return frozenset(
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name) and target.id.lstrip("_").isupper()
    )


def built_sql_calls(source: str) -> list[tuple[str, int]]:
    """(function, line) of every SQL call whose statement is built from values, directly or via a variable."""
    tree = ast.parse(source)
    module_constants = _module_string_constants(tree)
    found = []
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        constants = module_constants | _literal_locals(function, module_constants)
        built_names = {
            target.id
            for node in ast.walk(function)
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and node.value is not None
            and (_is_built(node.value, constants) or isinstance(node, ast.AugAssign))
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Name)
        }
        for node in ast.walk(function):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SQL_CALLS):
                continue
            statement = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "sql"), None)
            if statement is None:
                continue
            if _is_built(statement, constants) or (isinstance(statement, ast.Name) and statement.id in built_names):
                found.append((function.name, node.lineno))
    return found


def test_the_sql_scan_catches_statements_built_from_values():
    source = '''
COLUMNS = "id, name"

async def bad(db, name, table):
    await db.execute(f"SELECT * FROM t WHERE name = '{name}'")
    await db.fetchall("SELECT * FROM " + table)
    await db.fetchone("SELECT %s" % name)
    sql = "DELETE FROM t WHERE id = {}".format(name)
    await db.execute(sql)
    query = "SELECT 1"
    query += name
    await db.fetchone(query)

async def good(db, name):
    await db.execute("SELECT * FROM t WHERE name = ?", (name,))
    await db.fetchall("SELECT a" " FROM t")
    await db.fetchall("SELECT a" + " FROM t")
    await db.fetchall(f"SELECT {COLUMNS} FROM t")
    clause = "" if name else " WHERE a = ?"
    await db.fetchall(f"SELECT a FROM t{clause}", ())

async def tricky(db, name, flag):
    clause = " WHERE 1" if flag else name
    await db.fetchall(f"SELECT a FROM t{clause}")
'''
    assert [line for _, line in built_sql_calls(source)] == [5, 6, 7, 9, 12, 24]


def sql_call_count(source: str) -> int:
    return sum(
        1
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SQL_CALLS
    )


def test_all_sql_in_the_bot_is_parameterised():
    offenders = []
    scanned = 0
    for package in ("state", "handlers", "integrations", "bot"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            source = path.read_text(encoding="utf-8")
            scanned += sql_call_count(source)
            for function, line in built_sql_calls(source):
                if (relative, function) not in SQL_ALLOWED:
                    offenders.append(f"{relative}:{line} in {function}()")
    assert scanned > 30, "the scan no longer finds the bot's SQL calls"
    assert offenders == [], "SQL built from values; use ? placeholders:\n" + "\n".join(offenders)
