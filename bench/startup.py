"""How long `switchboard console` takes from process start to its first prompt.

Starts the real console (`.venv/bin/switchboard console`) on a pseudo-terminal, so it prompts as
it does for a person, with no provider key and a state directory that an earlier run already
created (the usual case: the schema is up to date). The time runs from just before the process
is spawned until `you> ` appears; then Ctrl-D ends the session. Baselines in the same run, timed
to process exit: a bare interpreter (`python -c pass`) and the two SDKs alone
(`python -c "import openai, anthropic"`). Runs are interleaved, after one warm-up each.
Target: the console's first prompt within 400 ms.

The offline model is off (`LLM_LOCAL=off`) unless `--local` is given, which adds a row with the
default `LLM_LOCAL=auto` (the console waits for the llama.cpp server before prompting).

    .venv/bin/python bench/startup.py [--runs N] [--local]
"""
from __future__ import annotations

import argparse
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
PROMPT = b"you> "
TIMEOUT = 30.0


def clean_environment(home: Path, state_dir: Path, local: str) -> dict[str, str]:
    """No inherited settings or keys: only what a shell needs, and this run's state directory."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "STATE_DIR": str(state_dir),
        "LLM_LOCAL": local,
    }


def time_to_prompt(environment: dict[str, str], cwd: Path) -> float:
    """Seconds from spawning the console until it shows its first prompt."""
    primary, secondary = os.openpty()
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(BIN / "switchboard"), "console"],
        stdin=secondary, stdout=secondary, stderr=subprocess.DEVNULL, cwd=cwd, env=environment,
    )
    os.close(secondary)
    seen = b""
    try:
        while PROMPT not in seen:
            ready, _, _ = select.select([primary], [], [], TIMEOUT)
            if not ready:
                raise TimeoutError(f"no prompt within {TIMEOUT:.0f} s; output so far: {seen[-300:]!r}")
            seen += os.read(primary, 4096)
        elapsed = time.perf_counter() - started
        os.write(primary, b"\x04")  # Ctrl-D at the prompt: the session ends
        process.wait(timeout=TIMEOUT)
        return elapsed
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(primary)


def time_to_exit(argv: list[str], environment: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, cwd=cwd, env=environment, stdin=subprocess.DEVNULL)
    return time.perf_counter() - started


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--local", action="store_true", help="also time the console with the offline model")
    args = parser.parse_args()
    python = str(BIN / "python")
    with tempfile.TemporaryDirectory(prefix="switchboard-startup-") as temp:
        home = Path(temp)
        measures: dict[str, Callable[[], float]] = {
            "python -c pass": lambda: time_to_exit([python, "-c", "pass"], clean_environment(home, home / "s", "off"), home),
            'python -c "import openai, anthropic"': lambda: time_to_exit(
                [python, "-c", "import openai, anthropic"], clean_environment(home, home / "s", "off"), home
            ),
            "switchboard console, no keys, LLM_LOCAL=off": lambda: time_to_prompt(
                clean_environment(home, home / "off", "off"), home
            ),
        }
        if args.local:
            measures["switchboard console, no keys, LLM_LOCAL=auto"] = lambda: time_to_prompt(
                clean_environment(home, home / "auto", "auto"), home
            )
        samples: dict[str, list[float]] = {label: [] for label in measures}
        for measure in measures.values():  # warm-up: .pyc files, page cache, the state's schema
            measure()
        for _ in range(args.runs):
            for label, measure in measures.items():
                samples[label].append(measure())
    print(f"runs: {args.runs} each, interleaved, after one warm-up; milliseconds")
    width = max(map(len, samples))
    for label, values in samples.items():
        print(
            f"{label:{width}}  median {statistics.median(values) * 1000:7.1f}  "
            f"p90 {percentile(values, 0.9) * 1000:7.1f}  min {min(values) * 1000:7.1f}"
        )


if __name__ == "__main__":
    sys.exit(main())
