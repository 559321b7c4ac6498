"""COMPACT_AT, COMPACT_TIMEOUT and CONVERSATION_IDLE_RESET as an operator writes them, and their mistakes."""
import pytest

from bot.config import ConfigError, ConversationSettings, load_settings


def conversation(tmp_path, **environ: str) -> ConversationSettings:
    return load_settings(environ, cwd=tmp_path).conversation


def problems(tmp_path, **environ: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ, cwd=tmp_path)
    return caught.value.problems


def test_by_default_conversations_are_summarised_at_three_quarters_of_the_window_and_never_reset(tmp_path):
    assert conversation(tmp_path) == ConversationSettings(compact_at=0.75, compact_timeout=20.0, idle_reset=None)


@pytest.mark.parametrize(
    ("value", "share"), [("0.5", 0.5), ("75%", 0.75), ("1", 1.0), ("off", None), ("OFF", None)]
)
def test_compact_at_takes_a_share_a_percentage_or_off(tmp_path, value, share):
    assert conversation(tmp_path, COMPACT_AT=value).compact_at == share


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("6h", 21600.0), ("90m", 5400.0), ("90min", 5400.0), ("2d", 172800.0), ("1h30m", 5400.0), ("3600", 3600.0),
     ("1.5h", 5400.0), ("6 h", 21600.0), ("off", None)],
)
def test_idle_reset_takes_a_duration_or_off(tmp_path, value, seconds):
    assert conversation(tmp_path, CONVERSATION_IDLE_RESET=value).idle_reset == seconds


@pytest.mark.parametrize("value", ["1.5", "0", "-0.2", "most", "150%"])
def test_a_bad_compact_at_is_one_clear_problem(tmp_path, value):
    assert problems(tmp_path, COMPACT_AT=value) == [
        f"COMPACT_AT must be a share of the model's context window above 0 and at most 1 "
        f"(e.g. 0.75 or 75%), or off, not {value!r}."
    ]


@pytest.mark.parametrize("value", ["six hours", "0", "1h30", "-5m", "h", "6 weeks"])
def test_a_bad_idle_reset_is_one_clear_problem(tmp_path, value):
    assert problems(tmp_path, CONVERSATION_IDLE_RESET=value) == [
        f"CONVERSATION_IDLE_RESET must be a duration such as 6h, 90m, 2d or 1h30m (a bare number is "
        f"seconds), or off, not {value!r}."
    ]


def test_a_bad_compact_timeout_is_a_problem_and_all_are_reported_at_once(tmp_path):
    found = problems(tmp_path, COMPACT_TIMEOUT="soon", COMPACT_AT="2", CONVERSATION_IDLE_RESET="0")
    assert [problem.split()[0] for problem in found] == ["COMPACT_AT", "COMPACT_TIMEOUT", "CONVERSATION_IDLE_RESET"]
    assert "COMPACT_TIMEOUT must be a positive number of seconds, not 'soon'." in found
