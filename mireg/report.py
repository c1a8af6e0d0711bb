"""Evaluation reports: one JSON, one CSV row per volume and structure, one Markdown summary.

Every file is written to a temporary sibling and renamed, so a report is never half-written.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mireg.data.store import VolumeInfo, VolumeStore
from mireg.errors import RunError
from mireg.evaluate import METRICS, VolumeResult, evaluate_volumes, summarize
from mireg.files import atomic_write_text
from mireg.progress import Progress
from mireg.rundir import RunDir

__all__ = [
    "build_report",
    "comparison_rows",
    "evaluate_run",
    "format_stat",
    "markdown_summary",
    "read_run_report",
    "write_reports",
]

UNITS = {"dice": "%", "hd95": "mm", "hd": "mm", "assd": "mm"}
NAMES = {"dice": "DSC", "hd95": "HD95", "hd": "HD", "assd": "ASSD"}


def build_report(
    results: list[VolumeResult], structures: Sequence[str], meta: dict[str, Any]
) -> dict[str, Any]:
    """The report as plain data: ``meta`` + structures + summary + per-volume metrics."""
    return {
        **meta,
        "structures": list(structures),
        "summary": summarize(results, structures),
        "volumes": [
            {"id": r.id, "patient": r.patient, "phase": r.phase,
             "metrics": {s: vars(m) for s, m in r.metrics.items()}}
            for r in results
        ],
    }


def format_stat(stat: dict[str, Any], metric: str) -> str:
    """``mean ± std`` (DSC in %), with the number of undefined cases when there are any."""
    if stat["mean"] is None:
        text = "n/a"
    else:
        scale = 100.0 if metric == "dice" else 1.0
        text = f"{scale * stat['mean']:.1f} ± {scale * stat['std']:.1f}"
    return f"{text} ({stat['undefined']} undef.)" if stat["undefined"] else text


def markdown_summary(report: dict[str, Any]) -> str:
    """Per structure x phase tables of DSC and HD95 (mean ± std), as Markdown."""
    summary = report["summary"]
    phases = list(summary["dice"])
    lines = [f"# {report.get('run', '')}: {report.get('split', '')} set, "
             f"{report.get('checkpoint', '')} (epoch {report.get('epoch', '?')})", ""]
    for metric in ("dice", "hd95", "assd"):
        lines.append(f"## {NAMES[metric]} ({UNITS[metric]})")
        lines.append("")
        lines.append("| structure | " + " | ".join(phases) + " |")
        lines.append("|---|" + "---|" * len(phases))
        for structure in [*report["structures"], "mean"]:
            cells = [format_stat(summary[metric][p][structure], metric) for p in phases]
            lines.append(f"| {structure} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(f"{len(report['volumes'])} volumes; distances in mm on the evaluation grid; "
                 "'undef.' counts volumes where a structure is present in only one of prediction "
                 "and ground truth.")
    return "\n".join(lines) + "\n"


def _csv_text(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["volume", "patient", "phase", "structure", *METRICS])
    for v in report["volumes"]:
        for structure, m in v["metrics"].items():
            writer.writerow([v["id"], v["patient"], v["phase"], structure,
                             *("" if m[k] is None else m[k] for k in METRICS)])
    return out.getvalue()


def write_reports(report: dict[str, Any], folder: Path, stem: str = "report") -> list[Path]:
    """Write ``stem.json``, ``stem.csv`` and ``stem.md`` into ``folder``."""
    paths = [folder / f"{stem}.json", folder / f"{stem}.csv", folder / f"{stem}.md"]
    atomic_write_text(paths[0], json.dumps(report, indent=1) + "\n")
    atomic_write_text(paths[1], _csv_text(report))
    atomic_write_text(paths[2], markdown_summary(report))
    return paths


def read_run_report(run_dir: Path) -> dict[str, Any]:
    """The test report a run wrote (``report.json``)."""
    path = run_dir / "report.json"
    if not path.is_file():
        raise RunError(f"{run_dir}: no report.json in this run directory",
                       f"evaluate it first: mireg eval {run_dir}")
    try:
        report: dict[str, Any] = json.loads(path.read_text())
        report["summary"]["dice"]["all"]
    except (OSError, ValueError, KeyError) as exc:
        raise RunError(f"{path}: not a mireg report ({type(exc).__name__}: {exc})") from exc
    return report


def comparison_rows(runs: Sequence[tuple[str, dict[str, Any]]]) -> tuple[list[str], list[list[str]]]:
    """One row per run: DSC per structure, mean DSC, mean HD95 (test set, all phases)."""
    structures: list[str] = list(runs[0][1]["structures"])
    header = ["run", *(f"{s} DSC" for s in structures), "mean DSC", "mean HD95 (mm)"]
    rows = []
    for name, report in runs:
        summary = report["summary"]
        if list(report["structures"]) != structures:
            raise RunError(f"{name}: its structures {report['structures']} differ from "
                           f"{structures}; only runs on one data set can be compared")
        cells = [format_stat(summary["dice"]["all"][s], "dice") for s in structures]
        cells.append(format_stat(summary["dice"]["all"]["mean"], "dice"))
        cells.append(format_stat(summary["hd95"]["all"]["mean"], "hd95"))
        rows.append([name, *cells])
    return header, rows


def evaluate_run(
    run: RunDir,
    split: str = "test",
    checkpoint: str = "best",
    device: torch.device | None = None,
    data: tuple[VolumeStore, torch.Tensor, torch.Tensor] | None = None,
    progress: Progress | None = None,
    on_volume: Callable[[VolumeInfo, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> tuple[dict[str, Any], list[Path]]:
    """Evaluate a run's checkpoint on one split of its patients and write the report files.

    The one evaluation of a trained run: ``mireg train`` calls it on the test split after the last
    epoch, ``mireg eval`` on any split and checkpoint.

    Args:
        run: The run folder.
        split: ``test`` or ``validation``.
        checkpoint: ``best``, ``last`` or a ``.pt`` file name of the run.
        device: Where to evaluate (default: CUDA when available).
        data: The store and its image and label tensors on ``device``, when already loaded.
        progress: Progress of loading or generating the store, then of the volumes evaluated.
        on_volume: Called for each volume (see :func:`~mireg.evaluate.evaluate_volumes`).

    Returns:
        The report and the paths of the files written (``report*.json|csv|md``).
    """
    from mireg.runtime import resolve_device
    from mireg.state import load_trained

    device = device or resolve_device("auto")
    trained = load_trained(run.checkpoint(checkpoint), device)
    if data is None:
        store = trained.recipe.data.load(progress)
        images, labels = store.tensors(device)
    else:
        store, images, labels = data
    patients = getattr(run.split(), split)
    total = len(store.volumes_of(patients))
    done = 0

    def volume_done(volume: VolumeInfo, image: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> None:
        nonlocal done
        if on_volume is not None:
            on_volume(volume, image, pred, truth)
        done += 1
        if progress is not None:
            progress(done, total, f"evaluating {split}")

    results = evaluate_volumes(trained.model, store, images, labels, patients,
                               trained.recipe.train.eval_batch, trained.recipe.train.precision,
                               volume_done if progress is not None or on_volume is not None else None)
    meta = {"run": trained.recipe.name, "split": split, "checkpoint": trained.checkpoint.path.name,
            "epoch": trained.checkpoint.epoch}
    report = build_report(results, store.classes[1:], meta)
    paths = write_reports(report, run.path, run.report_stem(split, checkpoint))
    return report, paths
