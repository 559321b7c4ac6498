"""Running as a service: a graceful stop on the fake Telegram and the real SDKs, systemd
notifications on a real socket, and `switchboard check` / `status` as an operator runs them."""
import asyncio
import io
import logging
import os
import socket
import tempfile
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import pytest
from telethon import errors

from bot.__main__ import print_status
from bot.app import App, build_app
from bot.check import check_command
from bot.config import LimitSettings, NotionSettings, Secret, TelegramSettings
from bot.shutdown import FINALISE_SECONDS, drain
from bot.systemd import Notifier
from bot.telegram.flood_governor import FloodGovernor, GovernedTransport
from bot.telegram.service import EXIT_FAILED, EXIT_NEEDS_OPERATOR, EXIT_OK, LOGIN_PATIENCE, TelegramService
from bot.telegram.transport import TelegramRunner, TelegramTransport
from handlers.notes import NotesFeature
from handlers.router import QUEUED_NOTICE
from integrations.clock import ManualClock
from integrations.errors import AuthFailed
from state.outbox import Outbox
from tests.fakes import anthropic_server as anth
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.notion_server import STALL_RESPONSE, FakeNotion
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.telegram import FakeTelegramClient, new_message_event
from tests.integration.telegram_bot import ANTHROPIC_KEY, MESSAGE_IDS, OPENAI_KEY, USER, settings_for, start_telegram_bot
from tests.integration.test_cli import clean_env, run_cli

CLAUDE = "anthropic:claude-test"
STORY = "one two three four five six"
# Real time the fake servers get to answer before the manual clock jumps to its next deadline.
POLL = 0.05
BOT_TOKEN = Secret("123456:" + "A" * 35)


async def send(bot, text: str, chat_id: int = USER) -> None:
    """A user message reaches the bot; returns once it is stored, without waiting for the reply."""
    event = new_message_event(chat_id=chat_id, sender_id=USER, text=text, message_id=next(MESSAGE_IDS))
    await bot.client.deliver(event)


async def stalled_reply(stack: AsyncExitStack, tmp_path: Path):
    """A bot whose model streams two words of STORY and then stalls until released."""
    claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.stall_after(2, STORY)))
    settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE])
    return claude, settings


async def reply_stalls(bot, claude) -> None:
    await bot.clock.run_until_complete(claude.server.stall_began.wait(), poll=POLL)


# --- the graceful stop ------------------------------------------------------------------------


async def test_reply_in_flight_finishes_within_the_grace(tmp_path):
    async with AsyncExitStack() as stack:
        claude, settings = await stalled_reply(stack, tmp_path)
        bot = await start_telegram_bot(stack, settings)
        await send(bot, "tell me a story")
        await reply_stalls(bot, claude)
        started = bot.clock.monotonic()
        stopping = asyncio.ensure_future(drain(bot.app, bot.clock, grace=20))
        await bot.clock.advance(5)
        assert not stopping.done(), "the stop waits for the reply in flight"
        claude.server.release_stalls()
        report = await bot.clock.run_until_complete(stopping, poll=POLL)
        assert (report.in_flight, report.interrupted) == (1, 0)
        assert bot.clock.monotonic() - started < 20
        assert bot.texts() == [STORY]
        assert await bot.app.services.history.pending() == []


async def test_reply_still_running_after_the_grace_ends_with_a_note_and_is_answered_after_restart(tmp_path):
    async with AsyncExitStack() as stack:
        claude, settings = await stalled_reply(stack, tmp_path)
        async with AsyncExitStack() as first_run:
            bot = await start_telegram_bot(first_run, settings)
            await send(bot, "tell me a story")
            await reply_stalls(bot, claude)
            started = bot.clock.monotonic()
            report = await bot.clock.run_until_complete(drain(bot.app, bot.clock, grace=20), poll=POLL)
            assert report.interrupted == 1 and not report.abandoned
            assert bot.clock.monotonic() - started >= 20
            [shown] = bot.texts()
            assert shown.startswith("one two")
            assert shown.endswith("(interrupted: the bot is restarting; I'll answer this again when it is back)")
        claude.default = anth.Reply("Once upon a time, the end.")
        async with AsyncExitStack() as second_run:
            bot = await start_telegram_bot(second_run, settings)
            await bot.settle()
            assert bot.texts() == ["Once upon a time, the end."]
            assert await bot.app.services.history.pending() == []
        assert claude.message_requests[-1].json["messages"] == [{"role": "user", "content": "tell me a story"}]


