"""benchmarks/gpu.py: the GPU check's pieces, run on the CPU (to check the script, not to measure)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mireg.recipe import dump_toml

from .helpers import load_benchmark, tiny_recipe


def test_a_failing_measurement_is_recorded_with_its_error() -> None:
    gpu = load_benchmark("gpu")
    [row] = gpu._json_lines([sys.executable, "-c", "import sys; sys.exit('no such device')"], 60)
    assert row["error"] == ["no such device"]
    [row] = gpu._json_lines([sys.executable, "-c", "import time; time.sleep(5)"], 0.5)
    assert "timed out" in row["error"]


def test_the_loss_curves_of_two_devices_are_compared_epoch_by_epoch() -> None:
    row = load_benchmark("gpu").curve("cpu", epochs=2, iterations=2, timeout=300)
    assert len(row["loss_device"]) == len(row["loss_cpu"]) == 2
    assert row["max_relative_difference"] == 0.0  # the same device twice: the same run


def test_each_study_method_is_timed_as_the_study_trains_it_and_the_study_is_projected(tmp_path: Path) -> None:
    raw = tiny_recipe(tmp_path / "unused", name="partial")
    raw["data"]["labeled_ratio"] = 0.5
    (tmp_path / "partial.toml").write_text(dump_toml(raw))
    study = tmp_path / "study.toml"
    study.write_text(
        f'name = "s"\nruns_dir = "{tmp_path / "out"}"\nseeds = [1, 2]\nselect_seeds = [1]\n'
        'labeled_ratios = [0.5]\nfull = "partial"\nset = ["train.epochs=7"]\n'
        '[methods.partial]\nrecipe = "partial.toml"\n[methods.partial.grid]\n"optim.lr" = [0.01, 0.001]\n'
    )
    measured = load_benchmark("gpu").study_runs("cpu", study, 2, 300, iterations=2)
    [run, total] = [row for rows in measured for row in rows]
    assert run["method"] == "partial" and run["run"] == "partial-c0-all-s1" and run["study_epochs"] == 7
    assert len(run["epoch_seconds"]) == 2 and run["iterations_per_epoch"] == 2
    later = run["epoch_seconds"][1]  # the median of the epochs after the first
    assert run["projected_run_min"] == pytest.approx((run["wall_s"] + 5 * later) / 60, abs=0.01)
    assert total["runs"] == {"partial": 3}  # two configurations on seed 1, the chosen one on seed 2
    hours = total["projected_hours_one_run_at_a_time"]
    assert hours == pytest.approx(3 * run["projected_run_min"] / 60, abs=0.01)
    assert total["not_timed"] == [] and not (tmp_path / "out").exists()  # the study's folder is not touched
