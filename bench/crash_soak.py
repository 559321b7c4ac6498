"""Crash soak (issue 9, "every message gets exactly one answer"): the real bot process, killed with
SIGKILL at random moments and started again on the same state directory, on two transports at once.

- console: `python -m bot console` with stdin piped. Each run writes a batch of lines (`q17 please`,
  some `/note q18 remember this`) and is killed; a line counts as sent once the bot stored it
  (read from its database after the kill), so the next run writes again the lines the dead process
  had not stored. The piped console prints only finished replies, and cannot take back what it
  printed: an answer printed twice is its own number.
- telegram: bench/_soak_telegram_child.py, the real app served as `run_telegram` serves it, with a
  client that talks to a fake Telegram living in this process (bench/_soak_telegram_server.py):
  12 groups, users writing every 0.2-1 s (from the first login on) whether the bot is up or not,
  each restart catching up from the update state its session file last saved (as Telethon's
  does: on disconnect and once a minute, so a killed process gets again what it already had),
  replies attributed by `reply_to`.

The model is a fake Anthropic on 127.0.0.1 that streams `answer q17 w1 … done.` in events 20-50 ms
apart, so kills land mid-reply; notes go to a fake Notion. Most runs are killed 0-3 s after the bot
is ready (the console printed its first reply; the bot logged in to Telegram), some 0-1 s after the
start, ready or not. After the last kill the bot runs once more until nothing is left to do, and
stops as it does in production (end of input; SIGTERM). Then, per message: exactly one final reply
(the whole answer, or one clear error note such as "given up after 3 attempts"), no partial reply
left, and per note exactly one Notion page and one link told to its user. Timing is real, so a
seed fixes the traffic, the kill moments and the answers, not where exactly each kill lands.

Each run is a new process forked from a fork server that imported the bot once
(bench/_soak_launch.py): it runs the same `main()` from its first line, without the 1.5-3 s of
CPU a new interpreter spends on imports. `--cold` starts the commands themselves instead
(`python -m bot console`), about twice as slow.

It prints the counts per transport, then every broken expectation as a PROBLEM line, and keeps the
state directories, bot logs, console output and Telegram transcript when there is one.

Run: .venv/bin/python bench/crash_soak.py [--runs 50] [--seed 1] [--cold]   (about 2 minutes)
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
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Awaitable, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._soak_launch import BotProcess, Launcher  # noqa: E402
from bench._soak_models import API_KEY as MODEL_KEY  # noqa: E402
from bench._soak_models import MODEL, TOKEN, TokenAnswers  # noqa: E402
from bench._soak_state import StateProbe  # noqa: E402
from bench._soak_tally import Tally, count_unquoted, report  # noqa: E402
from bench._soak_telegram_server import SoakTelegram  # noqa: E402
from handlers.router import QUEUED_NOTICE  # noqa: E402
from integrations.clock import SystemClock  # noqa: E402
from tests.fakes.notion_server import FakeNotion  # noqa: E402

PYTHON = sys.executable
NOTION_TOKEN = "secret_soak-notion-token-000000000000000000000"
GROUPS = tuple(-1001000000001 - index for index in range(12))
USERS = (501, 502, 503, 504)
# Private chats (the chat id is the user's): replies quote nothing, previews are drafts.
PRIVATE_CHATS = USERS[:2]
CHATS = GROUPS + PRIVATE_CHATS
NOTE_SHARE = 0.2  # of the messages users send
BATCH = (1, 3)  # new console lines per run
BACKLOG = 3  # no new console lines while this many wait to be written again
MESSAGE_GAP = (0.2, 1.0)  # seconds between two Telegram messages
EARLY_KILLS = 0.2  # share of runs killed at a moment counted from the start, ready or not
KILL_FROM_START = (0.0, 1.0)
KILL_AFTER_READY = (0.0, 3.0)
READY_TIMEOUT = 30.0
# The last run answers the backlog: on a loaded machine a long soak leaves hundreds of messages
# for the groups' flood pace (about 20 messages a minute each) to work through.
FINISH_TIMEOUT = 900.0
QUIET = 1.5  # seconds without a Telegram call before the last run is stopped
# Passed on to the bot: nothing else from this environment (no settings, no credentials).
KEPT_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR")


class User:
    """Writes numbered messages, each carrying its token: questions and, now and then, a note."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._count = 0
        self.questions: list[str] = []
        self.notes: list[str] = []

    def next_text(self) -> str:
        self._count += 1
        token = f"q{self._count}"
        if self._rng.random() < NOTE_SHARE:
            self.notes.append(token)
            return f"/note {token} remember this"
        self.questions.append(token)
        return f"{token} please"


