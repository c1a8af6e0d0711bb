"""Everything that can only be measured on a GPU, in one command and one JSON file.

    python benchmarks/gpu.py -o gpu.json          # or: nox -s gpu

On one GPU, in about 10 minutes (an H200; 7 before the ``study`` timings):

- ``machine``: the GPU, its driver, and the versions of Python, torch, CUDA, cuDNN and mireg;
- ``steps``: ``benchmarks/step.py`` at the paper's shapes (224x224, 4 labelled + 10 + 10 unlabelled
  slices) for every method with an ACDC recipe that a study compares (``partial``, ``udaiic``,
  ``cps``, ``bcp``, ``fixmatch``, ``unimatch``), in fp32 and bf16, and ``partial`` and ``udaiic``
  in bf16 under ``torch.compile``: ms/step and peak memory;
- ``profiles``: ``partial`` and ``udaiic`` in bf16 again, then one more step of each under
  ``torch.profiler``: its wall time, the time the GPU ran kernels and copies, and the operators that
  took the most of it;
- ``data``: ``benchmarks/scale.py``'s training steps from a store streamed from disk (its page
  cache dropped first) against the same store resident on the GPU;
- ``curve``: a short ``phantom_udaiic`` training on the GPU and on the CPU from the same seed, in
  fp32, and the largest relative difference between their per-epoch losses; beside it, as the
  yardstick of rounding, the same difference between the CPU run and one with a single thread (the
  same steps summed in other orders: training amplifies rounding, so curves drift apart with no
  error anywhere);
- ``study``: each method of the strong study (``recipes/studies/phantom_strong.toml``) trained as
  that study trains it, for a few epochs: seconds per epoch, and the minutes a whole run and the
  whole study would take on this GPU, one run at a time (``study_runs``);
- ``goals``: each goal of `docs/speed.md`, its target, the measured value and whether it
  is met.

Each measurement runs in its own process; one that fails is recorded with its error and the rest go
on. The JSON file is rewritten after every measurement, so a run cut short keeps what it measured.
``--device cpu`` with small ``--size`` runs the same script on a CPU (to check it, not to measure).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: The methods timed, in the order of `docs/speed.md`'s tables.
METHODS = ("partial", "udaiic", "cps", "bcp", "fixmatch", "unimatch")
#: The methods also timed under ``torch.compile`` (bf16).
COMPILED = ("partial", "udaiic")
#: The study whose runs ``study_runs`` times.
STUDY = REPO / "recipes" / "studies" / "phantom_strong.toml"
#: The goals at the paper's shapes on one H200 (`docs/speed.md`).
GOAL_MS = {"partial": 10.0, "udaiic": 20.0}
GOAL_PEAK_GB = 8.0
GOAL_STREAMED_RATIO = 1.1
#: The GPU's per-epoch losses count as the CPU's when they differ from them by no more than this
#: many times what rounding alone makes of the same run (the CPU with one thread against all).
CURVE_TOLERANCE = 2.0


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


def _step_command(device: str, method: str, size: int, precision: str, n: int) -> list[str]:
    command = [sys.executable, str(HERE / "step.py"), "--method", method, "--size", str(size)]
    return command + ["--device", device, "--precision", precision, "--steps", str(n), "--warmup", "3"]


def steps(
    device: str,
    size: int,
    n: int,
    timeout: float,
    methods: Sequence[str] = METHODS,
    precisions: Sequence[str] = ("fp32", "bf16"),
    compiled: Sequence[str] = COMPILED,
) -> Iterator[list[dict[str, Any]]]:
    """Every method in every precision, eager; then the compiled ones in bf16."""
    for method in methods:
        for precision in precisions:
            yield _json_lines(_step_command(device, method, size, precision, n), timeout)
    for method in compiled:
        yield _json_lines(_step_command(device, method, size, "bf16", n) + ["--compile"], timeout)


def profiles(device: str, size: int, n: int, timeout: float) -> Iterator[list[dict[str, Any]]]:
    """Each goal's method in bf16: ``n`` timed steps, then one more under the profiler."""
    for method in GOAL_MS:
        yield _json_lines(_step_command(device, method, size, "bf16", n) + ["--profile"], timeout)


def data_paths(device: str, side: int, n: int, timeout: float) -> Iterator[list[dict[str, Any]]]:
    """Streamed (page cache dropped) against resident, on one store of ``side`` x ``side`` scans."""
    with tempfile.TemporaryDirectory(prefix="mireg-gpu-") as scratch:
        command = [sys.executable, str(HERE / "scale.py"), "--scratch", scratch, "--device", device]
        command += ["--side", str(side), "--steps", str(n), "--only", "steps"]
        yield _json_lines(command, timeout)


def _losses(run: Path) -> list[float]:
    with open(run / "metrics.csv") as fh:
        return [float(row["loss/total"]) for row in csv.DictReader(fh)]


def _max_relative_difference(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b, strict=True))


