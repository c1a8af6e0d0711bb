"""The semi-supervised gain on the synthetic cohort: partial, udaiic and full supervision over seeds.

    python benchmarks/quality.py [--methods partial udaiic full] [--ratios 0.05 0.1 0.25]
        [--seeds 10 11 12] [--out runs/quality] [--jobs 2] [--threads 1] [--set train.epochs=40 ...]

Every (method, labelled ratio, seed) is one `mireg train recipes/phantom_<method>.toml` run with
`data.labeled_ratio` and `seed` (which also draws the patient split) overridden; full supervision
does not depend on the ratio and runs once per seed. Runs are CPU-sized (the phantom recipes: 20
epochs x 80 steps; a 10 x 60 schedule left even full supervision at 45 % validation DSC); `--set`
overrides every run's recipe (e.g. a longer schedule; use a separate `--out` for each setting).
The table reports the minutes each run took.
Runs that already have a test report are reused, so an interrupted study continues where it stopped.
Writes `quality.md` (mean +- std over seeds of the test mean 3D DSC and HD95, and the share of the
partial-to-full gap each method closes), `quality.json` (every run) and `quality.png` (DSC against
the labelled ratio) into `--out`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    method: str
    ratio: float
    seed: int
    dice: float = math.nan
    hd95: float = math.nan
    val_dice: float = math.nan
    seconds: float = math.nan

    @property
    def name(self) -> str:
        ratio = "all" if self.method == "full" else f"{round(self.ratio * 100)}pct"
        return f"{self.method}_{ratio}_seed{self.seed}"


def train_command(run: Run, out: Path, extra: list[str]) -> list[str]:
    """The `mireg` arguments of a new run: its recipe, name, seed and ratio, then `extra` overrides."""
    overrides = [f"name={run.name}", f"seed={run.seed}", f"train.runs_dir={out}"]
    if run.method != "full":
        overrides.append(f"data.labeled_ratio={run.ratio}")
    return [
        "train",
        str(REPO / "recipes" / f"phantom_{run.method}.toml"),
        *(x for o in [*overrides, *extra] for x in ("--set", o)),
    ]


def _train(run: Run, out: Path, threads: int, extra: list[str]) -> Run:
    run_dir = out / run.name
    report = run_dir / "report.json"
    if not report.exists():
        if (run_dir / "last.pt").exists():  # an interrupted run: continue it
            command = ["train", "--resume", str(run_dir)]
        elif run_dir.exists():
            raise SystemExit(f"{run_dir} exists without a checkpoint or report; remove it to rerun")
        else:
            command = train_command(run, out, extra)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        started = time.perf_counter()
        log = out / f"{run.name}.log"
        with log.open("w") as f:
            done = subprocess.run(
                [sys.executable, "-m", "mireg", *command],
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        if done.returncode != 0:
            raise SystemExit(f"{run.name} failed (exit {done.returncode}); see {log}")
        (run_dir / "study_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
    summary = json.loads(report.read_text())["summary"]
    run.dice = summary["dice"]["all"]["mean"]["mean"]
    run.hd95 = summary["hd95"]["all"]["mean"]["mean"]
    seconds = run_dir / "study_seconds.txt"
    run.seconds = float(seconds.read_text()) if seconds.exists() else math.nan
    with (run_dir / "metrics.csv").open(newline="") as f:
        run.val_dice = max(float(row["val_dice/mean"]) for row in csv.DictReader(f))
    print(
        f"{run.name}: test DSC {100 * run.dice:.1f}, HD95 {run.hd95:.1f} mm "
        f"(best validation DSC {100 * run.val_dice:.1f})",
        flush=True,
    )
    return run


def _std(values: list[float]) -> float:
    """Sample standard deviation (0 for a single value)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _stat(values: list[float], scale: float = 1.0) -> str:
    values = [v * scale for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    return f"{statistics.mean(values):.1f} ± {_std(values):.1f}"


def _groups(runs: list[Run]) -> dict[tuple[str, float], list[Run]]:
    groups: dict[tuple[str, float], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.method, 1.0 if run.method == "full" else run.ratio), []).append(run)
    return groups


def table(runs: list[Run]) -> str:
    groups = _groups(runs)
    full = [r.dice for r in groups.get(("full", 1.0), [])]
    lines = [
        "| method | labelled | seeds | test DSC (%) | test HD95 (mm) | gap closed | minutes per run |",
        "|---|---|---|---|---|---|---|",
    ]
    for (method, ratio), group in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        partial = [r.dice for r in groups.get(("partial", ratio), [])]
        gap = ""  # blank for the two baselines, which define the gap
        if method not in ("partial", "full"):
            gap = "n/a"  # without both baselines, or with full <= partial, there is no gap
            low, high = statistics.mean(partial or [0.0]), statistics.mean(full or [0.0])
            if partial and full and high > low:
                mine = statistics.mean(r.dice for r in group)
                gap = f"{100 * (mine - low) / (high - low):.0f} %"
        minutes = statistics.mean(r.seconds for r in group) / 60
        lines.append(
            f"| {method} | {round(ratio * 100)} % | {len(group)} | "
            f"{_stat([r.dice for r in group], 100)} | {_stat([r.hd95 for r in group])} | "
            f"{gap} | {minutes:.1f} |"
        )
    lines.append("")
    total = sum(r.seconds for r in runs if not math.isnan(r.seconds))
    lines.append(
        f"Mean ± sample std over seeds (each seed also draws the patient split); "
        f"{len(runs)} runs, {total / 60:.0f} min of training in all (sum of run times)."
    )
    return "\n".join(lines) + "\n"


def plot(runs: list[Run], path: Path) -> None:
    groups = _groups(runs)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method in sorted({m for m, _ in groups if m != "full"}):
        ratios = sorted(r for m, r in groups if m == method)
        means = [100 * statistics.mean(x.dice for x in groups[(method, r)]) for r in ratios]
        stds = [100 * _std([x.dice for x in groups[(method, r)]]) for r in ratios]
        ax.errorbar([100 * r for r in ratios], means, yerr=stds, marker="o", capsize=3, label=method)
    if ("full", 1.0) in groups:
        full = [100 * x.dice for x in groups[("full", 1.0)]]
        ax.axhline(statistics.mean(full), color="k", linestyle="--", label="full (all labels)")
    ax.set_xlabel("labelled patients (%)")
    ax.set_ylabel("test mean 3D DSC (%)")
    ax.set_title("synthetic cohort, mean ± std over seeds")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["partial", "udaiic", "full"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.05, 0.1, 0.25])
    parser.add_argument("--seeds", nargs="+", type=int, default=[10, 11, 12])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "quality")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (threads are shared)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads per run (default: the CPU count / --jobs); set it when "
        "several studies share the machine",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override every run's recipe (repeatable), as `mireg train --set`",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []  # seed by seed, so the first results already span every method and ratio
    for seed in args.seeds:
        runs += [Run("full", 1.0, seed)] if "full" in args.methods else []
        runs += [Run(m, r, seed) for r in args.ratios for m in args.methods if m != "full"]
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda r: _train(r, args.out, threads, args.overrides), runs))
    text = table(runs)
    (args.out / "quality.md").write_text(text)
    (args.out / "quality.json").write_text(json.dumps([asdict(r) for r in runs], indent=1))
    plot(runs, args.out / "quality.png")
    print(text)
    print(f"wrote {args.out / 'quality.md'}, quality.json and quality.png")


if __name__ == "__main__":
    main()