class Soak(ABC):
    """One transport: start the bot, kill it at a random moment, again and again, then let it finish."""

    name = ""
    console = False

    def __init__(self, workdir: Path, seed: int, models: TokenAnswers, notion: FakeNotion) -> None:
        self.rng = random.Random(f"{seed}:{self.name}")
        self.user = User(self.rng)
        self.models = models
        self.notion = notion
        self.home = home = workdir / self.name
        home.mkdir(parents=True)
        self.state = StateProbe(home / "state")
        self.log_path = home / "bot.log"
        self.tally = Tally(self.name)
        self.env = {name: value for name, value in os.environ.items() if name in KEPT_ENVIRONMENT}
        self.env.update(
            PYTHONPATH=str(ROOT), STATE_DIR=str(home / "state"), LOG_LEVEL="INFO", LLM_LOCAL="off",
            LLM_MODELS=f"anthropic:{MODEL}", ANTHROPIC_API_KEY=MODEL_KEY, ANTHROPIC_BASE_URL=models.base_url,
            ANTHROPIC_REQUESTS_PER_MINUTE="100000", ANTHROPIC_TOKENS_PER_MINUTE="100000000",
            USER_MESSAGES_PER_MINUTE="100000", ALLOWED_USER_IDS=",".join(map(str, USERS)),
            NOTION_TOKEN=NOTION_TOKEN, NOTION_DATABASE_ID=notion.database_id.replace("-", ""),
            NOTION_BASE_URL=notion.base_url,
        )  # fmt: skip

    async def run(self, runs: int, *, warm: bool) -> Tally:
        began = time.monotonic()
        with self.log_path.open("ab") as log:
            cold, entry = self.command()
            launcher = Launcher(cold, entry, env=self.env, cwd=self.home, log=log, console=self.console, warm=warm)
            try:
                for _ in range(runs):
                    process = await self.start(launcher)
                    try:
                        await self._kill_at_a_random_moment(process)
                    finally:
                        await _ended(process)
                    await self.after_kill()
                self.stop_traffic()
                await self.finish(await self.start(launcher, last=True))
            finally:
                await launcher.close()
        self.tally.runs = runs
        self.tally.seconds = time.monotonic() - began
        self.count()
        return self.tally

    @abstractmethod
    def command(self) -> tuple[list[str], list[str]]:
        """The bot's command as typed, and the fork server's entry that runs the same."""

    @abstractmethod
    async def start(self, launcher: Launcher, *, last: bool = False) -> BotProcess: ...

    @abstractmethod
    async def ready(self) -> None:
        """Returns once the bot is up (waited for with a timeout)."""

    async def after_kill(self) -> None:
        """Collect what a killed process left (its output); nothing by default."""

    def stop_traffic(self) -> None:
        """Stop users who write on their own, before the last run; nothing by default."""

    @abstractmethod
    async def finish(self, process: BotProcess) -> None:
        """Let the last run finish everything, then stop it as in production."""

    @abstractmethod
    def count(self) -> None: ...

    async def _kill_at_a_random_moment(self, process: BotProcess) -> None:
        if self.rng.random() < EARLY_KILLS:
            await asyncio.sleep(self.rng.uniform(*KILL_FROM_START))
        else:
            delay = self.rng.uniform(*KILL_AFTER_READY)
            if not await _within(self.ready(), READY_TIMEOUT):
                self.tally.problems.append(f"run {self.tally.kills + 1}: not ready within {READY_TIMEOUT:g} s")
            await asyncio.sleep(delay)
        if process.returncode is not None:
            self.tally.problems.append(f"run {self.tally.kills + 1}: the bot exited by itself ({process.returncode})")
        else:
            process.kill()
        await process.wait()
        self.tally.kills += 1

    async def _until_idle(self, more: Callable[[], bool] = lambda: True) -> bool:
        """Wait until the database has nothing unfinished and `more()` agrees; False on timeout."""
        deadline = time.monotonic() + FINISH_TIMEOUT
        while time.monotonic() < deadline:
            if more() and await asyncio.to_thread(self.state.unfinished) == 0:
                return True
            await asyncio.sleep(0.2)
        self.tally.problems.append(f"the last run did not finish within {FINISH_TIMEOUT:g} s")
        return False

    def _check_exit(self, process: BotProcess) -> None:
        if process.returncode != 0:
            self.tally.problems.append(f"the last run exited with {process.returncode}")
        left = self.state.unfinished()
        if left:
            self.tally.problems.append(f"{left} messages or notes left unfinished in the database")


