"""How often Python's cyclic garbage collector runs in the bot's process (fewer, shorter pauses).

CPython starts a young collection every 700 net new container objects. Streaming 1,000 answers
at once makes that thousands of collections a run, and each one promotes what the other
conversations hold at that moment (their parsed chunks, rendered entities, HTTP buffers) to the
older generations, so full collections come often too and each walks every object the bot
holds: 100-300 ms with the event loop stopped (bench/scale.py --sizes 1000: 2.9 s of a 14.5 s
run, 9 full collections; BENCHMARKS.md). Nearly all of those objects die within one chunk's
handling, which a young generation of 20,000 lets them do before any collection looks at them:
0.5 s of collection in the same run, none of it full. What it costs: up to 20,000 unreachable
cycles (a few MB) may wait a little longer to be freed. Reference counting still frees
everything without cycles at once.
"""
from __future__ import annotations

import gc

YOUNG_GENERATION_OBJECTS = 20_000


def tune_collector() -> None:
    """Let the young generation grow to `YOUNG_GENERATION_OBJECTS` before it is collected."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_OBJECTS, middle, old)