async def test_a_reply_that_cannot_show_its_note_in_time_is_cut_off_so_the_stop_completes(tmp_path):
    async with AsyncExitStack() as stack:
        claude, settings = await stalled_reply(stack, tmp_path)
        bot = await start_telegram_bot(stack, settings)
        await send(bot, "tell me a story")
        await reply_stalls(bot, claude)
        bot.client.fail_next("send", errors.FloodWaitError(request=None, capture=300))
        started = bot.clock.monotonic()
        report = await bot.clock.run_until_complete(drain(bot.app, bot.clock, grace=20), poll=POLL)
        assert report.interrupted == 1 and report.abandoned
        assert bot.clock.monotonic() - started <= 20 + FINALISE_SECONDS + 1
        assert [m.text for m in await bot.app.services.history.pending()] == ["tell me a story"]


async def test_message_arriving_during_the_stop_is_stored_and_answered_after_restart(tmp_path):
    async with AsyncExitStack() as stack:
        claude, settings = await stalled_reply(stack, tmp_path)
        async with AsyncExitStack() as first_run:
            bot = await start_telegram_bot(first_run, settings)
            await send(bot, "tell me a story")
            await reply_stalls(bot, claude)
            stopping = asyncio.ensure_future(drain(bot.app, bot.clock, grace=20))
            await bot.clock.advance(1)
            await send(bot, "and what is 2+2?")
            claude.server.release_stalls()
            await bot.clock.run_until_complete(stopping, poll=POLL)
            assert bot.texts() == [STORY], "nothing is started for a message sent during the stop"
        assert claude.calls == 1
        claude.default = anth.Reply("Four.")
        async with AsyncExitStack() as second_run:
            bot = await start_telegram_bot(second_run, settings)
            await bot.settle()
            assert bot.texts() == ["Four."]
        assert claude.message_requests[-1].json["messages"][-1] == {"role": "user", "content": "and what is 2+2?"}


async def test_message_queued_behind_a_reply_is_left_for_after_the_restart(tmp_path):
    async with AsyncExitStack() as stack:
        claude, settings = await stalled_reply(stack, tmp_path)
        async with AsyncExitStack() as first_run:
            bot = await start_telegram_bot(first_run, settings)
            await send(bot, "tell me a story")
            await reply_stalls(bot, claude)
            await bot.clock.run_until_complete(send(bot, "then a poem"), poll=POLL)
            assert bot.texts()[-1] == QUEUED_NOTICE
            stopping = asyncio.ensure_future(drain(bot.app, bot.clock, grace=20))
            await bot.clock.advance(1)
            claude.server.release_stalls()
            report = await bot.clock.run_until_complete(stopping, poll=POLL)
            assert report.dropped == 1 and report.interrupted == 0
        assert claude.calls == 1
        claude.default = anth.Reply("Roses are red.")
        async with AsyncExitStack() as second_run:
            bot = await start_telegram_bot(second_run, settings)
            await bot.settle()
            assert bot.texts() == ["Roses are red."]


async def test_second_stop_request_cuts_the_grace_short(tmp_path):
    async with AsyncExitStack() as stack:
        claude, settings = await stalled_reply(stack, tmp_path)
        bot = await start_telegram_bot(stack, settings)
        await send(bot, "tell me a story")
        await reply_stalls(bot, claude)
        started = bot.clock.monotonic()
        hurry = asyncio.Event()
        stopping = asyncio.ensure_future(drain(bot.app, bot.clock, grace=20, hurry=hurry))
        await bot.clock.advance(2)
        hurry.set()
        report = await bot.clock.run_until_complete(stopping, poll=POLL)
        assert report.interrupted == 1
        assert bot.clock.monotonic() - started < 20
        assert "restarting" in bot.texts()[-1]


class OutboxWorker:
    """Stands in for the notes delivery worker; notes when it was told to stop."""

    def __init__(self, lanes) -> None:
        self.lanes = lanes
        self.replies_running_at_stop: int | None = None

    async def stop(self) -> None:
        self.replies_running_at_stop = self.lanes.in_flight()