class ConsoleSoak(Soak):
    name = "console"
    console = True

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.lines: list[str] = []
        self._rewritten = 0
        self.output = bytearray()
        self._printed = asyncio.Event()
        self._reading: asyncio.Task[None] | None = None

    def command(self) -> tuple[list[str], list[str]]:
        return [PYTHON, "-m", "bot", "console"], ["console"]

    async def start(self, launcher: Launcher, *, last: bool = False) -> BotProcess:
        unsent = self._unsent()
        self._rewritten += len(unsent)
        new = 0 if last or len(unsent) >= BACKLOG else self.rng.randint(*BATCH)
        batch = [self.user.next_text() for _ in range(new)]
        self.lines += batch
        process = await launcher.start()
        self._printed.clear()
        assert process.stdout is not None
        self._reading = asyncio.ensure_future(self._read(process.stdout))
        process.write("".join(f"{line}\n" for line in unsent + batch).encode())
        return process

    async def ready(self) -> None:
        await self._printed.wait()

    async def after_kill(self) -> None:
        assert self._reading is not None
        await self._reading

    async def finish(self, process: BotProcess) -> None:
        try:
            await self._until_idle(lambda: not self._unsent())
            process.close_stdin()  # the end of input: the console finishes and exits
            await _within(process.wait(), READY_TIMEOUT)
        finally:
            await _ended(process)
        await self.after_kill()
        self._check_exit(process)

    def count(self) -> None:
        printed = self.output.decode("utf-8", "replace")
        (self.home / "output.txt").write_text(printed)
        blocks = [block.strip() for block in printed.split("\n\n") if block.strip()]
        commands = [f"/note {token} remember this" for token in self.user.notes]
        error_notes = count_unquoted(self.tally, self.user.questions, blocks, self.state.statuses(), commands)
        self.tally.count_notes(self.user.notes, self.notion, blocks)
        self.tally.remarks.append(f"lines written again after a kill (not stored yet): {self._rewritten}")
        if error_notes:
            self.tally.problems.append(f"{len(error_notes)} error notes printed for no question")

    def _unsent(self) -> list[str]:
        stored = self.state.stored_texts()
        return [line for line in self.lines if line not in stored]

    async def _read(self, stdout: asyncio.StreamReader) -> None:
        while chunk := await stdout.read(65536):
            self.output += chunk
            self._printed.set()


