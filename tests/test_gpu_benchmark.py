"""benchmarks/gpu.py: the GPU check's pieces, run on the CPU (to check the script, not to measure)."""

from __future__ import annotations

import sys

from .helpers import load_benchmark


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
