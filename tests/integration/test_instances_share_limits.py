"""Three real `switchboard` Telegram processes against one PostgreSQL and one Redis (bench/standby_soak.py's
machinery), the model enforcing its request limit as Anthropic does: the leader is SIGKILLed, every
message is answered exactly once, and together the instances never go over the model's limit."""
from __future__ import annotations

import pytest

from bench.standby_soak import TAKEOVER_TARGET, soak

# Far below what the soak's users ask for (a question every ~0.7 s): the instances' shared limiter
# lets one request go every 10 s (a burst of rpm // 6 = 1), so it has to hold them back and some
# users are told to send again later, however short the run.
REQUESTS_PER_MINUTE = 6


@pytest.mark.timeout(400)
async def test_three_instances_sharing_redis_answer_each_message_once_within_the_models_request_limit(
    tmp_path, postgres_cluster, redis_url
):
    url = postgres_cluster.url(postgres_cluster.create_database())
    bench = await soak(
        kills=3, seed=11, workdir=tmp_path, database_url=url, instances=3, redis_url=redis_url,
        requests_per_minute=REQUESTS_PER_MINUTE,
    )  # fmt: skip
    tally = bench.tally
    bucket = bench.models.bucket
    assert bucket is not None
    assert tally.problems == []
    assert tally.kills == 3 and len(bench.takeovers) == 3
    assert max(bench.takeovers) <= TAKEOVER_TARGET
    assert tally.questions > 1 and tally.once == tally.questions
    assert (tally.twice, tally.never, tally.partial) == (0, 0, 0)
    assert tally.notes_once == tally.notes and tally.links_once == tally.notes
    assert bucket.refused == 0, f"the model refused {bucket.refused} requests over its limit"
    assert 0 < len(bucket.admitted_at) <= tally.questions
    assert tally.error_notes > 0, "the limiter held some questions back (their users were told)"
