"""Scale-out (issue 15): replies per second and CPU per reply with 1, 2 and 3 instances on one PostgreSQL.

Each instance is a real bot process (the standby soak's Telegram child, bench/_soak_telegram_child.py,
forked from a warm fork server, bench/_soak_launch.py) with its own STATE_DIR and INSTANCE_NAME and
one DATABASE_URL (a fresh database per instance count on one throw-away cluster, tests/pg.py). They
talk to the soak's fake Telegram in this process (bench/_soak_telegram_server.py) and to a paced
local OpenAI-compatible model in its own process (bench/_paced_llm.py), which streams every answer
in the same time however many are asked at once, so the upstream is not the bottleneck.

Per instance count: start the instances, wait until one leads (logged in) and the others are
"standby" or whatever else the instances table says they are, warm up with one question, then
`--questions` users each ask one question in their own private chat, all at once. Measured from
the questions to the last final reply landing at the fake Telegram:
- replies per second: questions / that time;
- CPU per reply: the instance processes' CPU time (user + system, from /proc) over that time,
  summed, / questions (PostgreSQL's and the fakes' own CPU are not counted); and each instance's
  share, which shows who did the work.
Every reply is checked to be the whole answer, once. Printed side by side, one column a count.

Run: .venv/bin/python bench/scale_out.py [--instances 1,2,3] [--questions 150] [--shape 1000,2,8]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import sys
import tempfile
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import _paced_llm  # noqa: E402
from bench._soak_launch import BotProcess, Launcher  # noqa: E402
from bench._soak_telegram_server import SoakTelegram  # noqa: E402
from bench.crash_soak import KEPT_ENVIRONMENT, READY_TIMEOUT, _ended, _within  # noqa: E402
from bench.standby_soak import PostgresProbe, instance_names, poll_until, stop_servers_on_sigterm  # noqa: E402
from handlers.render import render_markdown  # noqa: E402
from tests.pg import PostgresCluster  # noqa: E402

PYTHON = sys.executable
API_KEY = "sk-bench-scale-out-0000000000000000"
FIRST_USER = 200_001  # private chats: the chat id is the user's
WARM_UP_USER = 200_000
REPLY_TIMEOUT = 600.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class Result:
    instances: int
    questions: int
    seconds: float
    cpu: list[float]  # seconds, per instance
    whole: int  # replies that are the whole answer, once
    roles: str

    @property
    def per_second(self) -> float:
        return self.questions / self.seconds

    @property
    def cpu_per_reply_ms(self) -> float:
        return sum(self.cpu) / self.questions * 1000


class ScaleOut:
    """One instance count: its processes, its fake Telegram, its database."""

    def __init__(self, instances: int, workdir: Path, database_url: str, model_url: str, model: str) -> None:
        self.instances = instances
        self.home = workdir / f"{instances}-instances"
        self.home.mkdir(parents=True)
        self.probe = PostgresProbe(database_url)
        self.model = model
        self.processes: list[BotProcess] = []
        env = {name: value for name, value in os.environ.items() if name in KEPT_ENVIRONMENT}
        env.update(
            PYTHONPATH=str(ROOT), LOG_LEVEL="INFO", LLM_LOCAL="off", LLM_MODELS=f"openai:{model}",
            OPENAI_API_KEY=API_KEY, OPENAI_BASE_URL=model_url, OPENAI_REQUESTS_PER_MINUTE="1000000",
            OPENAI_TOKENS_PER_MINUTE="1000000000", USER_MESSAGES_PER_MINUTE="100000", ALLOW_EVERYONE="true",
            DATABASE_URL=database_url,
        )  # fmt: skip
        self.envs = {
            name: {**env, "STATE_DIR": str(self.home / name / "state"), "INSTANCE_NAME": name}
            for name in instance_names(instances)
        }

    async def measure(self, questions: int) -> Result:
        async with AsyncExitStack() as stack:
            telegram = await stack.enter_async_context(SoakTelegram(random.Random(1)))
            log = stack.enter_context((self.home / "bot.log").open("ab"))
            command = [PYTHON, str(ROOT / "bench" / "_soak_telegram_child.py"), str(telegram.port)]
            processes = self.processes = []
            for env in self.envs.values():
                launcher = Launcher(command, ["telegram", str(telegram.port)], env=env, cwd=self.home, log=log, console=False, warm=True)
                stack.push_async_callback(launcher.close)
                process = await launcher.start()
                stack.push_async_callback(_ended, process)
                processes.append(process)
                if not processes[1:]:
                    await self._until(lambda: telegram.logins > 0, "the first instance to log in")
            roles = await self._until(lambda: self._roles(processes), "every instance to report its role", in_thread=True)
            await self._ask(telegram, [WARM_UP_USER])
            users = list(range(FIRST_USER, FIRST_USER + questions))
            before = [cpu_seconds(p.pid) for p in processes]
            began = asyncio.get_running_loop().time()
            landed = await self._ask(telegram, users)
            cpu = [cpu_seconds(p.pid) - spent for p, spent in zip(processes, before)]
            whole = self._whole_replies(telegram, users)
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                await _within(process.wait(), READY_TIMEOUT)
        return Result(self.instances, questions, landed - began, cpu, whole, roles)

    def _none_exited(self) -> None:
        for process in self.processes:
            if process.returncode is not None:
                raise RuntimeError(f"an instance exited by itself with status {process.returncode}")

    def _roles(self, processes: list[BotProcess]) -> str | None:
        """"leader, standby, standby" once every process has a row, else None."""
        roles = [self.probe.role_of(p.pid) for p in processes]
        return ", ".join(str(role) for role in roles) if all(roles) else None

    async def _ask(self, telegram: SoakTelegram, users: list[int]) -> float:
        """Each user asks in their own chat; returns when the last of their replies landed."""
        for user in users:
            telegram.user_sends(user, user, f"question from {user}")

        def answered() -> bool:
            chats = {m.chat_id for m in telegram.bot_messages()}
            return all(user in chats for user in users)

        await self._until(answered, f"{len(users)} replies", timeout=REPLY_TIMEOUT)
        return max(m.at for m in telegram.bot_messages() if m.chat_id in users)

    def _whole_replies(self, telegram: SoakTelegram, users: list[int]) -> int:
        expected = "".join(render_markdown(_paced_llm.answer(int(self.model.split("-")[1]))).text.split())
        replies: dict[int, list[str]] = {}
        for message in telegram.bot_messages():
            replies.setdefault(message.chat_id, []).append("".join(message.text.split()))
        return sum(replies.get(user) == [expected] for user in users)

    async def _until(self, probe: Callable[[], T], what: str, *, timeout: float = READY_TIMEOUT, in_thread: bool = False) -> T:
        try:
            return await poll_until(probe, what, timeout=timeout, in_thread=in_thread, alive=self._none_exited)
        except (TimeoutError, RuntimeError) as error:
            raise type(error)(f"{self.instances} instance(s): {error} (logs in {self.home})") from None


def table(results: list[Result]) -> str:
    rows = [
        ("instances", lambda r: str(r.instances)),
        ("roles", lambda r: r.roles),
        ("questions at once", lambda r: str(r.questions)),
        ("seconds to the last reply", lambda r: f"{r.seconds:.2f}"),
        ("replies per second", lambda r: f"{r.per_second:.1f}"),
        ("CPU per reply, ms (all instances)", lambda r: f"{r.cpu_per_reply_ms:.1f}"),
        ("CPU seconds by instance", lambda r: " / ".join(f"{seconds:.2f}" for seconds in r.cpu)),
        ("replies whole, once", lambda r: f"{r.whole}/{r.questions}"),
    ]
    width = max(len(label) for label, _ in rows)
    cell = max(24, *(len(r.roles) for r in results))
    return "\n".join(f"{label:<{width}}  " + "  ".join(f"{show(r):>{cell}}" for r in results) for label, show in rows)


async def scale_out(counts: list[int], questions: int, workdir: Path, cluster: PostgresCluster, model_url: str, model: str) -> list[Result]:
    results = []
    for count in counts:
        database_url = cluster.url(cluster.create_database(f"scale_out_{count}"))
        results.append(await ScaleOut(count, workdir, database_url, model_url, model).measure(questions))
        print(f"{count} instance(s): {results[-1].per_second:.1f} replies/s, {results[-1].cpu_per_reply_ms:.1f} ms CPU a reply", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", default="1,2,3", help="instance counts to measure, in order (default 1,2,3)")
    parser.add_argument("--questions", type=int, default=150, help="questions asked at once, each in its own chat (default 150)")
    parser.add_argument("--shape", default="1000,2,8", help="characters,seconds,chunks of each streamed answer (default 1000,2,8)")
    args = parser.parse_args(argv)
    counts = [int(count) for count in args.instances.split(",")]
    characters, seconds, chunks = args.shape.split(",")
    model = _paced_llm.model_name(int(characters), float(seconds), int(chunks))
    print(
        f"scale-out: {args.questions} questions at once in private chats, answers of {characters} characters "
        f"streamed over {seconds} s, instances {args.instances} on one PostgreSQL",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="scale-out-"))
    cluster = PostgresCluster.start()
    stop_servers_on_sigterm(cluster)
    try:
        with _paced_llm.start() as model_url:
            results = asyncio.run(scale_out(counts, args.questions, workdir, cluster, model_url, model))
    finally:
        cluster.stop()
    print(table(results))
    if any(r.whole != r.questions for r in results):
        print(f"some replies were not the whole answer once: bot logs and state kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