def with_notes(app: App, outbox: Outbox | None, worker: OutboxWorker) -> App:
    """`app` with a notes feature made of `outbox` and `worker` (nothing reaches Notion)."""
    notes = NotesFeature(outbox, notion=None, delivery=worker)  # type: ignore[arg-type]
    return replace(app, services=replace(app.services, features=replace(app.services.features, notes=notes)))


async def test_the_outbox_worker_stops_only_after_every_reply_has_ended(tmp_path):
    async with AsyncExitStack() as stack:
        claude, settings = await stalled_reply(stack, tmp_path)
        bot = await start_telegram_bot(stack, settings)
        worker = OutboxWorker(bot.app.services.lanes)
        app = with_notes(bot.app, None, worker)
        await send(bot, "tell me a story")
        await reply_stalls(bot, claude)
        await bot.clock.run_until_complete(drain(app, bot.clock, grace=20), poll=POLL)
        assert worker.replies_running_at_stop == 0


# --- the service and systemd ------------------------------------------------------------------


@pytest.fixture
def systemd_socket(tmp_path):
    path = tmp_path / "notify"
    short_dir = tempfile.mkdtemp(prefix="sd") if len(os.fsencode(path)) > 107 else None
    if short_dir:
        path = Path(short_dir) / "notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.setblocking(False)
    yield str(path), receiver
    receiver.close()
    path.unlink(missing_ok=True)
    if short_dir:
        os.rmdir(short_dir)


class Systemd:
    """What systemd received on the notify socket, in order."""

    def __init__(self, receiver: socket.socket) -> None:
        self.receiver = receiver
        self.messages: list[str] = []

    def received(self, assignment: str) -> bool:
        while True:
            try:
                self.messages.append(self.receiver.recv(65536).decode())
            except BlockingIOError:
                return any(assignment in message.split("\n") for message in self.messages)


async def build_service(stack, settings, clock, address: str, client: FakeTelegramClient) -> TelegramService:
    transport = GovernedTransport(TelegramTransport(client), FloodGovernor(clock))
    app = await build_app(settings, clock, transport, stack)
    runner = TelegramRunner(client, BOT_TOKEN, app.router.handle)
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000"})
    return TelegramService(app, runner, notifier, clock, grace=20)


async def test_service_says_ready_once_logged_in_and_stopping_when_asked(tmp_path, systemd_socket):
    address, receiver = systemd_socket
    systemd = Systemd(receiver)
    async with AsyncExitStack() as stack:
        claude = await stack.enter_async_context(FakeAnthropic(api_key=ANTHROPIC_KEY, default=anth.Reply("Hi!")))
        clock = ManualClock()
        client = FakeTelegramClient(clock)
        service = await build_service(stack, settings_for(tmp_path, anthropic=claude, models=[CLAUDE]), clock, address, client)
        outbox = Outbox(service.app.database, clock)
        service.app = with_notes(service.app, outbox, OutboxWorker(service.app.services.lanes))
        await outbox.add("note-1", USER, USER, {"title": "t", "body": "b"})
        running = asyncio.ensure_future(service.run())
        await clock.run_until(lambda: systemd.received("READY=1"), poll=POLL)
        assert client.connected and client.login_token == BOT_TOKEN.reveal()
        assert systemd.messages[0] == "STATUS=connecting to Telegram"
        ready = next(m for m in systemd.messages if m.startswith("READY=1"))
        assert ready == "READY=1\nSTATUS=serving as @switchboard_bot; 0 replies in flight; outbox 1"

        await clock.run_until_complete(client.deliver(new_message_event(chat_id=USER, sender_id=USER, text="hello", message_id=next(MESSAGE_IDS))))
        await clock.run_until_complete(service.app.services.lanes.wait_all_idle(), poll=POLL)
        assert [m.text for m in client.messages(USER)] == ["Hi!"]
        await clock.advance(31)
        assert systemd.received("WATCHDOG=1")

        service.request_stop()
        assert await clock.run_until_complete(running, poll=POLL) == EXIT_OK
        assert systemd.received("STOPPING=1") and not client.connected
        assert systemd.messages[-1] == "STATUS=stopping: 0 of 0 replies in flight finished"


async def service_whose_login_fails(stack, tmp_path, address: str, error: BaseException, times: int = 1):
    clock = ManualClock()
    client = FakeTelegramClient(clock)
    client.fail_next("start", error, times=times)
    return await build_service(stack, settings_for(tmp_path), clock, address, client), clock, client


