"""How long rendering a streamed reply takes: Markdown -> Telegram entities, and the 4096 split.

A streaming reply is rendered at every preview (at most once a second per chat) and once more for
the final text. Printed per input: rendering and splitting it whole once, and a reply streamed in
30 versions (30 previews and the final text, as bench/scale.py's long case), each version rendered
and split whole (before issue 12) or as the reply stream does now (`MarkdownStream` renders only
what the completed blocks do not cover, `SplitSoFar` splits only the last part again).

Run: .venv/bin/python bench/render.py
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from handlers.render import MarkdownStream, render_markdown  # noqa: E402
from handlers.split import SplitSoFar, split_rich_text  # noqa: E402

TYPICAL = (
    "## Step\n\nEdit the **config** and set `timeout` as [documented](https://example.com).\n\n"
    "1. Open it.\n2. Change it.\n\n```python\nconfig['timeout'] = 30\n```\n\n"
)
DENSE = "**bold** _it_ `c` [l](https://x.example) " * 10


def timed(function, argument, rounds=30) -> tuple[float, float]:
    function(argument)
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        function(argument)
        samples.append(time.perf_counter() - started)
    samples.sort()
    return statistics.median(samples) * 1000, samples[int(0.95 * (rounds - 1))] * 1000


VERSIONS = 30


def streamed_whole(markdown: str) -> None:
    for version in range(1, VERSIONS + 1):
        split_rich_text(render_markdown(markdown[: len(markdown) * version // VERSIONS]))


def streamed_incrementally(markdown: str) -> None:
    stream, split = MarkdownStream(), SplitSoFar()
    for version in range(1, VERSIONS):
        split.parts(stream.render(markdown[: len(markdown) * version // VERSIONS]))
    split_rich_text(stream.render(markdown))  # the final text is split whole


def main() -> None:
    for label, block, size in (("typical 10 kB", TYPICAL, 10_000), ("dense 10 kB", DENSE, 10_000), ("typical 60 kB", TYPICAL, 60_000)):
        markdown = block * (size // len(block) + 1)
        median, p95 = timed(render_markdown, markdown)
        rendered = render_markdown(markdown)
        split_median, split_p95 = timed(split_rich_text, rendered)
        whole, _ = timed(streamed_whole, markdown, rounds=5)
        incremental, _ = timed(streamed_incrementally, markdown, rounds=5)
        print(
            f"{label:14} render median {median:6.2f} ms  p95 {p95:6.2f} ms   "
            f"split median {split_median:6.2f} ms  p95 {split_p95:6.2f} ms  ({len(rendered.entities)} entities)   "
            f"streamed in {VERSIONS} versions: whole each time {whole:7.1f} ms, incrementally {incremental:6.1f} ms"
        )


if __name__ == "__main__":
    main()
