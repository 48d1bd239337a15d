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


def interleaved_seconds(systems: dict, pieces: list, repeats: int = REPEATS) -> dict[str, float]:
    """{name: median over `repeats` of the seconds `run(piece)` takes summed over `pieces`}, the
    systems taking turns piece by piece: a burst of machine noise lands on all of them alike,
    where whole passes one after the other would hand it to whichever ran then."""
    totals = {name: [0.0] * repeats for name in systems}
    for r in range(repeats):
        for piece in pieces:
            for name, run in systems.items():
                start = time.perf_counter()
                run(piece)
                totals[name][r] += time.perf_counter() - start
    return {name: statistics.median(seconds) for name, seconds in totals.items()}


def latency(seconds: list[float], digits: int = 2) -> dict:
    """Per-call seconds -> {"p50_ms", "p99_ms", "mean_ms"}."""
    import numpy as np

    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), digits),
            "p99_ms": round(float(np.percentile(ms, 99)), digits), "mean_ms": round(float(ms.mean()), digits)}


def over_judged_sets(doc: str, measure, default_sets: str, result: dict) -> None:
    """The main of a bench that measures each judged set under `--data` (default ../shared/data):
    `measure(set directory, scratch directory)` per name in `--sets`, into `result["sets"]`."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--sets", default=default_sets)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep", type=Path, help="build collections here and reuse those already built")
    args = parser.parse_args()
    result["sets"] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.sets.split(","):
            result["sets"][name] = measure(args.data / name, args.keep or Path(scratch))
    emit(result, args.out)


def emit(result: dict, out: Path | None) -> None:
    """The bench's one JSON object: on stdout, and in `out` when given."""
    text = json.dumps(result, indent=1)
    if out:
        out.write_text(text)
    print(text)