def curve(device: str, epochs: int, iterations: int, timeout: float) -> dict[str, Any]:
    """The per-epoch losses of a short fp32 ``phantom_udaiic`` training on ``device`` and on the CPU,
    and, as the yardstick of float rounding, on the CPU again with one thread: the same steps with
    other summation orders, whose curve drifts from the first by rounding alone."""
    losses = {}
    with tempfile.TemporaryDirectory(prefix="mireg-curve-") as runs:
        for label, where, threads in (("device", device, None), ("cpu", "cpu", None), ("cpu1", "cpu", "1")):
            command = [sys.executable, "-m", "mireg", "train", str(REPO / "recipes" / "phantom_udaiic.toml")]
            for setting in (
                f'train.device="{where}"',
                'train.precision="fp32"',
                f"train.epochs={epochs}",
                f"train.iterations_per_epoch={iterations}",
                f'train.runs_dir="{runs}/{label}"',
            ):
                command += ["--set", setting]
            env = {**os.environ, **({"OMP_NUM_THREADS": threads} if threads else {})}
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
            except subprocess.TimeoutExpired:
                return {"measurement": "curve", "error": f"{where}: timed out after {timeout:.0f} s"}
            if done.returncode != 0:
                return {"measurement": "curve", "error": done.stderr.strip().splitlines()[-3:]}
            [run] = Path(runs, label).iterdir()
            losses[label] = _losses(run)
    return {
        "measurement": "curve",
        "recipe": "phantom_udaiic",
        "precision": "fp32",
        "epochs": epochs,
        "iterations_per_epoch": iterations,
        "loss_device": losses["device"],
        "loss_cpu": losses["cpu"],
        "loss_cpu_one_thread": losses["cpu1"],
        "max_relative_difference": _max_relative_difference(losses["device"], losses["cpu"]),
        "rounding_yardstick": _max_relative_difference(losses["cpu1"], losses["cpu"]),
    }


def _train_command(engine: str, recipe: Path) -> list[str]:
    return [sys.executable, "-m", "mireg", "nnunet" if engine == "nnunet" else "train", str(recipe)]


def study_runs(
    device: str, study_file: Path, epochs: int, timeout: float, iterations: int | None = None
) -> Iterator[list[dict[str, Any]]]:
    """Each method of the study of ``study_file`` trained as the study trains it (its recipe with
    the study's settings and the first configuration of its grid, in the recipe's arithmetic: the
    studies train in fp32), at its first labelled amount and the study's first seed, for ``epochs``
    epochs (``iterations`` per epoch: the recipe's unless given) on ``device``. One row per method:
    the seconds of each epoch (its steps and validation, from ``metrics.csv``), the wall time of the
    whole command (start, reading the data, checkpoints and the test split included; the study's cohort
    is made, where it is not cached yet, before any timing) and the projected minutes
    of a whole run: that wall time plus the study's other epochs at the median of the timed epochs
    after the first (which warms up). A run's time does not depend on the labelled amount (the
    batches are fixed). Then one row for the whole study: its runs per method (grids and held-out
    seeds included) times those minutes, one run at a time; None where a method was not timed
    (nnU-Net needs the ``nnunet`` extra).
    """
    from mireg.recipe import dump_toml, validate_recipe
    from mireg.study.runs import RunKey
    from mireg.study.workflow import open_study

    study = open_study(study_file)
    runs = Counter(key.method for key in study.selection_runs())
    for method in study.gridded_methods():
        runs[method] += len(study.held_out_seeds) * len(study.amounts_of(method))
    minutes: dict[str, float | None] = {}
    keys = {m: RunKey(m, 0, study.amounts_of(m)[0], study.seeds[0]) for m in study.spec.methods}
    first = next(iter(keys.values()))
    validate_recipe(study.recipe(first), study_file.name).data.load()  # the cohort, made once, untimed
    with tempfile.TemporaryDirectory(prefix="mireg-study-runs-") as scratch:
        for method, key in keys.items():
            raw = study.recipe(key)
            run_epochs = int(raw["train"]["epochs"])
            raw["train"].update(epochs=epochs, device=device, runs_dir=f"{scratch}/runs/{method}")
            if iterations is not None:
                raw["train"]["iterations_per_epoch"] = iterations
            recipe = Path(scratch, f"{key.name}.toml")
            recipe.write_text(dump_toml(raw))
            row: dict[str, Any] = {"measurement": "study_run", "study": study.spec.name, "method": method}
            row |= {"run": key.name, "engine": study.engine(key), "epochs_timed": epochs}
            row |= {"iterations_per_epoch": raw["train"]["iterations_per_epoch"], "study_epochs": run_epochs}
            minutes[method] = None
            started = time.perf_counter()
            try:
                done = subprocess.run(
                    _train_command(row["engine"], recipe), capture_output=True, text=True, timeout=timeout
                )
            except subprocess.TimeoutExpired:
                yield [row | {"error": f"timed out after {timeout:.0f} s"}]
                continue
            wall = time.perf_counter() - started
            if done.returncode != 0:
                yield [row | {"error": done.stderr.strip().splitlines()[-3:]}]
                continue
            [run] = Path(scratch, "runs", method).iterdir()
            with open(run / "metrics.csv") as fh:
                seconds = [float(r["seconds"]) for r in csv.DictReader(fh)]
            per_epoch = statistics.median(seconds[1:] or seconds)
            minutes[method] = (wall + (run_epochs - epochs) * per_epoch) / 60
            row |= {"epoch_seconds": seconds, "wall_s": round(wall, 1)}
            yield [row | {"projected_run_min": round(minutes[method], 2)}]
    untimed = sorted(m for m, value in minutes.items() if value is None)
    total = None if untimed else sum(runs[m] * value for m, value in minutes.items() if value is not None)
    yield [
        {
            "measurement": "study_total",
            "study": study.spec.name,
            "runs": dict(runs),
            "projected_hours_one_run_at_a_time": None if total is None else round(total / 60, 2),
            "not_timed": untimed,
        }
    ]


