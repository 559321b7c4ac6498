"""Start-up on state it cannot use, as an operator meets it: the real `python -m bot` process says
in one line what is wrong and what to do, exits 2 (the unit's "needs an operator", so systemd does
not restart it in a loop) and leaves the database exactly as it was; `check --offline`, which the
unit runs before each start, reports the same fault."""
from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from pathlib import Path

import pytest

from bot.app import DATABASE_NAME
from integrations.clock import ManualClock
from state.db import PROBE_BYTES, Database, bundled_migrations, load_migrations
from tests.integration.test_cli import clean_env, run_cli

KNOWN = len(load_migrations(bundled_migrations()))
# Telegram mode for `run`, pointed at a port where nothing answers: a fault must stop it first.
TELEGRAM = {
    "TELEGRAM_API_ID": "12345",
    "TELEGRAM_API_HASH": "0" * 32,
    "TELEGRAM_BOT_TOKEN": "123456:" + "A" * 35,
    "TELEGRAM_DC": "2:127.0.0.1:9",
    "ADMIN_IDS": "42",
}
COMMANDS = (["run"], ["console"], ["status"])


def fingerprint(database: Path) -> tuple[bytes, int] | None:
    return (database.read_bytes(), database.stat().st_mtime_ns) if database.exists() else None


async def start_every_way(state: Path, tmp_path: Path) -> list[tuple[int, str, str]]:
    """`run` (on Telegram), `console`, `status` and `check --offline`, at once, on `state`."""
    env = clean_env(tmp_path, STATE_DIR=str(state), **TELEGRAM)
    console_env = clean_env(tmp_path, STATE_DIR=str(state))
    return list(
        await asyncio.gather(
            run_cli(["run"], env, tmp_path),
            run_cli(["console"], console_env, tmp_path, stdin="hello\n"),
            run_cli(["status"], env, tmp_path),
            run_cli(["check", "--offline"], env, tmp_path),
        )
    )


async def assert_refused_everywhere(state: Path, tmp_path: Path, *phrases: str) -> None:
    database = state / DATABASE_NAME
    before = fingerprint(database)
    *starts, check = await start_every_way(state, tmp_path)
    for args, (code, out, err) in zip(COMMANDS, starts):
        assert code == 2, (args, out, err)
        assert err.count("\n") == 1 and err.startswith("switchboard: "), (args, err)
        assert all(phrase in err for phrase in phrases), (args, err)
        assert out == ""
    code, out, err = check
    assert code == 1, out + err
    assert any(line.startswith("✗") and all(p in line for p in phrases) for line in out.splitlines()), out
    assert "Traceback" not in err
    assert fingerprint(database) == before, "the failed start changed the database"


async def good_database(state: Path) -> Path:
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    database = await Database.open(state / DATABASE_NAME, ManualClock())
    await database.execute("INSERT INTO conversations (chat_id, started_at) VALUES (1, ?)", (database.timestamp(),))
    await database.close()
    return state / DATABASE_NAME


@pytest.fixture
def tmpfs(tmp_path):
    """Mounts a small tmpfs (root with CAP_SYS_ADMIN only: elsewhere the test is skipped)."""
    mounted: list[Path] = []

    def mount(name: str, size: int) -> Path:
        target = tmp_path / name
        target.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", str(target)], check=True)


async def test_a_state_dir_under_a_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("not a directory")
    await assert_refused_everywhere(tmp_path / "notes.txt" / "state", tmp_path, "notes.txt, which is a file", "STATE_DIR")


async def test_a_damaged_database_is_refused_and_left_as_it_is(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / DATABASE_NAME).write_bytes(b"\x8b\x00garbage, not SQLite\x17" * 400)
    await assert_refused_everywhere(state, tmp_path, "is damaged", "restore a backup")


async def test_a_database_from_a_newer_version_is_refused_before_anything_is_written(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    # A rollback-journal database: switching it to WAL would rewrite its header.
    with sqlite3.connect(state / DATABASE_NAME) as conn:
        conn.execute("CREATE TABLE from_the_future (x)")
        conn.execute(f"PRAGMA user_version = {KNOWN + 1}")
    conn.close()
    await assert_refused_everywhere(state, tmp_path, f"schema version {KNOWN + 1}", "newer version")


async def test_a_full_disk_is_refused_and_the_database_kept(tmp_path, tmpfs):
    disk = tmpfs("disk", 512 * 1024)
    database = await good_database(disk / "state")
    with open(disk / "filler", "wb") as filler:
        with pytest.raises(OSError):
            while True:
                filler.write(bytes(PROBE_BYTES))
                filler.flush()
    await assert_refused_everywhere(disk / "state", tmp_path, "is full", "free some space")
    assert database.stat().st_size > 0


async def test_a_read_only_file_system_is_refused_even_for_root(tmp_path, tmpfs):
    disk = tmpfs("disk", 1024 * 1024)
    await good_database(disk / "state")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    await assert_refused_everywhere(disk / "state", tmp_path, "read-only file system")


async def test_check_offline_creates_nothing_on_a_fresh_state_dir(tmp_path):
    state = tmp_path / "fresh"
    # A key, so that some model could answer (not probed: --offline).
    env = clean_env(tmp_path, STATE_DIR=str(state), ANTHROPIC_API_KEY="sk-ant-sentinel-fresh-000000000000000000")
    code, out, err = await run_cli(["check", "--offline"], env, tmp_path)
    assert code == 0, out + err
    assert "will be created" in out and not state.exists()
