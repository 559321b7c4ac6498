"""The embedded offline model, for real: a llama.cpp server child process serving SmolLM2.

These start the real server (about a second each), so one server is shared by the tests that
only talk to it; the lifecycle tests start their own. Waits here are on real processes and are
bounded by GUARD; the supervisor's restart backoff runs on a ManualClock.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sys
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
import pytest_asyncio

from handlers.basic import basic_commands
from handlers.router import Router
from handlers.services import ChatSettings
from handlers.transport import IncomingMessage
from integrations.chain import ChainModel, ChainTimeouts, ModelChain
from integrations.clock import ManualClock
from integrations.errors import ContextTooLong, Unavailable
from integrations.llm import ChatMessage, ChatRequest, ModelRef, StreamResult
from integrations.local_model import (
    LOCAL_ALIAS,
    LOCAL_CONTEXT_TOKENS,
    LOCAL_MARKER,
    LocalModelError,
    LocalModelServer,
    install_hint,
    local_model_available,
)
from integrations.openai import OpenAIChat
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.providers import Script, ScriptedProvider
from tests.harness import USER, start_bot

FILES = local_model_available()
pytestmark = [
    pytest.mark.skipif(FILES is None, reason=f"offline model packages not installed. {install_hint()}"),
    pytest.mark.asyncio(loop_scope="module"),
]
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Real-time bound on waiting for a real process; nothing here normally comes close.
GUARD = 30.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[LocalModelServer]:
    assert FILES is not None
    local = LocalModelServer(ManualClock(), model_path=FILES.model_path)
    await asyncio.wait_for(local.start(), GUARD)
    yield local
    await local.stop()


async def stream_text(chat: OpenAIChat, request: ChatRequest) -> tuple[list[str], StreamResult]:
    result = StreamResult()

    async def collect() -> list[str]:
        return [chunk async for chunk in chat.stream(request, result)]

    return await asyncio.wait_for(collect(), GUARD), result


def ask(text: str, *, max_tokens: int) -> ChatRequest:
    return ChatRequest(LOCAL_ALIAS, [ChatMessage("user", text)], "Be brief.", max_tokens)


async def test_offline_model_streams_a_reply_bounded_by_max_tokens(server):
    chat = OpenAIChat(api_key="local", base_url=server.base_url, name="local")
    try:
        chunks, result = await stream_text(chat, ask("Tell me a very long story about a cat.", max_tokens=12))
    finally:
        await chat.aclose()
    assert len(chunks) >= 3, "the reply should stream token by token"
    assert "".join(chunks).strip()
    # llama-cpp-python reads only max_tokens; the server's shim maps our max_completion_tokens onto it.
    assert result.stop_reason == "length"
    assert len(chunks) <= 12
    assert result.request_id


async def test_prompt_longer_than_the_context_window_is_context_too_long(server):
    chat = OpenAIChat(api_key="local", base_url=server.base_url, name="local")
    try:
        with pytest.raises(ContextTooLong):
            await stream_text(chat, ask("word " * 3000, max_tokens=16))
        # The server is still fine afterwards.
        chunks, _ = await stream_text(chat, ask("Say hello.", max_tokens=4))
    finally:
        await chat.aclose()
    assert chunks


async def test_llama_cpp_stream_has_the_shape_our_openai_fake_sends(server):
    body = {
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_completion_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    real = await sse_events(server.base_url, "local", {**body, "model": LOCAL_ALIAS})
    async with FakeOpenAI(api_key="sk-fake", models=["gpt-test"]) as fake:
        faked = await sse_events(fake.base_url, "sk-fake", {**body, "model": "gpt-test"})

    for events in (real, faked):
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        with_choices = [c for c in chunks if c["choices"]]
        assert with_choices[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        assert all(c["choices"][0]["finish_reason"] is None for c in with_choices[:-1])
    real_chunks = [json.loads(e) for e in real[:-1]]
    fake_chunks = [json.loads(e) for e in faked[:-1]]
    # Every field llama.cpp sends, the fake sends too (the fake adds service_tier, system_fingerprint, usage).
    assert set().union(*(c.keys() for c in real_chunks)) <= set().union(*(c.keys() for c in fake_chunks))
    choice_keys = {k for c in real_chunks for choice in c["choices"] for k in choice}
    assert choice_keys == {k for c in fake_chunks for choice in c["choices"] for k in choice}
    # A known gap: llama-cpp-python ignores stream_options, so the local model reports no usage.
    assert [c for c in real_chunks if c.get("usage")] == []
    assert [c for c in fake_chunks if c.get("usage")]


async def sse_events(base_url: str, key: str, body: dict[str, Any]) -> list[str]:
    events: list[str] = []
    async with httpx.AsyncClient(timeout=GUARD, trust_env=False) as client:
        headers = {"authorization": f"Bearer {key}"}
        async with client.stream("POST", f"{base_url}/chat/completions", json=body, headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    events.append(line[len("data: "):])
    return events


async def test_when_cloud_models_fail_the_offline_model_answers_and_says_so(server, tmp_path):
    claude = ScriptedProvider("anthropic", default=Script(error=Unavailable("overloaded", upstream="anthropic")))
    gpt = ScriptedProvider("openai", default=Script(error=Unavailable("HTTP 503", upstream="openai")))
    local = OpenAIChat(api_key="local", base_url=server.base_url, name="local")
    async with AsyncExitStack() as stack:
        stack.push_async_callback(local.aclose)
        bot = await start_bot(stack, tmp_path, [])
        chain = ModelChain(
            [
                ChainModel(ModelRef("anthropic", "claude-test"), claude),
                ChainModel(ModelRef("openai", "gpt-test"), gpt),
                ChainModel(
                    ModelRef("local", LOCAL_ALIAS), local, context_tokens=LOCAL_CONTEXT_TOKENS, marker=LOCAL_MARKER
                ),
            ],
            bot.clock,
            ChainTimeouts(first_token=20, idle=30, total=300),
        )
        services = replace(bot.services, chain=chain, chat=ChatSettings(system_prompt="Be brief.", max_tokens=24))
        router = Router(services, basic_commands())

        # The bot's clock stays still: the real model answers in real time, and no pacing wait is due.
        async def user_says(text: str) -> None:
            await router.handle(IncomingMessage(USER, USER, 1, text))
            await services.lanes.wait_all_idle()

        await asyncio.wait_for(user_says("What colour is the sky?"), GUARD)

    [reply] = bot.transport.texts(USER)
    answer, _, marker = reply.rpartition("\n\n")
    assert answer.strip(), "the offline model's own words come first"
    assert marker == LOCAL_MARKER, "the user is told the answer came from the small offline model"
    assert len(claude.requests) == 1 and len(gpt.requests) == 1


async def test_killed_server_is_restarted_at_the_same_address_and_stop_leaves_no_process(caplog):
    assert FILES is not None
    clock = ManualClock()
    server = LocalModelServer(clock, model_path=FILES.model_path, restart_backoff=(5,))
    try:
        base_url = await asyncio.wait_for(server.start(), GUARD)
        first_pid = server.pid
        assert first_pid is not None and alive(first_pid)
        killed_at = clock.monotonic()
        with caplog.at_level(logging.WARNING, logger="integrations.local_model"):
            os.kill(first_pid, signal.SIGKILL)
            await asyncio.wait_for(clock.run_until(lambda: server.restarts == 1 and server.running), GUARD)
        assert clock.monotonic() - killed_at >= 5, "the restart waits out its backoff"
        assert "killed by SIGKILL" in caplog.text
        assert server.pid != first_pid and not alive(first_pid)
        assert server.base_url == base_url

        chat = OpenAIChat(api_key="local", base_url=base_url, name="local")
        try:
            chunks, _ = await stream_text(chat, ask("Say hello.", max_tokens=4))
        finally:
            await chat.aclose()
        assert chunks
        second_pid = server.pid
    finally:
        await server.stop()
    assert not alive(second_pid)
    assert processes_in_group(second_pid) == []
    assert not server.running


async def test_crash_loop_backs_off_step_by_step_and_recovers(tmp_path, caplog):
    assert FILES is not None
    model = tmp_path / "model.gguf"
    model.symlink_to(FILES.model_path)
    clock = ManualClock()
    server = LocalModelServer(clock, model_path=model, restart_backoff=(1, 2, 5))
    try:
        await asyncio.wait_for(server.start(), GUARD)
        with caplog.at_level(logging.WARNING, logger="integrations.local_model"):
            model.unlink()  # every restart now fails until the weights come back
            os.kill(server.pid, signal.SIGKILL)
            await asyncio.wait_for(clock.run_until(lambda: len(failed_restarts(caplog)) >= 2), GUARD)
            model.symlink_to(FILES.model_path)
            await asyncio.wait_for(clock.run_until(lambda: server.restarts == 1), GUARD)
        delays = [float(m.group(1)) for m in map(RESTART_DELAY.search, caplog.messages) if m]
        assert delays[:3] == [1, 2, 5]
        assert delays[3:] in ([], [5]), "the backoff stays at its last step"
        assert "model.gguf" in failed_restarts(caplog)[0], "the operator sees the server's own complaint"
        assert server.running
    finally:
        await server.stop()


async def test_unloadable_model_fails_start_with_the_servers_own_error(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file" * 100)
    server = LocalModelServer(ManualClock(), model_path=broken)
    with pytest.raises(LocalModelError) as failure:
        await asyncio.wait_for(server.start(), GUARD)
    assert "exited during startup (exit code 1)" in str(failure.value)
    assert "broken.gguf" in str(failure.value)
    assert not server.running


RESTART_DELAY = re.compile(r"restarting the offline model server in ([0-9.]+) s")


def failed_restarts(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [m for m in caplog.messages if m.startswith("offline model restart failed")]


async def test_server_dies_with_the_bot_even_when_the_bot_is_killed(tmp_path):
    assert FILES is not None
    bot_script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from integrations.local_model import LocalModelServer\n"
        "from integrations.clock import SystemClock\n"
        "async def main():\n"
        "    server = LocalModelServer(SystemClock(), model_path=Path(sys.argv[1]), log_path=Path(sys.argv[2]))\n"
        "    await server.start()\n"
        "    print(server.pid, flush=True)\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    bot = await asyncio.create_subprocess_exec(
        sys.executable, "-c", bot_script, str(FILES.model_path), str(tmp_path / "local-model.log"),
        stdout=asyncio.subprocess.PIPE,
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    try:
        line = await asyncio.wait_for(bot.stdout.readline(), GUARD)
        server_pid = int(line)
        assert alive(server_pid)
    finally:
        bot.kill()
        await bot.wait()
    await asyncio.wait_for(until_gone(server_pid), GUARD)


def alive(pid: int) -> bool:
    state = _stat(pid)
    return state is not None and state[0] != "Z"


def processes_in_group(group: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            state = _stat(int(entry.name))
            if state is not None and state[0] != "Z" and state[2] == group:
                members.append(int(entry.name))
    return members


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, process group) from /proc, or None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[2])


async def until_gone(pid: int) -> None:
    while alive(pid):
        await asyncio.sleep(0.05)


async def test_in_the_service_the_offline_model_starts_in_the_background_and_answers_once_up(tmp_path):
    from bot.app import build_app
    from integrations.clock import SystemClock
    from tests.fakes.transport import RecordingTransport
    from tests.integration.telegram_bot import settings_for

    settings = replace(settings_for(tmp_path, llm_local="auto", allowed_user_ids=frozenset({USER})))
    clock = SystemClock()
    transport = RecordingTransport(clock)
    async with AsyncExitStack() as stack:
        app = await asyncio.wait_for(build_app(settings, clock, transport, stack, local_model_in_background=True), GUARD)
        assert app.services.chain.refs == [], "the bot is built (and can log in) before the model is up"
        await app.router.handle(IncomingMessage(USER, USER, 1, "Say hello.", True, True, "u"))
        await asyncio.wait_for(app.services.lanes.wait_all_idle(), GUARD * 2)
        [reply] = transport.texts(USER)
        assert LOCAL_MARKER in reply and not reply.startswith("No language model")
        assert [str(ref) for ref in app.services.chain.refs] == ["local:smollm2"]


def _console(state_dir: Path) -> tuple[Any, int]:
    """`switchboard console` as a new user starts it: on a terminal, no keys, the offline model on."""
    import pty
    import subprocess

    terminal, child_side = pty.openpty()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(state_dir.parent), "STATE_DIR": str(state_dir), "LANG": "C.UTF-8"}
    console = subprocess.Popen(
        [str(PROJECT_ROOT / ".venv" / "bin" / "switchboard"), "console"],
        stdin=child_side, stdout=child_side, stderr=child_side, env=env, start_new_session=True,
    )
    os.close(child_side)
    return console, terminal


def _read_until(terminal: int, wanted: bytes, seen: bytearray) -> bytes:
    """What the terminal shows until `wanted` appears after what was `seen` (bounded by GUARD)."""
    import select
    import time

    start, deadline = len(seen), time.monotonic() + GUARD
    while wanted not in seen[start:]:
        ready, _, _ = select.select([terminal], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no {wanted!r} on the terminal within {GUARD} s; it shows: {bytes(seen[start:])!r}"
        seen += os.read(terminal, 4096)
    return bytes(seen[start:])


async def test_the_console_prompts_before_the_offline_model_is_up_and_answers_once_it_is(tmp_path):
    state_dir = tmp_path / "state"
    console, terminal = _console(state_dir)
    seen = bytearray()
    try:
        banner = await asyncio.to_thread(_read_until, terminal, b"you> ", seen)
        assert b"Models: local:smollm2 (starting)" in banner
        os.write(terminal, b"Say hello.\n")
        reply = await asyncio.to_thread(_read_until, terminal, b"you> ", seen)
        assert LOCAL_MARKER.encode() in reply and b"No language model" not in reply
        assert _servers_of(console.pid), "the console's offline model server is running"
        os.write(terminal, b"\x04")
        assert await asyncio.wait_for(asyncio.to_thread(console.wait), GUARD) == 0
    finally:
        console.kill()
        os.close(terminal)
    await asyncio.wait_for(_until_no_server_of(console.pid), GUARD)


async def test_quitting_the_console_while_the_offline_model_starts_leaves_no_server(tmp_path):
    state_dir = tmp_path / "state"
    console, terminal = _console(state_dir)
    try:
        await asyncio.to_thread(_read_until, terminal, b"you> ", bytearray())
        os.write(terminal, b"\x04")  # at once: the model is still starting
        assert await asyncio.wait_for(asyncio.to_thread(console.wait), GUARD) == 0
    finally:
        console.kill()
        os.close(terminal)
    await asyncio.wait_for(_until_no_server_of(console.pid), GUARD)


def _servers_of(parent: int) -> list[int]:
    """The offline model servers started by process `parent` (it names its parent on its command line)."""
    wanted = f"--parent-pid\0{parent}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and wanted in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return [pid for pid in found if alive(pid)]


async def _until_no_server_of(parent: int) -> None:
    for pid in _servers_of(parent):
        await until_gone(pid)