async def test_login_refused_exits_with_the_status_that_stops_restarts(tmp_path, systemd_socket, capsys):
    address, receiver = systemd_socket
    systemd = Systemd(receiver)
    async with AsyncExitStack() as stack:
        service, clock, _ = await service_whose_login_fails(stack, tmp_path, address, errors.AccessTokenInvalidError(request=None))
        assert await clock.run_until_complete(service.run(), poll=POLL) == EXIT_NEEDS_OPERATOR
    assert not systemd.received("READY=1")
    assert "TELEGRAM_BOT_TOKEN" in capsys.readouterr().err


def login_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "bot.telegram.service" and r.levelno >= logging.WARNING]


async def test_telegram_unreachable_at_start_is_tried_again_with_one_line_each_time(tmp_path, systemd_socket, caplog):
    address, receiver = systemd_socket
    systemd = Systemd(receiver)
    async with AsyncExitStack() as stack:
        # What Telethon raises when Telegram drops the connection during the handshake.
        dropped = asyncio.IncompleteReadError(b"", 8)
        service, clock, client = await service_whose_login_fails(stack, tmp_path, address, dropped, times=3)
        started = clock.monotonic()
        running = asyncio.ensure_future(service.run())
        await clock.run_until(lambda: systemd.received("READY=1"), poll=POLL)
        assert client.connected
        waited = clock.monotonic() - started
        service.request_stop()
        assert await clock.run_until_complete(running, poll=POLL) == EXIT_OK
    warnings = login_warnings(caplog)
    assert [r.getMessage().split(" (")[0] for r in warnings] == [
        f"Telegram unreachable at start, attempt {n}" for n in (1, 2, 3)
    ]
    assert all("IncompleteReadError" in r.getMessage() and r.exc_info is None for r in warnings)
    assert 0 < waited <= 1 + 2 + 4, "jittered waits of up to 1, 2 and 4 s on the service's clock"
    retries = [m.split("\n") for m in systemd.messages if m.startswith("EXTEND_TIMEOUT_USEC=")]
    assert len(retries) == 3
    extend, status = retries[0]
    assert status.startswith("STATUS=connecting to Telegram: attempt 1 failed") and "IncompleteReadError" in status
    assert LOGIN_PATIENCE * 1e6 < int(extend.split("=")[1]) <= (LOGIN_PATIENCE + 15) * 1e6, "systemd waits out the retries"


async def test_telegram_unreachable_for_the_whole_patience_exits_one_so_systemd_starts_again(tmp_path, systemd_socket, caplog):
    address, receiver = systemd_socket
    systemd = Systemd(receiver)
    async with AsyncExitStack() as stack:
        refused = ConnectionRefusedError(111, "Connection refused")
        service, clock, _ = await service_whose_login_fails(stack, tmp_path, address, refused, times=10_000)
        started = clock.monotonic()
        running = asyncio.ensure_future(service.run())
        await clock.run_until(lambda: systemd.received("STOPPING=1"), poll=POLL)  # reading keeps the socket's queue short
        assert await clock.run_until_complete(running, poll=POLL) == EXIT_FAILED
        assert clock.monotonic() - started <= LOGIN_PATIENCE
    assert not systemd.received("READY=1")
    [stopping] = [m for m in systemd.messages if m.startswith("STOPPING=1")]
    assert "could not log in to Telegram" in stopping and "Connection refused" in stopping
    assert all(r.exc_info is None for r in login_warnings(caplog))
    assert login_warnings(caplog)[-1].levelno == logging.ERROR


async def test_losing_telegram_for_good_exits_with_a_failure_so_systemd_restarts(tmp_path, systemd_socket):
    address, _ = systemd_socket
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        client = FakeTelegramClient(clock)
        service = await build_service(stack, settings_for(tmp_path), clock, address, client)
        running = asyncio.ensure_future(service.run())
        await clock.run_until(lambda: client.connected, poll=POLL)
        await client.disconnect()
        assert await clock.run_until_complete(running, poll=POLL) == EXIT_FAILED


