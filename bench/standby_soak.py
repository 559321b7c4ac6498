"""Standby soak (issue 15, "a standby that takes over"): two or three real bot processes against one
PostgreSQL (and one Redis), the leader SIGKILLed again and again; every message answered exactly
once, and the model's request limit never exceeded by all of them together?

The machinery is the crash soak's Telegram transport (bench/crash_soak.py): the same fake Telegram
in this process (bench/_soak_telegram_server.py), users writing every 0.2-1 s to 12 groups and 2
private chats whether anyone leads or not, the same paced fake model and fake Notion, processes
forked from a warm fork server (bench/_soak_launch.py). What differs: `--instances` bots, "bot-a",
"bot-b" (and "bot-c"), each with its own STATE_DIR (and Telegram session), one DATABASE_URL on a
throw-away cluster (tests/pg.py). One holds the leader lease and Telegram; the others stand by.

The model enforces a request limit as Anthropic does (`--rpm` requests a minute, a token bucket;
429 beyond it) and every instance is configured with that limit. With `--redis` they share it
through one redis-server on loopback (tests/redis_server.py; REDIS_URL, INSTANCES); without it each
instance keeps its own, and a new leader starts with a full bucket of its own whatever the killed
one spent. The fake counts the requests it refused: over the limit, together.

Each round waits until the leader serves (it logged in) and the others stand by, then kills
the leader with SIGKILL 0-3 s later (during its catch-up, mid-reply, or idle) and measures the
takeover: from the kill until a standby has logged in (the fake Telegram hands out what was
missed before it answers the login, as Telethon's catch-up does). The killed instance is started
again at once and stands by for the next round. After the last round the users stop, all run
until nothing is left, and are stopped with SIGTERM. Then, per message: exactly one final reply,
none partial; per note one Notion page and one link; and the model's refusals.

Run: .venv/bin/python bench/standby_soak.py [--instances 2|3] [--redis] [--kills 20] [--rpm 40] [--seed 1]
(about 2-4 minutes)
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import os
import random
import shutil
import signal
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

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
from tests.redis_server import RedisServer  # noqa: E402

KILL_AFTER_READY = (0.0, 3.0)
T = TypeVar("T")
TAKEOVER_TARGET = 10.0  # seconds from the leader's SIGKILL until the standby receives
# The model's request limit: below what users ask for (about 60 questions a minute and the
# answers resumed after kills), so the instances' limiter has to hold them to it.
REQUESTS_PER_MINUTE = 40


def stop_servers_on_sigterm(*servers: PostgresCluster | RedisServer | None) -> None:
    """Stopped from outside (a timeout): stop the servers started for the run, then exit at once
    (unwinding the event loop could wait on a bot process or a thread for ever)."""

    def stop(*_: object) -> None:
        for server in servers:
            if isinstance(server, PostgresCluster):
                server.stop()
            elif server is not None:
                server.close()
        os._exit(143)

    signal.signal(signal.SIGTERM, stop)


def instance_names(count: int) -> list[str]:
    return [f"bot-{letter}" for letter in string.ascii_lowercase[:count]]


async def poll_until(
    probe: Callable[[], T], what: str, *, timeout: float = FINISH_TIMEOUT, in_thread: bool = False,
    alive: Callable[[], None] = lambda: None,
) -> T:  # fmt: skip
    """Poll `probe` until it gives something truthy (in a thread when it reads the database);
    `alive()` raises when waiting on is pointless (a bot process died by itself)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive()
        result = await asyncio.to_thread(probe) if in_thread else probe()
        if result:
            return result
        await asyncio.sleep(0.05)
    raise TimeoutError(f"waited {timeout:g} s for {what}")


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

    def __init__(
        self, *args: Any, telegram: SoakTelegram, database_url: str, instances: int = 2, redis_url: str | None = None
    ) -> None:
        super().__init__(*args, telegram=telegram)
        self.state = PostgresProbe(database_url)  # type: ignore[assignment]
        shared: dict[str, str] = {"DATABASE_URL": database_url}
        if redis_url is not None:
            shared.update(REDIS_URL=redis_url, INSTANCES=str(instances))
        if self.models.bucket is not None:
            shared["ANTHROPIC_REQUESTS_PER_MINUTE"] = str(self.models.bucket.limit)
        self.envs = {
            name: {**self.env, **shared, "STATE_DIR": str(self.home / name / "state"), "INSTANCE_NAME": name}
            for name in instance_names(instances)
        }
        self.takeovers: list[float] = []
        self.processes: dict[str, BotProcess] = {}
        self._killed: set[int] = set()  # pids of the processes killed on purpose
        self.sent_leaderless = 0  # messages users sent between a kill and the takeover

    async def soak(self, kills: int) -> Tally:
        began = time.monotonic()
        self.processes = processes = {}
        with self.log_path.open("ab") as log:
            cold, entry = self.command()
            launchers = {
                name: Launcher(cold, entry, env=env, cwd=self.home, log=log, console=False, warm=True)
                for name, env in self.envs.items()
            }
            try:
                logins = self.telegram.logins
                first, *others = launchers
                processes[first] = await launchers[first].start()
                await self._until(lambda: self.telegram.logins > logins, f"{first} to log in")
                self.start_traffic()
                for name in others:
                    processes[name] = await launchers[name].start()
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
        """All up, one leading and the others standing by: kill the leader, time the takeover, restart it."""
        leader_pid = await self._until(self.state.leader_pid, "a leader")
        leader = next((name for name, p in processes.items() if p.pid == leader_pid), None)
        if leader is None:
            self.tally.problems.append(f"the leader's pid {leader_pid} is none of ours")
            return
        for standby in (name for name in processes if name != leader):
            pid = processes[standby].pid
            await self._until(functools.partial(self._stands_by, pid), f"{standby} to stand by")
        await asyncio.sleep(self.rng.uniform(*KILL_AFTER_READY))
        logins, sent = self.telegram.logins, len(self.sent)
        self._killed.add(processes[leader].pid)
        processes[leader].kill()
        killed_at = time.monotonic()
        await processes[leader].wait()
        self.tally.kills += 1
        await self._until(lambda: self.telegram.logins > logins, "a standby to take over")
        self.takeovers.append(time.monotonic() - killed_at)
        self.sent_leaderless += len(self.sent) - sent
        processes[leader] = await launchers[leader].start()

    def _stands_by(self, pid: int) -> bool:
        """Up beside the leader: "standby" (or whatever else an instance that does not lead reports)."""
        return self.state.role_of(pid) not in (None, "leader", "stopped")

    async def _until(self, probe: Callable[[], T], what: str) -> T:
        return await poll_until(probe, what, in_thread=True, alive=self._none_exited)

    def _none_exited(self) -> None:
        for name, process in self.processes.items():
            if process.returncode is not None and process.pid not in self._killed:
                raise RuntimeError(f"{name} exited by itself with status {process.returncode}: see {self.log_path}")

    def takeover_summary(self) -> str:
        if not self.takeovers:
            return "takeover after SIGKILL: none measured"
        ordered = sorted(self.takeovers)
        return (
            f"takeover after SIGKILL (kill -> standby receiving), {len(ordered)} kills: "
            f"p50 {statistics.median(ordered):.2f} s, max {ordered[-1]:.2f} s (target <= {TAKEOVER_TARGET:g} s)"
        )

    def limit_summary(self) -> str:
        bucket = self.models.bucket
        if bucket is None:
            return "model request limit: none enforced"
        return (
            f"model requests (limit {bucket.limit} a minute, shared by all instances): {len(bucket.admitted_at)} admitted, "
            f"{bucket.refused} refused with 429 over the limit (target 0); busiest minute {bucket.busiest_minute()} "
            f"(at most {2 * bucket.limit}: a full bucket, then a minute's refill)"
        )


