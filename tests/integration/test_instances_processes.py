"""Two real bot processes answering at once against one PostgreSQL (bench/standby_soak.py's
machinery: its fake Telegram over a socket, the paced fake model): the leader receives, the worker
answers too, the leader is SIGKILLed twice, and every message is answered exactly once."""
from __future__ import annotations

import pytest

from bench.standby_soak import soak


@pytest.mark.timeout(400)
async def test_two_processes_both_answer_and_every_message_is_answered_once(tmp_path, postgres_cluster):
    url = postgres_cluster.url(postgres_cluster.create_database())
    bench = await soak(kills=2, seed=11, workdir=tmp_path, database_url=url)
    tally = bench.tally
    assert tally.problems == []
    assert tally.questions > 0 and tally.once == tally.questions
    assert (tally.twice, tally.never, tally.partial) == (0, 0, 0)
    log = bench.log_path.read_text()
    assert "instance bot-b: answering as a worker; the leader receives" in log
    for name in ("bot-a", "bot-b"):
        assert f"instance {name} takes chat " in log, f"{name} answered some chats"
