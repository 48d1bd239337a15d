"""bench/plot.py draws every figure from the committed bench results (docs/img/ stays current)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_figure_is_drawn_from_the_committed_results(tmp_path):
    pytest.importorskip("matplotlib", reason="the bench extra (make setup installs it)")
    spec = importlib.util.spec_from_file_location("plot", ROOT / "bench" / "plot.py")
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    written = plot.main(["--out", str(tmp_path)])
    assert sorted(p.stem for p in written) == sorted(plot.FIGURES)
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
        assert (ROOT / "docs" / "img" / path.name).exists()  # committed, and shown in docs/benchmarks.md
        assert f"img/{path.name}" in (ROOT / "docs" / "benchmarks.md").read_text()
