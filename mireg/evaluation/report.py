"""Evaluation reports: one JSON, one CSV row per volume and structure, one Markdown summary.

Every file is written to a temporary sibling and renamed, so a report is never half-written. The
tables of a report (and of a comparison of runs, or of a folder evaluation) are built here as plain
text cells; the CLI renders them with rich and :func:`markdown_table` as Markdown. Reading and
tabulating reports imports neither torch nor numpy.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from mireg.errors import RunError
from mireg.files import atomic_write_text

__all__ = [
    "METRICS",
    "TextTable",
    "comparison_rows",
    "folder_rows",
    "format_stat",
    "markdown_summary",
    "markdown_table",
    "summary_note",
    "summary_tables",
    "write_reports",
]

#: The metrics of every evaluation (:mod:`mireg.evaluation.metrics`), their units and display names.
METRICS = ("dice", "hd95", "hd", "assd")
UNITS = {"dice": "%", "hd95": "mm", "hd": "mm", "assd": "mm"}
NAMES = {"dice": "DSC", "hd95": "HD95", "hd": "HD", "assd": "ASSD"}


class TextTable(NamedTuple):
    """A table as text: its title, column names and rows of cells (the first cell names the row)."""

    title: str
    header: list[str]
    rows: list[list[str]]


def format_stat(stat: dict[str, Any], metric: str, sep: str = " ") -> str:
    """``mean ± std`` (DSC in %), with the number of undefined cases when there are any.

    Args:
        sep: What goes between the value and ``(n undef.)``: a line break keeps narrow tables narrow.
    """
    if stat["mean"] is None:
        text = "n/a"
    else:
        scale = 100.0 if metric == "dice" else 1.0
        text = f"{scale * stat['mean']:.1f} ± {scale * stat['std']:.1f}"
    return f"{text}{sep}({stat['undefined']} undef.)" if stat["undefined"] else text


def summary_tables(
    report: dict[str, Any], metrics: Sequence[str] = ("dice", "hd95"), sep: str = " "
) -> list[TextTable]:
    """One table per metric: structures (then their ``mean``) x phases, cells ``mean ± std``.

    Args:
        report: A report (:func:`build_report`).
        metrics: Which metrics, in this order.
        sep: Passed to :func:`format_stat`.
    """
    summary = report["summary"]
    phases = list(summary["dice"])
    tables = []
    for metric in metrics:
        rows = [
            [structure, *(format_stat(summary[metric][p][structure], metric, sep) for p in phases)]
            for structure in [*report["structures"], "mean"]
        ]
        tables.append(
            TextTable(
                f"{NAMES[metric]} ({UNITS[metric]})",
                ["structure", *(f"{NAMES[metric]} {p}" for p in phases)],
                rows,
            )
        )
    return tables


def summary_note(report: dict[str, Any]) -> str:
    """What a report's tables summarise, and what 'undef.' counts."""
    return (
        f"{len(report['volumes'])} volumes; mean ± std over volumes; distances in mm on the "
        "evaluation grid; 'undef.' counts volumes where a structure is present in only one of "
        "prediction and ground truth."
    )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (``|`` in cells escaped, line breaks made spaces), ending in a newline."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)]) + "\n"


def markdown_summary(report: dict[str, Any]) -> str:
    """Per structure x phase tables of DSC, HD95 and ASSD (mean ± std), as Markdown."""
    parts = [
        f"# {report.get('run', '')}: {report.get('split', '')} set, "
        f"{report.get('checkpoint', '')} (epoch {report.get('epoch', '?')})\n"
    ]
    for table in summary_tables(report, ("dice", "hd95", "assd")):
        parts.append(f"## {table.title}\n\n{markdown_table(table.header, table.rows)}")
    parts.append(summary_note(report) + "\n")
    return "\n".join(parts)


def _csv_text(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["volume", "patient", "phase", "structure", *METRICS])
    for v in report["volumes"]:
        for structure, m in v["metrics"].items():
            writer.writerow(
                [
                    v["id"],
                    v["patient"],
                    v["phase"],
                    structure,
                    *("" if m[k] is None else m[k] for k in METRICS),
                ]
            )
    return out.getvalue()


def write_reports(report: dict[str, Any], folder: Path, stem: str = "report") -> list[Path]:
    """Write ``stem.json``, ``stem.csv`` and ``stem.md`` into ``folder``."""
    paths = [folder / f"{stem}.json", folder / f"{stem}.csv", folder / f"{stem}.md"]
    atomic_write_text(paths[0], json.dumps(report, indent=1) + "\n")
    atomic_write_text(paths[1], _csv_text(report))
    atomic_write_text(paths[2], markdown_summary(report))
    return paths


def comparison_rows(
    runs: Sequence[tuple[str, dict[str, Any]]], sep: str = " "
) -> tuple[list[str], list[list[str]]]:
    """One row per run: DSC per structure, mean DSC, mean HD95 (test set, all phases).

    Returns:
        The header and the rows; ``sep`` is passed to :func:`format_stat`.
    """
    structures: list[str] = list(runs[0][1]["structures"])
    header = ["run", *(f"{s} DSC" for s in structures), "mean DSC", "mean HD95 (mm)"]
    rows = []
    for name, report in runs:
        summary = report["summary"]
        if list(report["structures"]) != structures:
            raise RunError(
                f"{name}: its structures {report['structures']} differ from "
                f"{structures}; only runs on one data set can be compared"
            )
        cells = [format_stat(summary["dice"]["all"][s], "dice", sep) for s in structures]
        cells.append(format_stat(summary["dice"]["all"]["mean"], "dice", sep))
        cells.append(format_stat(summary["hd95"]["all"]["mean"], "hd95", sep))
        rows.append([name, *cells])
    return header, rows


def folder_rows(result: dict[str, Any], sep: str = " ") -> tuple[list[str], list[list[str]]]:
    """One row per label of a folder evaluation (:func:`mireg.evaluation.evaluate.evaluate_folders`):
    every metric.

    Returns:
        The header and the rows; ``sep`` is passed to :func:`format_stat`.
    """
    header = ["label", *(f"{NAMES[m]} ({UNITS[m]})" for m in METRICS)]
    rows = [
        [label, *(format_stat(result["mean"][label][m], m, sep) for m in METRICS)]
        for label in result["labels"]
    ]
    return header, rows
