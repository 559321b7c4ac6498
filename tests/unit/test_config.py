"""Settings as an operator meets them: what is read from where, and what a mistake looks like."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.config import (
    ConfigError,
    CredentialSource,
    DcOverride,
    Secret,
    Settings,
    load_settings,
    telegram_hint,
)
from integrations.llm import ModelRef

API_HASH = "0123456789abcdef0123456789abcdef"
BOT_TOKEN = "123456:" + "A" * 35
SENTINEL_HASH = "fedcba9876543210fedcba98765432ZZ"  # 32 chars, not hex: malformed on purpose
SENTINEL_TOKEN = "not-a-token-SENTINEL-7f3a9c"
SENTINEL_KEY = "sk-SENTINEL-4b1e"


def telegram_env(**extra: str) -> dict[str, str]:
    return {
        "TELEGRAM_API_ID": "12345",
        "TELEGRAM_API_HASH": API_HASH,
        "TELEGRAM_BOT_TOKEN": BOT_TOKEN,
        "ADMIN_IDS": "42",
        **extra,
    }


def problems_of(environ: dict[str, str], tmp_path: Path, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ, cwd=tmp_path, **kwargs)
    return caught.value.problems


def only_problem(environ: dict[str, str], tmp_path: Path) -> str:
    problems = problems_of(environ, tmp_path)
    assert len(problems) == 1, problems
    return problems[0]


# --- Secret -------------------------------------------------------------------------------------


def test_secret_hides_its_value_in_repr_str_and_fstrings():
    secret = Secret(SENTINEL_KEY)
    assert repr(secret) == "Secret('***')"
    assert str(secret) == "***"
    assert SENTINEL_KEY not in f"{secret} {secret!r} {[secret]}"
    assert secret.reveal() == SENTINEL_KEY


def test_secrets_compare_by_value_and_empty_one_is_falsy():
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"
    assert not Secret("")
    assert Secret("x")


# --- Defaults and console mode ------------------------------------------------------------------


def test_nothing_configured_gives_console_mode_with_documented_defaults(tmp_path):
    settings = load_settings({}, cwd=tmp_path)
    assert settings.telegram is None
    assert settings.llm_models == ()
    assert settings.state_dir == tmp_path / "state-data"
    assert (settings.llm_first_token_timeout, settings.llm_idle_timeout) == (20, 30)
    assert (settings.llm_total_timeout, settings.llm_connect_timeout) == (300, 10)
    assert (settings.llm_max_tokens, settings.llm_context_tokens) == (1024, 100_000)
    assert settings.log_level == "INFO"
    assert settings.llm_local == "auto"
    assert settings.allow_everyone is False
    assert "Markdown" in settings.system_prompt and "Telegram" in settings.system_prompt
    assert settings.env_file is None
    assert settings.secret_values() == ()


def test_telegram_hint_names_the_three_settings():
    hint = telegram_hint()
    assert "\n" not in hint
    for name in ("TELEGRAM_API_ID", "TELEGRAM_API_HASH", "TELEGRAM_BOT_TOKEN"):
        assert name in hint


def test_state_dir_follows_systemd_state_directory_unless_set(tmp_path):
    systemd = load_settings({"STATE_DIRECTORY": "/var/lib/switchboard"}, cwd=tmp_path)
    assert systemd.state_dir == Path("/var/lib/switchboard")
    explicit = load_settings(
        {"STATE_DIRECTORY": "/var/lib/switchboard", "STATE_DIR": "data"}, cwd=tmp_path
    )
    assert explicit.state_dir == tmp_path / "data"


def test_state_dir_that_is_a_file_is_a_problem(tmp_path):
    (tmp_path / "data").write_text("")
    assert "STATE_DIR" in only_problem({"STATE_DIR": "data"}, tmp_path)


# --- Sources --------------------------------------------------------------------------------------


def test_dotenv_in_working_directory_is_read_and_environment_wins(tmp_path):
    (tmp_path / ".env").write_text("LOG_LEVEL=debug\nLLM_MAX_TOKENS=10\n# a comment\n")
    settings = load_settings({"LLM_MAX_TOKENS": "20"}, cwd=tmp_path)
    assert settings.log_level == "DEBUG"
    assert settings.llm_max_tokens == 20
    assert settings.env_file == tmp_path / ".env"


def test_empty_environment_value_does_not_hide_the_file_value(tmp_path):
    (tmp_path / ".env").write_text("LLM_MAX_TOKENS=10\n")
    assert load_settings({"LLM_MAX_TOKENS": ""}, cwd=tmp_path).llm_max_tokens == 10


def test_explicit_env_file_is_read_instead_of_dotenv(tmp_path):
    (tmp_path / ".env").write_text("LLM_MAX_TOKENS=10\n")
    (tmp_path / "prod.env").write_text("LLM_MAX_TOKENS=30\n")
    settings = load_settings({}, Path("prod.env"), cwd=tmp_path)
    assert settings.llm_max_tokens == 30
    assert settings.env_file == tmp_path / "prod.env"


def test_explicit_env_file_that_does_not_exist_is_a_problem(tmp_path):
    problems = problems_of({}, tmp_path, env_file=Path("missing.env"))
    assert len(problems) == 1
    assert "missing.env" in problems[0] and "does not exist" in problems[0]


def test_env_file_values_are_taken_literally_and_may_be_quoted(tmp_path):
    (tmp_path / ".env").write_text(
        'OPENAI_API_KEY="sk-$HOME-key"\nLLM_SYSTEM_PROMPT="Line one.\\nLine two."\n'
    )
    settings = load_settings({"HOME": "/root"}, cwd=tmp_path)
    assert settings.openai_api_key == Secret("sk-$HOME-key")
    assert settings.system_prompt == "Line one.\nLine two."


def test_credential_file_wins_over_environment_and_trailing_newline_is_stripped(tmp_path):
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "ANTHROPIC_API_KEY").write_text("sk-from-credential\n")
    settings = load_settings(
        {"CREDENTIALS_DIRECTORY": str(credentials), "ANTHROPIC_API_KEY": "sk-from-env"},
        cwd=tmp_path,
    )
    assert settings.anthropic_api_key == Secret("sk-from-credential")


def test_credentials_directory_that_does_not_exist_is_a_problem(tmp_path):
    problem = only_problem({"CREDENTIALS_DIRECTORY": str(tmp_path / "gone")}, tmp_path)
    assert "CREDENTIALS_DIRECTORY" in problem


def test_credential_source_sees_a_key_rotated_in_the_env_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("OPENAI_API_KEY=sk-old\n")
    settings = load_settings({}, cwd=tmp_path)
    env_file.write_text("OPENAI_API_KEY=sk-new\n")
    assert settings.openai_api_key == Secret("sk-old")
    assert settings.credentials.get("OPENAI_API_KEY") == "sk-new"


def test_credential_source_sees_a_rotated_credential_file(tmp_path):
    credentials = tmp_path / "creds"
    credentials.mkdir()
    key_file = credentials / "ANTHROPIC_API_KEY"
    key_file.write_text("sk-old\n")
    source = CredentialSource({"ANTHROPIC_API_KEY": "sk-env"}, None, credentials)
    assert source.get("ANTHROPIC_API_KEY") == "sk-old"
    key_file.write_text("sk-new\n")
    assert source.get("ANTHROPIC_API_KEY") == "sk-new"
    key_file.unlink()
    assert source.get("ANTHROPIC_API_KEY") == "sk-env"
    assert source.get("NOT_SET_ANYWHERE") is None


def test_settings_compare_without_their_credential_source(tmp_path):
    first = load_settings({"LOG_LEVEL": "ERROR"}, cwd=tmp_path)
    second = load_settings({"LOG_LEVEL": "ERROR"}, cwd=tmp_path)
    assert first.credentials is not second.credentials
    assert first == second
    assert first != load_settings({"LOG_LEVEL": "INFO"}, cwd=tmp_path)
    assert "credentials" not in repr(first)


# --- Telegram -------------------------------------------------------------------------------------


def test_complete_telegram_settings_select_telegram_mode(tmp_path):
    settings = load_settings(telegram_env(TELEGRAM_DC="2:149.154.167.40:443"), cwd=tmp_path)
    telegram = settings.telegram
    assert telegram is not None
    assert telegram.api_id == 12345
    assert telegram.api_hash.reveal() == API_HASH
    assert telegram.bot_token.reveal() == BOT_TOKEN
    assert telegram.session_path == tmp_path / "state-data" / "switchboard.session"
    assert telegram.dc == DcOverride(2, "149.154.167.40", 443)
    assert settings.admin_ids == {42}


def test_session_path_can_be_set(tmp_path):
    settings = load_settings(telegram_env(TELEGRAM_SESSION="/srv/bot.session"), cwd=tmp_path)
    assert settings.telegram.session_path == Path("/srv/bot.session")


def test_dc_override_accepts_an_ipv6_host(tmp_path):
    settings = load_settings(telegram_env(TELEGRAM_DC="2:[2001:67c:4e8:f002::a]:443"), cwd=tmp_path)
    assert settings.telegram.dc == DcOverride(2, "2001:67c:4e8:f002::a", 443)


def test_partial_telegram_settings_are_an_error_not_console_mode(tmp_path):
    problems = problems_of({"TELEGRAM_BOT_TOKEN": BOT_TOKEN, "ADMIN_IDS": "1"}, tmp_path)
    assert len(problems) == 2
    assert any("TELEGRAM_API_ID" in p and "not set" in p for p in problems)
    assert any("TELEGRAM_API_HASH" in p and "not set" in p for p in problems)


def test_telegram_dc_alone_means_telegram_is_intended(tmp_path):
    problems = problems_of({"TELEGRAM_DC": "2:127.0.0.1:443", "ALLOW_EVERYONE": "yes"}, tmp_path)
    assert [problem.split()[0] for problem in problems] == [
        "TELEGRAM_API_ID", "TELEGRAM_API_HASH", "TELEGRAM_BOT_TOKEN"
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TELEGRAM_API_ID", "abc"),
        ("TELEGRAM_API_ID", "0"),
        ("TELEGRAM_API_ID", "-5"),
        ("TELEGRAM_API_HASH", API_HASH[:-1]),
        ("TELEGRAM_API_HASH", API_HASH[:-1] + "g"),
        ("TELEGRAM_BOT_TOKEN", "123456:" + "A" * 34),
        ("TELEGRAM_BOT_TOKEN", "abc:" + "A" * 35),
        ("TELEGRAM_BOT_TOKEN", "123456:" + "A" * 34 + "!"),
        ("TELEGRAM_DC", "2:host"),
        ("TELEGRAM_DC", "0:host:443"),
        ("TELEGRAM_DC", "2:host:70000"),
        ("TELEGRAM_DC", "2::443"),
    ],
)
def test_malformed_telegram_setting_is_named(tmp_path, name, value):
    assert only_problem(telegram_env(**{name: value}), tmp_path).startswith(name)


def test_malformed_telegram_secrets_are_not_echoed(tmp_path):
    environ = telegram_env(TELEGRAM_API_HASH=SENTINEL_HASH, TELEGRAM_BOT_TOKEN=SENTINEL_TOKEN)
    with pytest.raises(ConfigError) as caught:
        load_settings(environ, cwd=tmp_path)
    text = str(caught.value) + repr(caught.value)
    assert "TELEGRAM_API_HASH" in text and "TELEGRAM_BOT_TOKEN" in text
    assert SENTINEL_HASH not in text
    assert SENTINEL_TOKEN not in text


def test_telegram_with_nobody_allowed_explains_the_three_fixes(tmp_path):
    environ = telegram_env()
    del environ["ADMIN_IDS"]
    problem = only_problem(environ, tmp_path)
    for fix in ("ADMIN_IDS", "ALLOWED_USER_IDS", "ALLOW_EVERYONE=true"):
        assert fix in problem


@pytest.mark.parametrize(
    "access",
    [{"ALLOWED_USER_IDS": "7"}, {"ADMIN_IDS": "7"}, {"ALLOW_EVERYONE": "TRUE"}],
)
def test_any_one_access_setting_opens_telegram_mode(tmp_path, access):
    environ = telegram_env()
    del environ["ADMIN_IDS"]
    assert load_settings({**environ, **access}, cwd=tmp_path).telegram is not None


def test_console_mode_needs_no_access_settings(tmp_path):
    assert load_settings({"ANTHROPIC_API_KEY": "sk-a"}, cwd=tmp_path).telegram is None


# --- Lists, booleans, numbers, choices ------------------------------------------------------------


def test_id_lists_accept_commas_and_spaces(tmp_path):
    settings = load_settings({"ALLOWED_USER_IDS": "1, 2 3,,4", "ADMIN_IDS": " 5 "}, cwd=tmp_path)
    assert settings.allowed_user_ids == {1, 2, 3, 4}
    assert settings.admin_ids == {5}


def test_bad_id_list_entries_are_named(tmp_path):
    problem = only_problem({"ALLOWED_USER_IDS": "1, @alice, 2, -3"}, tmp_path)
    assert problem.startswith("ALLOWED_USER_IDS")
    assert "'@alice'" in problem and "'-3'" in problem and "'2'" not in problem


def test_bad_id_list_on_telegram_does_not_also_claim_nobody_is_allowed(tmp_path):
    problem = only_problem(telegram_env(ADMIN_IDS="me"), tmp_path)
    assert problem.startswith("ADMIN_IDS") and "'me'" in problem


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("YES", True), ("1", True), ("On", True),
     ("false", False), ("no", False), ("0", False), ("OFF", False)],
)
def test_booleans_accept_the_usual_spellings(tmp_path, text, expected):
    assert load_settings({"ALLOW_EVERYONE": text}, cwd=tmp_path).allow_everyone is expected


def test_unknown_boolean_is_a_problem(tmp_path):
    problem = only_problem({"ALLOW_EVERYONE": "maybe"}, tmp_path)
    assert problem.startswith("ALLOW_EVERYONE") and "'maybe'" in problem


def test_numbers_are_read_and_must_be_positive(tmp_path):
    settings = load_settings(
        {"LLM_FIRST_TOKEN_TIMEOUT": "2.5", "LLM_CONTEXT_TOKENS": "8000"}, cwd=tmp_path
    )
    assert settings.llm_first_token_timeout == 2.5
    assert settings.llm_context_tokens == 8000


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LLM_IDLE_TIMEOUT", "0"),
        ("LLM_TOTAL_TIMEOUT", "-1"),
        ("LLM_CONNECT_TIMEOUT", "nan"),
        ("LLM_FIRST_TOKEN_TIMEOUT", "20s"),
        ("LLM_MAX_TOKENS", "1.5"),
        ("LLM_CONTEXT_TOKENS", "lots"),
    ],
)
def test_bad_number_is_named(tmp_path, name, value):
    problem = only_problem({name: value}, tmp_path)
    assert problem.startswith(name) and repr(value) in problem


def test_log_level_is_validated_and_normalised(tmp_path):
    assert load_settings({"LOG_LEVEL": "warn"}, cwd=tmp_path).log_level == "WARNING"
    assert only_problem({"LOG_LEVEL": "LOUD"}, tmp_path).startswith("LOG_LEVEL")


def test_llm_local_is_auto_or_off(tmp_path):
    assert load_settings({"LLM_LOCAL": "OFF"}, cwd=tmp_path).llm_local == "off"
    assert only_problem({"LLM_LOCAL": "sometimes"}, tmp_path).startswith("LLM_LOCAL")


# --- Providers and the model chain ----------------------------------------------------------------


def test_default_models_keep_only_configured_providers(tmp_path):
    anthropic_only = load_settings({"ANTHROPIC_API_KEY": "sk-a"}, cwd=tmp_path)
    assert anthropic_only.llm_models == (ModelRef("anthropic", "claude-sonnet-4-6"),)
    both = load_settings({"ANTHROPIC_API_KEY": "sk-a", "OPENAI_API_KEY": "sk-o"}, cwd=tmp_path)
    assert both.llm_models == (
        ModelRef("anthropic", "claude-sonnet-4-6"),
        ModelRef("openai", "gpt-5.1"),
    )


def test_openai_base_url_alone_configures_openai(tmp_path):
    settings = load_settings({"OPENAI_BASE_URL": "http://127.0.0.1:8080/v1"}, cwd=tmp_path)
    assert settings.llm_models == (ModelRef("openai", "gpt-5.1"),)
    assert settings.openai_base_url == "http://127.0.0.1:8080/v1"
    assert settings.openai_api_key is None


def test_explicit_models_keep_order_and_drop_duplicates(tmp_path):
    settings = load_settings(
        {
            "OPENAI_API_KEY": "sk-o",
            "ANTHROPIC_API_KEY": "sk-a",
            "LLM_MODELS": "openai:gpt-4o, anthropic:claude-x,openai:gpt-4o,local:smollm2:135m,",
        },
        cwd=tmp_path,
    )
    assert settings.llm_models == (
        ModelRef("openai", "gpt-4o"),
        ModelRef("anthropic", "claude-x"),
        ModelRef("local", "smollm2:135m"),
    )


def test_local_models_need_no_key(tmp_path):
    settings = load_settings({"LLM_MODELS": "local:smollm2"}, cwd=tmp_path)
    assert settings.llm_models == (ModelRef("local", "smollm2"),)


def test_listed_model_without_its_key_names_the_missing_key(tmp_path):
    problem = only_problem({"LLM_MODELS": "anthropic:claude-x"}, tmp_path)
    assert problem.startswith("LLM_MODELS") and "ANTHROPIC_API_KEY" in problem


def test_unknown_provider_and_malformed_entry_are_problems(tmp_path):
    problems = problems_of({"LLM_MODELS": "gemini:pro, gpt-4o"}, tmp_path)
    assert len(problems) == 2
    assert "'gemini'" in problems[0]
    assert "'gpt-4o'" in problems[1] and "provider:model" in problems[1]


@pytest.mark.parametrize("url", ["ftp://example.com", "127.0.0.1:8080", "https://"])
def test_base_url_must_be_http(tmp_path, url):
    problem = only_problem({"ANTHROPIC_API_KEY": "sk-a", "ANTHROPIC_BASE_URL": url}, tmp_path)
    assert problem.startswith("ANTHROPIC_BASE_URL")


def test_api_key_with_inner_whitespace_is_a_problem_that_hides_the_key(tmp_path):
    problem = only_problem({"OPENAI_API_KEY": f"{SENTINEL_KEY} extra"}, tmp_path)
    assert problem.startswith("OPENAI_API_KEY")
    assert SENTINEL_KEY not in problem


# --- Reporting ------------------------------------------------------------------------------------


def test_every_problem_is_reported_at_once(tmp_path):
    environ = {
        "TELEGRAM_API_ID": "x",
        "TELEGRAM_API_HASH": SENTINEL_HASH,
        "TELEGRAM_BOT_TOKEN": SENTINEL_TOKEN,
        "OPENAI_API_KEY": f"{SENTINEL_KEY} pasted twice",
        "ANTHROPIC_BASE_URL": "nope",
        "LLM_MODELS": "anthropic:claude-x",
        "LLM_IDLE_TIMEOUT": "-1",
        "ALLOW_EVERYONE": "perhaps",
        "LOG_LEVEL": "LOUD",
    }
    with pytest.raises(ConfigError) as caught:
        load_settings(environ, Path("missing.env"), cwd=tmp_path)
    error = caught.value
    named = ("missing.env", "TELEGRAM_API_ID", "TELEGRAM_API_HASH", "TELEGRAM_BOT_TOKEN",
             "OPENAI_API_KEY", "ANTHROPIC_BASE_URL", "LLM_MODELS", "LLM_IDLE_TIMEOUT",
             "ALLOW_EVERYONE", "LOG_LEVEL")
    assert len(error.problems) == len(named)
    text = str(error)
    assert text.splitlines()[0] == f"Switchboard cannot start: {len(named)} configuration problems:"
    assert len(text.splitlines()) == len(named) + 1
    for name in named:
        assert name in text
    for secret in (SENTINEL_HASH, SENTINEL_TOKEN, SENTINEL_KEY):
        assert secret not in text
        assert secret not in repr(error)


def test_valid_secrets_do_not_appear_in_settings_repr_but_are_listed_for_redaction(tmp_path):
    settings = load_settings(
        telegram_env(OPENAI_API_KEY=SENTINEL_KEY, ANTHROPIC_API_KEY="sk-ant-SENTINEL"),
        cwd=tmp_path,
    )
    text = repr(settings)
    for secret in (SENTINEL_KEY, "sk-ant-SENTINEL", API_HASH, BOT_TOKEN):
        assert secret not in text
    assert set(settings.secret_values()) == {SENTINEL_KEY, "sk-ant-SENTINEL", API_HASH, BOT_TOKEN}


def test_settings_can_be_built_directly_for_other_tests(tmp_path):
    settings = Settings(state_dir=tmp_path, allow_everyone=True)
    assert settings.telegram is None and settings.credentials.get("ANYTHING") is None


def test_unreadable_credential_file_is_a_problem_naming_the_setting(tmp_path):
    credentials = tmp_path / "creds"
    (credentials / "OPENAI_API_KEY").mkdir(parents=True)  # a directory cannot be read as a file
    problem = only_problem({"CREDENTIALS_DIRECTORY": str(credentials)}, tmp_path)
    assert problem.startswith("OPENAI_API_KEY") and "LoadCredential=" in problem


def test_env_file_that_is_not_utf8_is_a_problem_without_its_content(tmp_path):
    (tmp_path / ".env").write_bytes(b"OPENAI_API_KEY=sk-\xff\xfeSENTINEL\n")
    problem = only_problem({}, tmp_path)
    assert ".env" in problem and "UTF-8" in problem and "SENTINEL" not in problem


def test_env_file_line_dotenv_would_skip_is_a_problem_naming_its_line_not_its_value(tmp_path):
    (tmp_path / ".env").write_text(
        "LLM_MAX_TOKENS=10\n"
        "# a comment\n"
        f"OPENAI_API_KEY='{SENTINEL_KEY}\n"  # the closing quote is missing
        "ALLOW_EVERYONE=maybe\n"
        f"just some words {SENTINEL_TOKEN}\n"
    )
    problems = problems_of({}, tmp_path)
    assert len(problems) == 3, problems
    first, second = [p for p in problems if "is not NAME=value" in p]
    assert "line 3 (it seems to set OPENAI_API_KEY)" in first
    assert "line 5 is not NAME=value" in second
    assert any(p.startswith("ALLOW_EVERYONE") for p in problems), "listed with the other problems"
    assert SENTINEL_KEY not in "".join(problems) and SENTINEL_TOKEN not in "".join(problems)


def test_credential_source_reads_past_a_bad_env_file_line_when_reloading(tmp_path):
    (tmp_path / ".env").write_text("oops no equals\nOPENAI_API_KEY=sk-after\n")
    source = CredentialSource({}, tmp_path / ".env")
    assert source.get("OPENAI_API_KEY") == "sk-after"


# --- names that look like settings but are none -------------------------------------------------


def test_a_mistyped_setting_is_a_warning_naming_the_closest_setting(tmp_path):
    (tmp_path / ".env").write_text(f"OPENAI_APIKEY={SENTINEL_KEY}\nADMIN_ID=42\nCOMPOSE_PROJECT_NAME=bot\n")
    settings = load_settings({"LLM_MODEL": "anthropic:claude-sonnet-4-6", "PATH": "/usr/bin"}, cwd=tmp_path)
    assert settings.warnings == (
        f"ADMIN_ID (in {tmp_path / '.env'}) is not a Switchboard setting, so it is ignored: did you mean ADMIN_IDS?",
        f"OPENAI_APIKEY (in {tmp_path / '.env'}) is not a Switchboard setting, so it is ignored: did you mean OPENAI_API_KEY?",
        "LLM_MODEL (in the environment) is not a Switchboard setting, so it is ignored: did you mean LLM_MODELS?",
    )
    assert SENTINEL_KEY not in repr(settings.warnings)


def test_a_prefixed_name_like_no_setting_is_still_named_and_the_sdks_own_are_not(tmp_path):
    environ = {"ANTHROPIC_MODEL": "claude", "OPENAI_ORG_ID": "org-1", "ANTHROPIC_LOG": "debug", "TELEGRAM_SESSION": "s"}
    [warning] = load_settings(environ, cwd=tmp_path).warnings
    assert warning == "ANTHROPIC_MODEL (in the environment) is not a Switchboard setting, so it is ignored (.env.example lists every setting)."


def test_every_setting_in_env_example_is_one_switchboard_reads():
    example = Path(__file__).resolve().parents[2] / ".env.example"
    # Every line that sets a setting, commented out or not (the file shows most of them commented).
    names = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", example.read_text(), flags=re.MULTILINE))
    assert {"TELEGRAM_BOT_TOKEN", "ANTHROPIC_API_KEY", "LLM_MODELS", "NOTION_TOKEN"} <= names
    # Empty values count as unset, so only the names are judged.
    assert load_settings({name: "" for name in names}, cwd=Path("/nonexistent")).warnings == ()


# --- systemd ------------------------------------------------------------------------------------


def test_no_telegram_settings_under_systemd_is_a_problem_naming_the_three(tmp_path):
    problem = only_problem({"NOTIFY_SOCKET": "/run/systemd/notify", "ANTHROPIC_API_KEY": SENTINEL_KEY}, tmp_path)
    assert problem.startswith("TELEGRAM_API_ID, TELEGRAM_API_HASH and TELEGRAM_BOT_TOKEN are not set")
    assert "systemd" in problem and SENTINEL_KEY not in problem
    assert load_settings(telegram_env(NOTIFY_SOCKET="/run/systemd/notify"), cwd=tmp_path).telegram is not None
