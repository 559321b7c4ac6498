"""deploy/switchboard.service as systemd reads it, and as the bot relies on it."""
import codecs
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import LimitSettings, load_settings
from bot.shutdown import FINALISE_SECONDS
from bot.telegram.service import EXIT_NEEDS_OPERATOR

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "switchboard.service"
INSTALLED = "/opt/switchboard/.venv/bin/switchboard"
SECRETS = {"TELEGRAM_BOT_TOKEN", "TELEGRAM_API_HASH", "ANTHROPIC_API_KEY", "OPENAI_API_KEY", "PERPLEXITY_API_KEY", "NOTION_TOKEN"}


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is missing and could not be installed (`make test` installs Debian's systemd package)")
    return path


def runnable_copy(directory: Path, text: str | None = None) -> Path:
    """The unit with its commands pointed at this checkout: verify insists they exist."""
    script = Path(sys.prefix) / "bin" / "switchboard"
    command = str(script) if script.exists() else f"{sys.executable} -m bot"
    copy = directory / "switchboard.service"
    copy.write_text((text or UNIT.read_text()).replace(INSTALLED, command))
    return copy


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([systemd_analyze(), *args], capture_output=True, text=True, timeout=60)


def settings_of(text: str) -> list[tuple[str, str]]:
    """(key, value) for every assignment of the [Service] and [Unit] sections, in order."""
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            pairs.append((key.strip(), value.strip()))
    return pairs


def one(pairs: list[tuple[str, str]], key: str) -> str:
    [value] = [v for k, v in pairs if k == key]
    return value


def seconds(duration: str) -> float:
    units = {"s": 1, "min": 60, "ms": 0.001}
    match = re.fullmatch(r"(\d+)(s|min|ms)?", duration)
    assert match, duration
    return int(match.group(1)) * units[match.group(2) or "s"]


def test_unit_passes_systemd_analyze_verify(tmp_path):
    result = analyze("verify", str(runnable_copy(tmp_path)))
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "switchboard" in line]
    assert result.returncode == 0 and complaints == [], result.stdout + result.stderr
    # The same check does object to a broken unit, so the silence above means something.
    broken = tmp_path / "broken"
    broken.mkdir()
    result = analyze("verify", str(runnable_copy(broken, UNIT.read_text().replace("WatchdogSec=", "WatchdogSecs="))))
    assert "WatchdogSecs" in result.stdout + result.stderr


def test_unit_hardening_leaves_little_exposed(tmp_path):
    result = analyze("security", "--offline=yes", str(runnable_copy(tmp_path)))
    match = re.search(r"Overall exposure level for switchboard\.service: (\d+\.\d+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0


def test_unit_runs_the_bot_the_way_the_bot_expects():
    pairs = settings_of(UNIT.read_text())
    assert one(pairs, "Type") == "notify" and one(pairs, "NotifyAccess") == "main"
    assert one(pairs, "ExecStart") == f"{INSTALLED} run"
    assert one(pairs, "ExecStartPre") == f"{INSTALLED} check --offline"
    assert one(pairs, "Restart") == "on-failure" and seconds(one(pairs, "RestartSec")) > 0
    assert str(EXIT_NEEDS_OPERATOR) in one(pairs, "RestartPreventExitStatus").split()
    assert 10 <= seconds(one(pairs, "WatchdogSec")) <= 120
    # systemd must not kill the bot while it is still finishing replies.
    assert seconds(one(pairs, "TimeoutStopSec")) > LimitSettings().shutdown_grace + FINALISE_SECONDS
    assert one(pairs, "StateDirectory") == "switchboard" and one(pairs, "StateDirectoryMode") == "0700"
    assert one(pairs, "UMask") == "0077" and one(pairs, "DynamicUser") == "yes"
    assert one(pairs, "EnvironmentFile") == "-/etc/switchboard/switchboard.env"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables", "ProtectKernelModules",
                "ProtectKernelLogs", "ProtectControlGroups", "RestrictNamespaces", "LockPersonality", "MemoryDenyWriteExecute",
                "RestrictRealtime", "RestrictSUIDSGID"):  # fmt: skip
        assert one(pairs, key) == "yes", key
    assert one(pairs, "ProtectSystem") == "strict" and one(pairs, "CapabilityBoundingSet") == ""
    assert one(pairs, "RestrictAddressFamilies") == "AF_UNIX AF_INET AF_INET6"
    assert one(pairs, "SystemCallFilter") == "@system-service" and one(pairs, "SystemCallArchitectures") == "native"


def test_every_secret_has_a_credential_file_and_a_fallback_when_the_file_is_missing():
    pairs = settings_of(UNIT.read_text())
    loaded = dict(value.split(":", 1) for key, value in pairs if key == "LoadCredential")
    fallbacks = dict(value.split(":", 1) for key, value in pairs if key == "SetCredential")
    assert set(loaded) == SECRETS and set(fallbacks) == SECRETS
    assert all(path == f"/etc/switchboard/credentials/{name}" for name, path in loaded.items())


def test_credentials_as_systemd_lays_them_out_are_read_and_a_missing_one_falls_back_to_the_env_file(tmp_path):
    """$CREDENTIALS_DIRECTORY holds a file per secret: the real one, or the unit's fallback value."""
    pairs = settings_of(UNIT.read_text())
    fallback = {name: codecs.decode(value, "unicode_escape") for name, value in (v.split(":", 1) for k, v in pairs if k == "SetCredential")}
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    anthropic_key = "sk-ant-sentinel-from-credential-file-0000"
    for name in SECRETS:
        (credentials / name).write_text(anthropic_key + "\n" if name == "ANTHROPIC_API_KEY" else fallback[name])
    env_file = tmp_path / "switchboard.env"
    env_file.write_text("OPENAI_API_KEY=sk-sentinel-from-env-file-000000000000\nLLM_LOCAL=off\n")
    state = tmp_path / "state"
    settings = load_settings(
        {"CREDENTIALS_DIRECTORY": str(credentials), "STATE_DIRECTORY": str(state)}, env_file, cwd=tmp_path
    )
    assert settings.anthropic_api_key.reveal() == anthropic_key
    assert settings.openai_api_key.reveal() == "sk-sentinel-from-env-file-000000000000"
    assert settings.telegram is None and settings.perplexity is None and settings.notion is None
    assert settings.state_dir == state
