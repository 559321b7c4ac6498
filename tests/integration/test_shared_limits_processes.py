"""Two bot processes (`switchboard console`) share Notion's rate limit through one real redis-server."""
from __future__ import annotations

import asyncio

from integrations.clock import SystemClock
from tests.fakes.notion_server import FakeNotion
from tests.integration.test_cli import clean_env, run_cli

NOTION_TOKEN = "secret_two-processes-notion-token-000000000000"
NOTES_EACH = 8
NAMES = ("one", "two")


async def two_processes_saving_notes(tmp_path, **shared: str) -> FakeNotion:
    """Each process saves its notes one after another, at 2 requests a second for all processes
    together; Notion allows 3 in any second."""
    # Real time: the processes run on their own clocks, so Notion counts on the real one too.
    async with FakeNotion(token=NOTION_TOKEN, clock=SystemClock()) as notion:
        runs = []
        for name in NAMES:
            env = clean_env(
                tmp_path / name,
                NOTION_TOKEN=NOTION_TOKEN,
                NOTION_DATABASE_ID=notion.database_id.replace("-", ""),
                NOTION_BASE_URL=notion.base_url,
                # Under Notion's 3: on the real clock a request can reach Notion later than it was let
                # go (a first connection: 0.2 s on a busy machine), bunching it with the next.
                NOTION_REQUESTS_PER_SECOND="2",
                **shared,
            )
            (tmp_path / name).mkdir()
            lines = "".join(f"/note Note {number} from process {name}\n" for number in range(NOTES_EACH))
            runs.append(run_cli(["console"], env, tmp_path / name, stdin=lines))
        results = await asyncio.gather(*runs)
        for code, _, err in results:
            assert code == 0, err
        assert len(notion.pages) == len(NAMES) * NOTES_EACH, [out for _, out, _ in results]
        return notion


async def test_two_processes_sharing_redis_get_no_429_from_notion(tmp_path, redis_url):
    notion = await two_processes_saving_notes(tmp_path, REDIS_URL=redis_url, INSTANCES="2")
    assert [refusal for refusal in notion.refusals if refusal[0] == 429] == []


async def test_two_processes_without_redis_go_over_notions_limit(tmp_path):
    """The check above can fail: each process alone keeps 2 a second, together they send 4."""
    notion = await two_processes_saving_notes(tmp_path)
    assert [refusal for refusal in notion.refusals if refusal[0] == 429] != []