class TelegramSoak(Soak):
    name = "telegram"

    def __init__(self, *args: Any, telegram: SoakTelegram) -> None:
        super().__init__(*args)
        self.telegram = telegram
        self.sent: list[tuple[int, int, str]] = []  # chat, message id, text
        self._logins = 0
        self._traffic: asyncio.Task[None] | None = None

    def command(self) -> tuple[list[str], list[str]]:
        port = str(self.telegram.port)
        return [PYTHON, str(ROOT / "bench" / "_soak_telegram_child.py"), port], ["telegram", port]

    async def start(self, launcher: Launcher, *, last: bool = False) -> BotProcess:
        self._logins = self.telegram.logins
        return await launcher.start()

    async def ready(self) -> None:
        while self.telegram.logins == self._logins:
            await asyncio.sleep(0.02)
        self.start_traffic()

    def start_traffic(self) -> None:
        """Users write from the bot's first login on: a session that never had an update state
        starts from now (Telegram's getState), so what came before would never reach it."""
        if self._traffic is None:
            self._traffic = asyncio.ensure_future(self._users_write())

    def stop_traffic(self) -> None:
        if self._traffic is not None:
            self._traffic.cancel()

    async def finish(self, process: BotProcess) -> None:
        try:
            if await _within(self.ready(), READY_TIMEOUT):
                await self._until_idle(self._quiet)
            process.send_signal(signal.SIGTERM)  # a graceful stop: drain, then exit
            await _within(process.wait(), READY_TIMEOUT)
        finally:
            await _ended(process)
        self._check_exit(process)

    def count(self) -> None:
        (self.home / "chats.txt").write_text(self.telegram.transcript())
        replies: dict[tuple[int, int], list[str]] = {}
        private: dict[int, list[str]] = {chat_id: [] for chat_id in PRIVATE_CHATS}
        orphans = 0
        notices = 0
        for message in self.telegram.bot_messages():
            if message.text == QUEUED_NOTICE:
                notices += 1
            elif message.chat_id in private:
                private[message.chat_id].append(message.text)
            elif message.reply_to is None:
                orphans += 1
            else:
                replies.setdefault((message.chat_id, message.reply_to), []).append(message.text)
        questions_in: dict[int, list[str]] = {chat_id: [] for chat_id in PRIVATE_CHATS}
        commands_in: dict[int, list[str]] = {chat_id: [] for chat_id in PRIVATE_CHATS}
        for chat_id, message_id, text in self.sent:
            token = TOKEN.search(text)
            assert token is not None
            if chat_id in private and token.group(0) not in self.user.questions:
                commands_in[chat_id].append(text)
            elif token.group(0) not in self.user.questions:
                continue
            elif chat_id in private:
                questions_in[chat_id].append(token.group(0))
            else:
                self.tally.count_question(token.group(0), replies.get((chat_id, message_id), []))
        statuses = self.state.statuses()
        for chat_id, texts in private.items():
            # Replies in a private chat quote nothing: an answer is known by the question it names.
            error_notes = count_unquoted(self.tally, questions_in[chat_id], texts, statuses, commands_in[chat_id])
            if error_notes:
                self.tally.problems.append(f"{len(error_notes)} error notes in private chat {chat_id} for no question")
        self.tally.count_notes(self.user.notes, self.notion, [m.text for m in self.telegram.bot_messages()])
        self.tally.remarks.append(f"updates handed out again after a kill: {self.telegram.handed_out_again}")
        self.tally.remarks.append(f"'answer right after the reply in progress' notices: {notices}")
        if orphans:
            self.tally.problems.append(f"{orphans} bot messages reply to no message")

    def _quiet(self) -> bool:
        idle = asyncio.get_running_loop().time() - self.telegram.last_call_at
        return self.telegram.unacknowledged == 0 and idle > QUIET

    async def _users_write(self) -> None:
        while True:
            await asyncio.sleep(self.rng.uniform(*MESSAGE_GAP))
            chat_id = self.rng.choice(CHATS)
            text = self.user.next_text()
            sender = chat_id if chat_id in PRIVATE_CHATS else self.rng.choice(USERS)
            posted = self.telegram.user_sends(chat_id, sender, text)
            self.sent.append((chat_id, posted.id, text))


async def _within(awaitable: Awaitable[Any], seconds: float) -> bool:
    try:
        await asyncio.wait_for(awaitable, seconds)
        return True
    except TimeoutError:
        return False


async def _ended(process: BotProcess) -> None:
    """Make sure a bot process of ours is gone (on any way out of a run)."""
    if process.returncode is None:
        process.kill()
        await process.wait()


async def soak(runs: int, seed: int, workdir: Path, *, warm: bool) -> list[Tally]:
    clock = SystemClock()
    async with (
        TokenAnswers(seed) as console_models,
        TokenAnswers(seed) as telegram_models,
        FakeNotion(token=NOTION_TOKEN, clock=clock) as console_notion,
        FakeNotion(token=NOTION_TOKEN, clock=clock) as telegram_notion,
        SoakTelegram(random.Random(seed)) as telegram,
    ):
        console = ConsoleSoak(workdir, seed, console_models, console_notion)
        on_telegram = TelegramSoak(workdir, seed, telegram_models, telegram_notion, telegram=telegram)
        return list(await asyncio.gather(console.run(runs, warm=warm), on_telegram.run(runs, warm=warm)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="runs ended by SIGKILL, per transport (default 50)")
    parser.add_argument("--seed", type=int, default=1, help="seed for traffic, kill moments and answers (default 1)")
    parser.add_argument(
        "--cold", action="store_true", help="start each run's process only after the last one died (slower: no warm start)"
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="crash-soak-"))
    start = "cold: each run's command started anew" if args.cold else "forked from a warm fork server"
    print(f"crash soak: {args.runs} SIGKILLed runs per transport, seed {args.seed}, {start}", flush=True)
    tallies = asyncio.run(soak(args.runs, args.seed, workdir, warm=not args.cold))
    print(report(tallies))
    if any(tally.problems for tally in tallies):
        print(f"state directories and bot logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
