"""Everything that can only be measured on a GPU, in one command and one JSON file.

    python benchmarks/gpu.py -o gpu.json          # or: nox -s gpu

On one GPU, in about 8 minutes:

- ``steps``: ``benchmarks/step.py`` at the paper's shapes (224x224, 4 labelled + 10 + 10 unlabelled
  slices) for ``partial`` and ``udaiic``, in fp32 and bf16, with and without ``torch.compile``:
  ms/step and peak memory;
- ``data``: ``benchmarks/scale.py``'s training steps from a store streamed from disk (its page
  cache dropped first) against the same recipe with the store resident on the GPU;
- ``curve``: a short ``phantom_udaiic`` training on the GPU and on the CPU from the same seed, and
  the largest relative difference between their per-epoch losses.

Each measurement runs in its own process; one that fails is recorded with its error and the rest go
on. ``--device cpu`` with small ``--size`` runs the same script on a CPU (to check it, not to
measure).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _json_lines(command: list[str], timeout: float) -> list[dict[str, Any]]:
    """Run a benchmark; its JSON lines, or one row with the error."""
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [{"command": command[1:], "error": f"timed out after {timeout:.0f} s"}]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not rows:
        return [{"command": command[1:], "error": done.stderr.strip().splitlines()[-3:]}]
    for row in rows:
        row["wall_s"] = round(time.perf_counter() - started, 1)
    return rows


def steps(device: str, size: int, n: int, timeout: float) -> list[dict[str, Any]]:
    rows = []
    for method in ("partial", "udaiic"):
        for precision in ("fp32", "bf16"):
            for compiled in (False, True):
                command = [sys.executable, str(HERE / "step.py"), "--method", method, "--size", str(size)]
                command += ["--device", device, "--precision", precision, "--steps", str(n), "--warmup", "3"]
                rows += _json_lines(command + (["--compile"] if compiled else []), timeout)
    return rows


def data_paths(device: str, side: int, pool_gb: float, n: int, timeout: float) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="mireg-gpu-") as scratch:
        command = [sys.executable, str(HERE / "scale.py"), "--scratch", scratch, "--device", device]
        command += ["--side", str(side), "--pool-gb", str(pool_gb), "--steps", str(n)]
        return _json_lines(command + ["--only", "pool", "steps"], timeout)


def _losses(run: Path) -> list[float]:
    with open(run / "metrics.csv") as fh:
        return [float(row["loss/total"]) for row in csv.DictReader(fh)]


def curve(device: str, epochs: int, iterations: int, timeout: float) -> dict[str, Any]:
    losses = {}
    with tempfile.TemporaryDirectory(prefix="mireg-curve-") as runs:
        for label, where in (("device", device), ("cpu", "cpu")):
            command = [sys.executable, "-m", "mireg", "train", str(REPO / "recipes" / "phantom_udaiic.toml")]
            for setting in (
                f'train.device="{where}"',
                f"train.epochs={epochs}",
                f"train.iterations_per_epoch={iterations}",
                f'train.runs_dir="{runs}/{label}"',
            ):
                command += ["--set", setting]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                return {"measurement": "curve", "error": f"{where}: timed out after {timeout:.0f} s"}
            if done.returncode != 0:
                return {"measurement": "curve", "error": done.stderr.strip().splitlines()[-3:]}
            [run] = Path(runs, label).iterdir()
            losses[label] = _losses(run)
    gpu, cpu = losses["device"], losses["cpu"]
    differences = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(gpu, cpu, strict=True)]
    return {
        "measurement": "curve",
        "recipe": "phantom_udaiic",
        "epochs": epochs,
        "iterations_per_epoch": iterations,
        "loss_device": gpu,
        "loss_cpu": cpu,
        "max_relative_difference": max(differences),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("gpu.json"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=224, help="crop side of the step timings")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--side", type=int, default=512, help="scan side of the data-path timings")
    parser.add_argument("--pool-gb", type=float, default=4.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=150, help="seconds per measurement")
    args = parser.parse_args()
    import torch

    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    report["steps"] = steps(args.device, args.size, args.steps, args.timeout)
    report["data"] = data_paths(args.device, args.side, args.pool_gb, args.steps, 2 * args.timeout)
    report["curve"] = curve(args.device, args.epochs, args.iterations, 2 * args.timeout)
    args.output.write_text(json.dumps(report, indent=1))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
