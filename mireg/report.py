"""Evaluation reports: one JSON, one CSV row per volume and structure, one Markdown summary.

Every file is written to a temporary sibling and renamed, so a report is never half-written. Reading
and tabulating reports imports neither torch nor numpy.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mireg.errors import RunError
from mireg.files import atomic_write_text

if TYPE_CHECKING:
    from mireg.evaluate import VolumeResult

__all__ = [
    "build_report",
    "comparison_rows",
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
    from mireg.evaluate import summarize

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
    from mireg.evaluate import METRICS

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
