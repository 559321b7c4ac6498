"""`switchboard` / `python -m bot`: the command line."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TextIO

from bot.collector import tune_collector
from bot.config import ConfigError, Settings, load_settings, telegram_hint
from bot.logs import configure_logging
from integrations.redaction import Redactor
from state.db import StorageFault, check_directory, check_storage
from state.lock import StateDirectoryBusy

log = logging.getLogger("switchboard")

COMMANDS = {
    "run": "start the bot: on Telegram when its settings are present, otherwise in the console (default)",
    "console": "chat in this terminal with the same handlers (you are the admin); scriptable through stdin",
    "status": "print the status report from the database (the bot may be running or stopped)",
    "check": "validate the settings and probe every configured upstream; exits non-zero on any problem",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchboard",
        description="A Telegram bot that streams answers from LLMs and keeps answering when upstreams fail.",
    )
    parser.add_argument("--env-file", type=Path, help="read settings from this file instead of ./.env")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parsers = {name: sub.add_parser(name, help=text, description=text) for name, text in COMMANDS.items()}
    parsers["console"].add_argument(
        "--jsonl",
        action="store_true",
        help='for scripts: read one JSON object {"text": ...} a line, write one {"reply", "model", "messages"} a line',
    )
    parsers["check"].add_argument(
        "--offline",
        action="store_true",
        help="check settings, state directory and session only, without calling any upstream "
        "(what the systemd unit runs before each start)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    try:
        settings = load_settings(env_file=args.env_file)
    except ConfigError as error:
        if command == "check":
            print(f"✗ settings: {len(error.problems)} problem(s)", file=sys.stdout)
        print(str(error), file=sys.stderr)
        return 2
    redactor = Redactor(settings.secret_values())
    interactive = sys.stdin.isatty()
    console = command == "console" or (command == "run" and settings.telegram is None)
    # Only a bot serving Telegram logs at the configured level; elsewhere logs would mix with output.
    quiet = console or command in ("check", "status")
    level = settings.log_level if not quiet else max(settings.log_level, "WARNING", key=_level_number)
    configure_logging(level, redactor, log_format=settings.log_format)
    if command != "check":  # check prints them among its lines
        for warning in settings.warnings:
            log.warning("%s", warning)
    try:
        if command == "check":
            return asyncio.run(run_check(settings, offline=args.offline))
        from bot.app import DATABASE_NAME

        # The faults `check` reports, found before anything is created or locked: one line and
        # exit 2, which the systemd unit does not restart (restarting cannot fix them).
        if settings.database_url is None:
            check_storage(settings.state_dir / DATABASE_NAME)
        else:  # PostgreSQL holds the state; the directory still holds the lock and the session
            check_directory(settings.state_dir)
        if command == "status":
            return asyncio.run(print_status(settings))
        tune_collector()  # a serving process only: see bot/collector.py
        if console:
            if command == "run":
                print(f"Starting in the console. {telegram_hint()}", file=sys.stderr)
            return asyncio.run(run_console_mode(settings, interactive=interactive, jsonl=getattr(args, "jsonl", False)))
        return asyncio.run(run_telegram_mode(settings))
    except KeyboardInterrupt:
        return 130
    except StateDirectoryBusy as error:
        print(f"switchboard: {error}", file=sys.stderr)
        return 1
    except StorageFault as error:
        print(f"switchboard: {error}", file=sys.stderr)
        return 2


def _level_number(name: str) -> int:
    return logging.getLevelName(name.upper()) if isinstance(logging.getLevelName(name.upper()), int) else logging.INFO


async def run_console_mode(
    settings: Settings, *, interactive: bool, jsonl: bool = False, stdin: TextIO | None = None, stdout: TextIO | None = None
) -> int:
    from bot.app import build_app, expected_local_model
    from bot.console import CONSOLE_USER_ID, ConsoleSession, ConsoleTransport
    from bot.shutdown import drain
    from integrations.clock import SystemClock

    stdout = stdout or sys.stdout
    clock = SystemClock()
    transport = ConsoleTransport(stdout, live=interactive and not jsonl)
    async with AsyncExitStack() as stack:
        # The prompt comes at once; the offline model starts meanwhile (a question asked before
        # it is up waits for it), as the Telegram bot does.
        app = await build_app(
            settings, clock, transport, stack, extra_admins=frozenset({CONSOLE_USER_ID}), local_model_in_background=True
        )
        # Ids go on from the last session's, so its messages are not taken for redeliveries.
        transport.continue_from(await app.services.history.next_message_id(CONSOLE_USER_ID))
        refs = [str(ref) for ref in app.services.chain.refs]
        local = expected_local_model(settings)
        if not app.services.chain.started and local is not None:
            refs.append(f"{local} (starting)")
        models = ", ".join(refs) or "none configured"
        session = ConsoleSession(
            app.router.handle,
            app.services.lanes,
            transport,
            stdin=stdin or sys.stdin,
            stdout=stdout,
            interactive=interactive,
            jsonl=jsonl,
            last_model=lambda: app.services.history.last_model(CONSOLE_USER_ID),
            banner=f"Switchboard console. Models: {models}. Type /help for commands, Ctrl-C stops a reply, Ctrl-D quits.",
        )
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, session.interrupt)
        loop.add_signal_handler(signal.SIGTERM, session.quit)
        safety_net = asyncio.ensure_future(app.router.keep_resuming())
        try:
            resumed = await app.router.resume_pending()
            if resumed:
                log.info("finishing %d message(s) left unfinished by the last session", resumed)
            code = await session.run()
        finally:
            safety_net.cancel()
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)
            # Replies still running (quit mid-reply) finish or are left for the next session.
            await drain(app, clock, settings.limits.shutdown_grace)
            await session.show_new_replies()
        return code


async def run_check(settings: Settings, *, offline: bool) -> int:
    from bot.check import check_command

    return await check_command(settings, sys.stdout, offline=offline)


async def print_status(settings: Settings, stdout: TextIO | None = None) -> int:
    from bot.app import DATABASE_NAME
    from integrations.clock import SystemClock

    stdout = stdout or sys.stdout
    database = settings.state_dir / DATABASE_NAME
    url = settings.database_url.reveal() if settings.database_url is not None else None
    if url is None and not database.exists():
        print(f"No database at {database}: the bot has not run with this STATE_DIR yet.", file=sys.stderr)
        return 1
    from bot.status import status_from_database

    redis = settings.redis
    shared_limits = None
    if redis is not None:
        from integrations.resilience.redis_link import reachability

        shared_limits = lambda: reachability(redis.url.reveal(), instances=redis.instances, timeout=redis.timeout)  # noqa: E731
    print(
        await status_from_database(database, SystemClock(), shared_limits=shared_limits, database_url=url), file=stdout
    )
    return 0


async def run_telegram_mode(settings: Settings) -> int:
    from bot.telegram.service import run_telegram

    return await run_telegram(settings)


if __name__ == "__main__":
    sys.exit(main())
