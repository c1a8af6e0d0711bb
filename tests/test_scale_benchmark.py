"""benchmarks/scale.py: every measurement runs and prints its numbers (tiny scans, a tiny pool)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from .helpers import REPO, load_benchmark


def test_the_scale_benchmark_measures_preprocessing_streaming_and_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    scale = load_benchmark("scale")
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # where -j 2's workers find its reader
    argv = ["scale.py", "--scratch", str(tmp_path), "--pool-gb", "0.002", "--side", "32", "--depth", "4"]
    argv += [
        "--rate-scans",
        "3",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--only",
        "rate",
        "pool",
        "steps",
        "gather",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    scale.main()
    rows = {row["measurement"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["rate"]["identical_stores"] is True and rows["rate"]["scans_per_s_j2"] > 0
    scan_gb = 32 * 32 * 4 * 2 / 2**30  # float16
    assert rows["pool"]["scans"] == 263 and 262 * scan_gb < 0.002 <= 263 * scan_gb
    assert rows["pool"]["peak_rss_mb"] > 0
    steps = rows["steps"]
    assert len(steps["ms_per_step_streamed_pool"]) == 2 and steps["streamed_over_resident"] > 0
    assert rows["gather"]["ms_memory_map"] >= 0
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the stores are removed
