"""Helpers every benchmark shares: stderr logging, median timing, the one JSON object on stdout.
Imports nothing heavy, so a peer measured in its own process stays unaffected."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

REPEATS = 5


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def timed(fn, repeats: int = REPEATS) -> float:
    """Median seconds of `fn()` over several runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def emit(result: dict, out: Path | None) -> None:
    """The bench's one JSON object: on stdout, and in `out` when given."""
    text = json.dumps(result, indent=1)
    if out:
        out.write_text(text)
    print(text)