async def soak(
    kills: int, seed: int, workdir: Path, database_url: str, *,
    instances: int = 2, redis_url: str | None = None, requests_per_minute: int | None = None,
) -> StandbySoak:  # fmt: skip
    clock = SystemClock()
    async with (
        TokenAnswers(seed, requests_per_minute=requests_per_minute) as models,
        FakeNotion(token=NOTION_TOKEN, clock=clock) as notion,
        SoakTelegram(random.Random(seed)) as telegram,
    ):
        bench = StandbySoak(
            workdir, seed, models, notion, telegram=telegram, database_url=database_url, instances=instances, redis_url=redis_url
        )
        await bench.soak(kills)
        return bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of the leader (default 20)")
    parser.add_argument("--seed", type=int, default=1, help="seed for traffic, kill moments and answers (default 1)")
    parser.add_argument("--instances", type=int, choices=(2, 3), default=2, help="bot processes (default 2)")
    parser.add_argument("--redis", action="store_true", help="share the limits through a redis-server on loopback")
    parser.add_argument(
        "--rpm", type=int, default=REQUESTS_PER_MINUTE,
        help=f"the model's request limit a minute, enforced by it and configured in every instance; 0 for none (default {REQUESTS_PER_MINUTE})",
    )  # fmt: skip
    args = parser.parse_args(argv)
    redis_program = shutil.which("redis-server") if args.redis else None
    if args.redis and redis_program is None:
        parser.error("--redis needs redis-server (Debian: apt-get install redis-server)")
    workdir = Path(tempfile.mkdtemp(prefix="standby-soak-"))
    limits = "shared through Redis" if args.redis else "each instance its own limits"
    print(
        f"standby soak: {args.instances} instances on one PostgreSQL, {limits}, model limit "
        f"{args.rpm or 'none'} requests a minute, the leader SIGKILLed {args.kills} times, seed {args.seed}",
        flush=True,
    )
    cluster = PostgresCluster.start()
    redis = RedisServer(redis_program) if redis_program else None
    stop_servers_on_sigterm(cluster, redis)
    try:
        if redis is not None:
            redis.start()
        bench = asyncio.run(
            soak(
                args.kills, args.seed, workdir, cluster.url(), instances=args.instances,
                redis_url=redis.url if redis else None, requests_per_minute=args.rpm or None,
            )  # fmt: skip
        )
    finally:
        cluster.stop()
        if redis is not None:
            redis.close()
    print(report([bench.tally]))
    print(bench.takeover_summary())
    print(bench.limit_summary())
    refused = bench.models.bucket.refused if bench.models.bucket else 0
    if bench.tally.problems or refused or max(bench.takeovers, default=0) > TAKEOVER_TARGET:
        print(f"state directories and bot logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
