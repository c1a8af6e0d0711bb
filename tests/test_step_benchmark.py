"""benchmarks/step.py: times full training steps of any ACDC recipe's method."""

from __future__ import annotations

import json
import sys

import pytest

from .helpers import load_benchmark


def test_every_acdc_recipe_is_a_method_and_a_step_is_timed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    step = load_benchmark("step")
    methods = sorted(p.stem.removeprefix("acdc_") for p in step.RECIPES.glob("acdc_*.toml"))
    assert {"partial", "udaiic", "fixmatch", "unimatch", "cps", "bcp"} <= set(methods)
    argv = ["step.py", "--method", "bcp", "--size", "32", "--labeled-batch", "2"]
    argv += ["--unlabeled-batch", "2", "--steps", "1", "--warmup", "1", "--device", "cpu"]
    monkeypatch.setattr(sys, "argv", argv)
    step.main()
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["method"] == "bcp" and row["size"] == 32 and row["steps"] == 1
    assert row["ms_per_step"] > 0 and row["peak_mem_mb"] > 0
