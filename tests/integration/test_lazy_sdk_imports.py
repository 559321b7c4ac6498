"""An LLM SDK is imported only when a provider that uses it is built: none for a console without keys.

Each case runs in a fresh interpreter (the test process has imported every SDK long ago) and
prints which of the SDKs ended up in `sys.modules`.
"""
import json
import subprocess
import sys

import pytest

from tests.integration.test_cli import ROOT, clean_env

SDKS = ("anthropic", "openai")
UNREACHABLE = "http://127.0.0.1:9"  # building a client makes no call; the start-up model list fails fast

IMPORT_ONLY = """
import bot.__main__, bot.app, handlers.search
"""

BUILD_CONSOLE_APP = """
import asyncio
from contextlib import AsyncExitStack

from bot.__main__ import main  # the command line's own imports first
from bot.app import build_app
from bot.config import load_settings
from bot.console import CONSOLE_USER_ID, ConsoleTransport
from integrations.clock import SystemClock


async def build() -> None:
    async with AsyncExitStack() as stack:
        transport = ConsoleTransport(sys.stderr, live=False)
        await build_app(load_settings(), SystemClock(), transport, stack, extra_admins=frozenset({CONSOLE_USER_ID}))

asyncio.run(build())
"""


def sdks_loaded(tmp_path, script: str, **settings: str) -> list[str]:
    report = f"\nprint(json.dumps(sorted(name for name in {SDKS!r} if name in sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", "import json, sys\n" + script + report],
        env=clean_env(tmp_path, **settings), cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_importing_the_app_loads_no_llm_sdk(tmp_path):
    assert sdks_loaded(tmp_path, IMPORT_ONLY) == []


def test_a_console_app_without_provider_keys_loads_no_llm_sdk(tmp_path):
    assert sdks_loaded(tmp_path, BUILD_CONSOLE_APP) == []


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": UNREACHABLE}, ["anthropic"]),
        ({"OPENAI_BASE_URL": UNREACHABLE + "/v1"}, ["openai"]),
        ({"PERPLEXITY_API_KEY": "pplx-test", "PERPLEXITY_BASE_URL": UNREACHABLE}, ["openai"]),
    ],
    ids=["anthropic", "openai-compatible", "perplexity"],
)
def test_a_configured_provider_loads_only_its_sdk(tmp_path, settings, expected):
    assert sdks_loaded(tmp_path, BUILD_CONSOLE_APP, **settings) == expected


def test_the_repository_is_what_the_subprocess_imports(tmp_path):
    """The cases above test this checkout, not another installed copy."""
    done = subprocess.run(
        [sys.executable, "-c", "import bot.app; print(bot.app.__file__)"],
        env=clean_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert done.stdout.strip() == str(ROOT / "bot" / "app.py")