async def test_a_notion_that_never_answers_holds_up_neither_start_up_nor_ready(tmp_path, systemd_socket, caplog):
    address, receiver = systemd_socket
    systemd = Systemd(receiver)
    token = "ntn_sentinelStartToken0000000000000000000"
    async with AsyncExitStack() as stack:
        clock = ManualClock()
        notion = await stack.enter_async_context(FakeNotion(token=token, clock=clock))
        notion.script(*[STALL_RESPONSE] * 20, method="GET", path="/v1/databases")
        settings = settings_for(
            tmp_path,
            admin_ids=frozenset({USER}),
            notion=NotionSettings(Secret(token), notion.database_id.replace("-", ""), notion.base_url),
            limits=LimitSettings(knowledge_timeout=30.0),
        )
        client = FakeTelegramClient(clock)
        started = clock.monotonic()
        # No time passes while the app is built: a start that waited on Notion would never end.
        service = await asyncio.wait_for(build_service(stack, settings, clock, address, client), 30)
        running = asyncio.ensure_future(service.run())
        await clock.run_until(lambda: systemd.received("READY=1"), poll=POLL, limit=20)
        assert clock.monotonic() - started < 30, "READY=1 came before Notion's first attempt timed out"
        assert notion.requests_to("GET", "/v1/databases"), "the check had begun"

        await clock.run_until(lambda: "unreachable" in notes_log(caplog), poll=POLL)
        assert "notes: Notion database unreachable" in notes_log(caplog)
        health = new_message_event(chat_id=USER, sender_id=USER, text="/health", message_id=next(MESSAGE_IDS))
        await clock.run_until_complete(client.deliver(health), poll=POLL)
        await clock.run_until_complete(service.app.services.lanes.wait_all_idle(), poll=POLL)
        [report] = [m.text for m in client.messages(USER)]
        [notion_line] = [line for line in report.splitlines() if "notion" in line]
        assert "10 s" in notion_line and token not in report
        service.request_stop()
        assert await clock.run_until_complete(running, poll=POLL) == EXIT_OK


def notes_log(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "handlers.notes")


# --- switchboard check ------------------------------------------------------------------------


async def run_check(settings, *, let_time_pass: bool = False, **options) -> tuple[int, str]:
    """`check` on a manual clock: probe latencies read 0 ms, and deadlines pass only if asked."""
    out = io.StringIO()
    clock = ManualClock()
    checking = check_command(settings, out, clock=clock, **options)
    code = await (clock.run_until_complete(checking) if let_time_pass else checking)
    return code, out.getvalue()


async def test_check_probes_each_provider_and_prints_one_line_each_with_latency(tmp_path):
    async with FakeAnthropic(api_key=ANTHROPIC_KEY) as claude, FakeOpenAI(api_key=OPENAI_KEY) as gpt:
        settings = settings_for(tmp_path, anthropic=claude, openai=gpt, models=[CLAUDE, "openai:gpt-test"])
        code, out = await run_check(settings)
    assert code == 0, out
    assert "✓ anthropic models: 2 models offered, including claude-test (0 ms)" in out
    assert "✓ openai models: 2 models offered, including gpt-test (0 ms)" in out
    assert "✓ state directory" in out and "✓ settings: valid" in out
    assert out.rstrip().endswith("checks passed.")


async def test_check_fails_on_a_refused_key_without_printing_it(tmp_path):
    wrong = "sk-ant-sentinel-wrong-key-0000000000000000"
    async with FakeAnthropic(api_key=ANTHROPIC_KEY) as claude:
        settings = replace(settings_for(tmp_path, anthropic=claude, models=[CLAUDE]), anthropic_api_key=Secret(wrong))
        code, out = await run_check(settings)
    assert code == 1
    assert "✗ anthropic models: anthropic:" in out and "401" in out
    assert wrong not in out and ANTHROPIC_KEY not in out


async def test_check_flags_a_configured_model_the_provider_no_longer_offers(tmp_path):
    async with FakeAnthropic(api_key=ANTHROPIC_KEY) as claude:
        code, out = await run_check(settings_for(tmp_path, anthropic=claude, models=["anthropic:claude-retired"]))
    assert code == 1
    assert "✗ anthropic models:" in out and "lacks claude-retired" in out


async def test_offline_check_calls_no_upstream(tmp_path):
    async with FakeAnthropic(api_key=ANTHROPIC_KEY) as claude:
        code, out = await run_check(settings_for(tmp_path, anthropic=claude, models=[CLAUDE]), offline=True)
        assert claude.server.requests == []
    assert code == 0 and "upstreams not probed" in out


