"""Standby soak (issue 15, "a standby that takes over"): two real bot processes against one
PostgreSQL, the leader SIGKILLed again and again; every message answered exactly once?

The machinery is the crash soak's Telegram transport (bench/crash_soak.py): the same fake Telegram
in this process (bench/_soak_telegram_server.py), users writing every 0.2-1 s to 12 groups and 2
private chats whether anyone leads or not, the same paced fake model and fake Notion, processes
forked from a warm fork server (bench/_soak_launch.py). What differs: two instances, "bot-a" and
"bot-b", each with its own STATE_DIR (and Telegram session), one DATABASE_URL on a throw-away
cluster (tests/pg.py). One holds the leader lease and Telegram; the other stands by.

Each round waits until the leader serves (it logged in) and the other one stands by, then kills
the leader with SIGKILL 0-3 s later (during its catch-up, mid-reply, or idle) and measures the
takeover: from the kill until the standby has logged in (the fake Telegram hands out what was
missed before it answers the login, as Telethon's catch-up does). The killed instance is started
again at once and stands by for the next round. After the last round the users stop, both run
until nothing is left, and are stopped with SIGTERM. Then, per message: exactly one final reply,
none partial; per note one Notion page and one link.

Run: .venv/bin/python bench/standby_soak.py [--kills 20] [--seed 1]   (about 2 minutes)
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from bench._soak_launch import BotProcess, Launcher  # noqa: E402
from bench._soak_models import TokenAnswers  # noqa: E402
from bench._soak_state import StateQueries  # noqa: E402
from bench._soak_tally import Tally, report  # noqa: E402
from bench._soak_telegram_server import SoakTelegram  # noqa: E402
from bench.crash_soak import FINISH_TIMEOUT, NOTION_TOKEN, READY_TIMEOUT, TelegramSoak, _ended, _within  # noqa: E402
from integrations.clock import SystemClock  # noqa: E402
from tests.fakes.notion_server import FakeNotion  # noqa: E402
from tests.pg import PostgresCluster  # noqa: E402

INSTANCES = ("bot-a", "bot-b")
KILL_AFTER_READY = (0.0, 3.0)
TAKEOVER_TARGET = 10.0  # seconds from the leader's SIGKILL until the standby receives


class PostgresProbe(StateQueries):
    """The shared database read from outside between rounds (the crash soak's StateProbe, on PostgreSQL)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._pool = concurrent.futures.ThreadPoolExecutor(1)

    def leader_pid(self) -> int | None:
        rows = self._rows("SELECT pid FROM instances WHERE role = 'leader'")
        return int(rows[0][0]) if rows else None

    def role_of(self, pid: int) -> str | None:
        rows = self._rows(f"SELECT role FROM instances WHERE pid = {int(pid)}")
        return rows[0][0] if rows else None

    def _rows(self, query: str) -> list[Any]:  # type: ignore[override]
        # Its own thread and loop: called from the soak's loop (count) and from threads (idle checks).
        return self._pool.submit(asyncio.run, self._fetch(query)).result()

    async def _fetch(self, query: str) -> list[Any]:
        conn = await asyncpg.connect(self._url)
        try:
            return list(await conn.fetch(query))
        except asyncpg.UndefinedTableError:
            return []  # before the first instance migrated
        finally:
            await conn.close()


class StandbySoak(TelegramSoak):
    name = "standby"

    def __init__(self, *args: Any, telegram: SoakTelegram, database_url: str) -> None:
        super().__init__(*args, telegram=telegram)
        self.state = PostgresProbe(database_url)  # type: ignore[assignment]
        self.envs = {
            name: {**self.env, "STATE_DIR": str(self.home / name / "state"), "INSTANCE_NAME": name, "DATABASE_URL": database_url}
            for name in INSTANCES
        }
        self.takeovers: list[float] = []
        self.sent_leaderless = 0  # messages users sent between a kill and the takeover

    async def soak(self, kills: int) -> Tally:
        began = time.monotonic()
        processes: dict[str, BotProcess] = {}
        with self.log_path.open("ab") as log:
            cold, entry = self.command()
            launchers = {
                name: Launcher(cold, entry, env=env, cwd=self.home, log=log, console=False, warm=True)
                for name, env in self.envs.items()
            }
            try:
                self._traffic = asyncio.ensure_future(self._users_write())
                logins = self.telegram.logins
                processes["bot-a"] = await launchers["bot-a"].start()
                await self._until(lambda: self.telegram.logins > logins, "bot-a to log in")
                processes["bot-b"] = await launchers["bot-b"].start()
                for _ in range(kills):
                    await self._round(processes, launchers)
                self.stop_traffic()
                await self._until_idle(self._quiet)
                for process in processes.values():
                    process.send_signal(signal.SIGTERM)
                for name, process in processes.items():
                    if not await _within(process.wait(), READY_TIMEOUT) or process.returncode != 0:
                        self.tally.problems.append(f"{name} did not stop cleanly on SIGTERM ({process.returncode})")
            finally:
                for process in processes.values():
                    await _ended(process)
                for launcher in launchers.values():
                    await launcher.close()
        self.tally.runs = kills
        self.tally.seconds = time.monotonic() - began
        self.count()
        self.tally.remarks.append(f"messages sent while no instance led (between a kill and the takeover): {self.sent_leaderless}")
        return self.tally

    async def _round(self, processes: dict[str, BotProcess], launchers: dict[str, Launcher]) -> None:
        """Both up, one leading and one standing by: kill the leader, time the takeover, restart it."""
        leader_pid = await self._until(self.state.leader_pid, "a leader")
        leader = next((name for name, p in processes.items() if p.pid == leader_pid), None)
        if leader is None:
            self.tally.problems.append(f"the leader's pid {leader_pid} is none of ours")
            return
        standby = next(name for name in processes if name != leader)
        await self._until(lambda: self.state.role_of(processes[standby].pid) == "standby", f"{standby} to stand by")
        await asyncio.sleep(self.rng.uniform(*KILL_AFTER_READY))
        logins, sent = self.telegram.logins, len(self.sent)
        processes[leader].kill()
        killed_at = time.monotonic()
        await processes[leader].wait()
        self.tally.kills += 1
        await self._until(lambda: self.telegram.logins > logins, f"{standby} to take over")
        self.takeovers.append(time.monotonic() - killed_at)
        self.sent_leaderless += len(self.sent) - sent
        processes[leader] = await launchers[leader].start()

    async def _until(self, probe: Any, what: str) -> Any:
        """Poll `probe` (run in a thread: it may read the database) until it gives something truthy."""
        deadline = time.monotonic() + FINISH_TIMEOUT
        while time.monotonic() < deadline:
            result = await asyncio.to_thread(probe)
            if result:
                return result
            await asyncio.sleep(0.05)
        raise TimeoutError(f"waited {FINISH_TIMEOUT:g} s for {what}")

    def takeover_summary(self) -> str:
        if not self.takeovers:
            return "takeover after SIGKILL: none measured"
        ordered = sorted(self.takeovers)
        return (
            f"takeover after SIGKILL (kill -> standby receiving), {len(ordered)} kills: "
            f"p50 {statistics.median(ordered):.2f} s, max {ordered[-1]:.2f} s (target <= {TAKEOVER_TARGET:g} s)"
        )


async def soak(kills: int, seed: int, workdir: Path, database_url: str) -> StandbySoak:
    clock = SystemClock()
    async with (
        TokenAnswers(seed) as models,
        FakeNotion(token=NOTION_TOKEN, clock=clock) as notion,
        SoakTelegram(random.Random(seed)) as telegram,
    ):
        bench = StandbySoak(workdir, seed, models, notion, telegram=telegram, database_url=database_url)
        await bench.soak(kills)
        return bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of the leader (default 20)")
    parser.add_argument("--seed", type=int, default=1, help="seed for traffic, kill moments and answers (default 1)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="standby-soak-"))
    print(f"standby soak: 2 instances on one PostgreSQL, the leader SIGKILLed {args.kills} times, seed {args.seed}", flush=True)
    cluster = PostgresCluster.start()
    try:
        bench = asyncio.run(soak(args.kills, args.seed, workdir, cluster.url()))
    finally:
        cluster.stop()
    print(report([bench.tally]))
    print(bench.takeover_summary())
    if bench.tally.problems or max(bench.takeovers, default=0) > TAKEOVER_TARGET:
        print(f"state directories and bot logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
