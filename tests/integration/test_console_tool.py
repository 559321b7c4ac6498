"""The console as a real tool: links, multi-line messages, a JSON-lines mode for scripts, and a
`make run` whose stdout carries only the bot's replies."""
import asyncio
import json
from contextlib import AsyncExitStack

from bot.console import ConsoleTransport
from handlers.richtext import Entity, RichText
from integrations.chain import ChainModel, ModelChain
from integrations.llm import ModelRef
from tests.fakes import anthropic_server as anth
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.providers import Script, ScriptedProvider
from tests.harness import start_bot
from tests.integration.test_cli import ROOT, clean_env, run_cli

KEY = "sk-ant-console-tool-key-000000000000000"
CLAUDE = "anthropic:claude-test"


def claude_env(tmp_path, claude, **extra):
    return clean_env(tmp_path, ANTHROPIC_API_KEY=KEY, ANTHROPIC_BASE_URL=claude.base_url, LLM_MODELS=CLAUDE, **extra)


async def test_a_link_prints_its_address_after_its_words(tmp_path):
    async with FakeAnthropic(api_key=KEY, default=anth.Reply("Read [the docs](https://example.com/docs) first.")) as claude:
        code, out, err = await run_cli(["console"], claude_env(tmp_path, claude), tmp_path, stdin="where?\n")
    assert (code, out) == (0, "Read the docs (https://example.com/docs) first.\n\n"), err


async def test_a_scripted_console_does_not_print_what_it_deleted():
    transport = ConsoleTransport(_Sink(), live=False)
    stale = await transport.send(1, RichText.plain("partial"))
    kept = await transport.send(1, RichText("see here", (Entity("text_url", 4, 4, url="https://x.example"),)))
    await transport.delete(1, [stale])
    assert transport.take_new_replies() == ["see here (https://x.example)"]
    assert kept != stale


async def test_a_trailing_backslash_and_triple_quotes_make_one_message_of_several_lines(tmp_path):
    async with FakeAnthropic(api_key=KEY, default=anth.Reply("Got it.")) as claude:
        stdin = 'first line \\\nsecond line\n"""\nblock one\n\nblock two\n"""\n'
        code, out, err = await run_cli(["console"], claude_env(tmp_path, claude), tmp_path, stdin=stdin)
    assert (code, out) == (0, "Got it.\n\nGot it.\n\n"), err
    asked = [request.json["messages"][-1]["content"] for request in claude.message_requests]
    assert asked == ["first line \nsecond line", "block one\n\nblock two"]


async def test_help_in_the_console_says_how_to_write_several_lines(tmp_path):
    code, out, err = await run_cli(["console"], clean_env(tmp_path), tmp_path, stdin="/help\n")
    assert code == 0 and "end a line with \\" in out and '"""' in out


async def test_jsonl_mode_answers_one_json_object_per_line(tmp_path):
    answer = "Two paragraphs.\n\nThe second one."
    async with FakeAnthropic(api_key=KEY, default=anth.Reply(answer)) as claude:
        stdin = json.dumps({"text": "hello"}) + "\n" + "not json\n" + json.dumps({"note": "no text"}) + "\n"
        code, out, err = await run_cli(["console", "--jsonl"], claude_env(tmp_path, claude), tmp_path, stdin=stdin)
    assert code == 0, err
    first, second, third = [json.loads(line) for line in out.splitlines()]
    assert first == {"reply": answer, "model": CLAUDE, "messages": [answer]}
    assert "not a JSON object" in second["error"]
    assert "text" in third["error"]
    assert claude.calls == 1


async def test_make_run_prints_only_the_replies_on_stdout(tmp_path):
    async with FakeAnthropic(api_key=KEY, default=anth.Reply("Hello there.")) as claude:
        env = claude_env(tmp_path, claude, PYTHONPATH="")
        process = await asyncio.create_subprocess_exec(
            "make", "-C", str(ROOT), "--no-print-directory", "run",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(b"hello\n"), 120)
    assert process.returncode == 0, err.decode()
    assert out.decode() == "Hello there.\n\n"


async def test_the_offline_model_note_is_shown_but_not_kept_in_the_history(tmp_path):
    marker = "Answered by the small offline model."
    provider = ScriptedProvider("local", default=Script(("Paris.",)))
    async with AsyncExitStack() as stack:
        bot = await start_bot(stack, tmp_path, [])
        chain = ModelChain([ChainModel(ModelRef("local", "smollm2"), provider, marker=marker)], bot.clock)
        object.__setattr__(bot.services, "chain", chain)
        await bot.say("Capital of France?")
        await bot.say("And of Italy?")
    assert bot.replies()[0].endswith(marker)
    assert [m.content for m in provider.requests[1].messages] == ["Capital of France?", "Paris.", "And of Italy?"]


class _Sink:
    def write(self, text: str) -> None: ...

    def flush(self) -> None: ...