async def test_check_refuses_a_state_directory_or_session_others_can_read(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    session = state / "switchboard.session"
    session.write_text("")
    os.chmod(session, 0o644)
    telegram = TelegramSettings(1, Secret("0" * 32), BOT_TOKEN, session)
    code, out = await run_check(settings_for(state, telegram=telegram), offline=True)
    assert code == 1
    assert f"✗ state directory: {state} is open to other users (mode 0755); run: chmod 700 {state}" in out
    assert "✗ telegram session:" in out and "chmod 600" in out


async def test_knowledge_upstreams_are_probed_through_their_hooks_with_a_deadline(tmp_path):
    notion = NotionSettings(Secret("ntn_" + "s" * 40), "0" * 32)

    async def notion_answers(settings):
        assert settings is notion
        return "database 'Notes' with 1 data source"

    async def notion_refuses(settings):
        raise AuthFailed("API token is invalid", upstream="notion", status=401)

    async def notion_hangs(settings):
        await asyncio.Event().wait()

    async with FakeAnthropic(api_key=ANTHROPIC_KEY) as claude:  # a model too: `check` fails when none could answer
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE], notion=notion)
        code, out = await run_check(settings, knowledge={"notion": notion_answers})
        assert code == 0 and "✓ notion: database 'Notes' with 1 data source (0 ms)" in out
        code, out = await run_check(settings, knowledge={"notion": notion_refuses})
        assert code == 1 and "✗ notion: notion: API token is invalid (HTTP 401)" in out
        code, out = await run_check(settings, knowledge={"notion": notion_hangs}, timeout=10, let_time_pass=True)
        assert code == 1 and "✗ notion: no answer within 10 s (10000 ms)" in out
        code, out = await run_check(settings, knowledge={"notion": None})
        assert code == 0 and "– notion: not probed" in out


async def test_check_retrieves_the_notion_database_and_names_a_refused_token(tmp_path):
    token = "ntn_sentinelCheckToken0000000000000000000"
    async with FakeNotion(token=token, clock=ManualClock()) as notion, FakeAnthropic(api_key=ANTHROPIC_KEY) as claude:
        notes = NotionSettings(Secret(token), notion.database_id, notion.base_url)
        settings = settings_for(tmp_path, anthropic=claude, models=[CLAUDE], notion=notes)  # and a model that answers
        code, out = await run_check(settings)
        assert code == 0, out
        assert "✓ notion: database 'Notes' reachable, 1 data source (0 ms)" in out
        wrong = "ntn_sentinelWrongToken0000000000000000000"
        code, out = await run_check(replace(settings, notion=NotionSettings(Secret(wrong), notion.database_id, notion.base_url)))
    assert code == 1 and "✗ notion: notion:" in out and "401" in out
    assert token not in out and wrong not in out


# --- the command line -------------------------------------------------------------------------


async def test_help_lists_every_subcommand(tmp_path):
    code, out, _ = await run_cli(["--help"], clean_env(tmp_path), tmp_path)
    assert code == 0
    for command in ("run", "console", "status", "check"):
        assert f"    {command} " in out


async def test_check_command_exits_zero_when_ready_and_two_on_bad_settings(tmp_path):
    key = "sk-ant-sentinel-cli-check-000000000000000"
    async with FakeAnthropic(api_key=key) as claude:
        env = clean_env(tmp_path, ANTHROPIC_API_KEY=key, ANTHROPIC_BASE_URL=claude.base_url, LLM_MODELS=CLAUDE)
        code, out, err = await run_cli(["check"], env, tmp_path)
    assert code == 0, out + err
    assert "✓ anthropic models: 2 models offered, including claude-test (" in out
    assert key not in out + err
    code, out, err = await run_cli(["check"], clean_env(tmp_path, LLM_FIRST_TOKEN_TIMEOUT="-1"), tmp_path)
    assert code == 2 and "✗ settings: 1 problem(s)" in out and "LLM_FIRST_TOKEN_TIMEOUT" in err


async def test_status_prints_the_report_from_the_database_of_a_stopped_bot(tmp_path):
    settings = settings_for(tmp_path)
    async with AsyncExitStack() as stack:
        await start_telegram_bot(stack, settings)
    out = io.StringIO()
    assert await print_status(settings, stdout=out) == 0
    assert out.getvalue().startswith("Switchboard status")


async def test_status_before_the_first_run_says_there_is_no_database(tmp_path, capsys):
    assert await print_status(settings_for(tmp_path / "never-ran")) == 1
    assert "has not run" in capsys.readouterr().err
