"""No keys at all: the console chats with the small offline model, and says so."""
import pytest

from integrations.local_model import LOCAL_MARKER, install_hint, local_model_available
from tests.integration.test_cli import clean_env, run_cli

pytestmark = pytest.mark.skipif(
    local_model_available() is None, reason=f"offline model packages not installed. {install_hint()}"
)


async def test_console_with_no_keys_answers_from_the_offline_model(tmp_path):
    env = clean_env(tmp_path, LLM_LOCAL="auto")
    code, out, err = await run_cli(["console"], env, tmp_path, stdin="Say hello.\n/model\n")
    assert code == 0, err
    first_reply = out.split("\n\n")[0]
    assert first_reply.strip() and not first_reply.startswith("Sorry")
    assert LOCAL_MARKER in out
    assert "Your model: `local:smollm2`" in out or "Your model: local:smollm2" in out
    assert "Traceback" not in err
    state_files = [path for path in (tmp_path / "state").iterdir() if path.is_file()]
    assert "local-model.log" in [path.name for path in state_files]
    assert {path.name: oct(path.stat().st_mode & 0o777) for path in state_files} == {
        path.name: "0o600" for path in state_files
    }, "every file in the state directory is private, the offline model's log included"


async def test_llm_local_off_leaves_no_model_and_says_how_to_configure_one(tmp_path):
    env = clean_env(tmp_path, LLM_LOCAL="off")
    code, out, err = await run_cli(["console"], env, tmp_path, stdin="Hello?\n")
    assert code == 0, err
    assert "ANTHROPIC_API_KEY" in out
