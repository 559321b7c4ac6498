"""Two real `switchboard` Telegram processes against one PostgreSQL (bench/standby_soak.py's
machinery): both answer (the leader receives, the other is a worker), the leader is SIGKILLed while
messages wait and replies stream, the worker takes over, and every message is answered exactly once."""
from __future__ import annotations

import pytest

from bench.standby_soak import TAKEOVER_TARGET, soak


@pytest.mark.timeout(400)
async def test_both_answer_the_worker_takes_over_a_killed_leader_and_every_message_is_answered_once(tmp_path, postgres_cluster):
    url = postgres_cluster.url(postgres_cluster.create_database())
    bench = await soak(kills=3, seed=7, workdir=tmp_path, database_url=url)
    tally = bench.tally
    assert tally.problems == []
    assert tally.kills == 3 and len(bench.takeovers) == 3
    assert tally.questions > 0 and tally.once == tally.questions
    assert (tally.twice, tally.never, tally.partial) == (0, 0, 0)
    assert tally.notes_once == tally.notes and tally.links_once == tally.notes
    assert max(bench.takeovers) <= TAKEOVER_TARGET
    assert bench.sent_leaderless > 0, "some messages arrived while nobody led"
    log = bench.log_path.read_text()
    assert "instance bot-b: answering as a worker; the leader receives" in log
    for name in ("bot-a", "bot-b"):
        assert f"instance {name} takes chat " in log, f"{name} answered some chats"
