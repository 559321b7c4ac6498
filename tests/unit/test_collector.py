"""The serving process's garbage-collector thresholds (bot/collector.py)."""
from __future__ import annotations

import gc
from typing import Iterator

import pytest

from bot.collector import YOUNG_GENERATION_OBJECTS, tune_collector


@pytest.fixture
def thresholds_restored() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    yield before
    gc.set_threshold(*before)


def test_young_generation_is_collected_only_after_twenty_thousand_objects(thresholds_restored: tuple[int, int, int]) -> None:
    gc.set_threshold(700, 10, 10)
    tune_collector()
    assert gc.get_threshold() == (YOUNG_GENERATION_OBJECTS, 10, 10)


def test_a_burst_of_short_lived_cycles_costs_a_few_young_collections_and_no_full_one(
    thresholds_restored: tuple[int, int, int],
) -> None:
    tune_collector()
    gc.collect()
    before = [generation["collections"] for generation in gc.get_stats()]
    for _ in range(200_000):  # what a burst of streamed chunks leaves behind: cycles, dead at once
        node: list[object] = []
        node.append(node)
    young, middle, full = (generation["collections"] - was for generation, was in zip(gc.get_stats(), before))
    assert young <= 10  # 235 with CPython's default of 700
    assert (middle, full) == (0, 0)