def _command_output(command: list[str]) -> str | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def machine(device: str) -> dict[str, Any]:
    """The device and every version a reader needs to compare numbers."""
    import torch

    import mireg

    info: dict[str, Any] = {
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "mireg": mireg.__version__,
        "mireg_commit": _command_output(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
        "cpus": os.cpu_count(),
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(
            gpu=props.name,
            gpu_memory_gb=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
            driver=_command_output(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "--id=0"]
            ),
        )
    return info


def _best(rows: list[dict[str, Any]], method: str) -> dict[str, Any] | None:
    timed = [r for r in rows if r.get("method") == method and "ms_per_step" in r]
    return min(timed, key=lambda r: r["ms_per_step"]) if timed else None


def _first(rows: list[dict[str, Any]], key: str) -> Any:
    return next((row[key] for row in rows if key in row), None)


def _goal(goal: str, measured: Any, target: float, at_most: bool, how: str | None = None) -> dict[str, Any]:
    met = None if measured is None else (measured <= target if at_most else measured < target)
    row = {"goal": goal, "target": f"{'<=' if at_most else '<'} {target}", "measured": measured, "met": met}
    return row | ({"how": how} if how else {})


def goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of `docs/speed.md` against what was measured (None: not measured)."""
    out = []
    rows = report.get("steps", []) + report.get("profiles", [])  # both time steps at the paper's shapes
    for method, target in GOAL_MS.items():
        best = _best(rows, method)
        if best is None:
            out.append(_goal(f"{method} ms/step", None, target, True))
            continue
        how = best["precision"] + (", compiled" if best["compile"] else "")
        out.append(_goal(f"{method} ms/step", best["ms_per_step"], target, True, how))
    peaks = [r["peak_mem_mb"] / 1024 for r in rows if "peak_mem_mb" in r]
    peak = round(max(peaks), 2) if peaks else None
    out.append(_goal("peak memory GB, any method", peak, GOAL_PEAK_GB, False))
    ratio = _first(report.get("data", []), "streamed_over_resident")
    out.append(_goal("streamed / resident", ratio, GOAL_STREAMED_RATIO, True))
    difference = _first(report.get("curve", []), "max_relative_difference")
    yardstick = _first(report.get("curve", []), "rounding_yardstick")
    ratio = None if difference is None or yardstick is None else round(difference / max(yardstick, 1e-9), 2)
    out.append(_goal("GPU-vs-CPU loss drift / rounding drift", ratio, CURVE_TOLERANCE, True))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("gpu.json"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=224, help="crop side of the step timings")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--side", type=int, default=512, help="scan side of the data-path timings")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=150, help="seconds per measurement")
    parser.add_argument(
        "--only",
        nargs="*",
        default=["study", "steps", "profiles", "curve", "data"],
        help="the measurements to run",
    )
    parser.add_argument("--study", type=Path, default=STUDY, help="the study file of the study timings")
    parser.add_argument("--study-epochs", type=int, default=3, help="epochs each method of the study trains")
    parser.add_argument("--study-iterations", type=int, help="iterations per epoch there (default: recipes')")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), help="methods of the step timings")
    parser.add_argument("--precisions", nargs="*", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--compiled", nargs="*", default=list(COMPILED), help="methods also timed compiled")
    args = parser.parse_args()
    report: dict[str, Any] = {"machine": machine(args.device)}

    def write() -> None:
        report["goals"] = goals(report)
        args.output.write_text(json.dumps(report, indent=1))

    write()
    jobs: dict[str, Callable[[], Iterable[list[dict[str, Any]]]]] = {
        "steps": lambda: steps(
            args.device, args.size, args.steps, args.timeout, args.methods, args.precisions, args.compiled
        ),
        "study": lambda: study_runs(
            args.device, args.study, args.study_epochs, 2 * args.timeout, args.study_iterations
        ),
        "profiles": lambda: profiles(args.device, args.size, args.steps, args.timeout),
        "curve": lambda: [[curve(args.device, args.epochs, args.iterations, 2 * args.timeout)]],
        "data": lambda: data_paths(args.device, args.side, args.steps, 2 * args.timeout),
    }
    for name in args.only:
        report[name] = []
        for rows in jobs[name]():
            report[name] += rows
            write()
            for row in rows:
                print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
