"""Report tables: built as text by mireg.evaluation.report, readable in an 80-column terminal, and as
Markdown."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from mireg import cli
from mireg.evaluation.report import comparison_rows, markdown_summary, markdown_table, summary_tables

PHASES = ("ED", "ES", "all")


def _stat(mean: float | None, std: float | None, undefined: int = 0) -> dict[str, Any]:
    return {"mean": mean, "std": std, "n": 20 - undefined, "undefined": undefined}


def _realistic_report(name: str = "acdc_udaiic") -> dict[str, Any]:
    """3 structures, ED/ES/all; some HD95 values undefined in a few volumes, one in all of them."""
    dice = {"RV": (0.892, 0.031), "MYO": (0.853, 0.042), "LV": (0.931, 0.025), "mean": (0.892, 0.022)}
    hd95 = {"RV": (12.3, 10.5, 1), "MYO": (8.7, 6.4, 0), "LV": (123.4, 100.5, 12), "mean": (48.1, 37.2, 1)}
    summary: dict[str, Any] = {"dice": {}, "hd95": {}, "assd": {}}
    for phase in PHASES:
        summary["dice"][phase] = {s: _stat(m, sd) for s, (m, sd) in dice.items()}
        summary["hd95"][phase] = {s: _stat(m, sd, u) for s, (m, sd, u) in hd95.items()}
        summary["assd"][phase] = {s: _stat(None, None, 20) for s in dice}  # n/a (20 undef.)
    return {
        "run": name,
        "split": "test",
        "checkpoint": "best.pt",
        "epoch": 200,
        "structures": ["RV", "MYO", "LV"],
        "summary": summary,
        "volumes": [{}] * 40,
    }


def _render(renderable: Any) -> list[str]:
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text().splitlines()


def _assert_readable_at_80(lines: list[str], cells: list[str]) -> None:
    assert max(map(len, lines)) <= 80, "\n".join(lines)
    assert "…" not in "\n".join(lines)
    for cell in cells:
        assert any(cell in line for line in lines), (cell, "\n".join(lines))


def test_the_summary_tables_are_structures_by_phases() -> None:
    dsc, hd95 = summary_tables(_realistic_report())
    assert dsc.title == "DSC (%)" and dsc.header == ["structure", "DSC ED", "DSC ES", "DSC all"]
    assert [row[0] for row in dsc.rows] == ["RV", "MYO", "LV", "mean"]
    assert dsc.rows[0][1:] == ["89.2 ± 3.1"] * 3
    assert hd95.title == "HD95 (mm)" and hd95.rows[0][1] == "12.3 ± 10.5 (1 undef.)"
    (narrow,) = summary_tables(_realistic_report(), ("hd95",), sep="\n")
    assert narrow.rows[2][3] == "123.4 ± 100.5\n(12 undef.)"


def test_the_report_tables_fit_80_columns_with_every_value_whole() -> None:
    lines = _render(
        cli.metrics_tables(_realistic_report(), "acdc_udaiic: test set, best checkpoint (epoch 200)")
    )
    text = "\n".join(lines)
    assert "acdc_udaiic: test set, best checkpoint (epoch 200)" in text
    assert "DSC ED" in text and "HD95 all" in text and "mean" in text
    _assert_readable_at_80(
        lines,
        [
            "89.2 ± 3.1",
            "85.3 ± 4.2",
            "93.1 ± 2.5",
            "12.3 ± 10.5",
            "8.7 ± 6.4",
            "123.4 ± 100.5",
            "48.1 ± 37.2",
            "(1 undef.)",
            "(12 undef.)",
        ],
    )


def test_the_comparison_fits_80_columns_and_is_written_as_markdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = []
    for name in ("acdc_partial", "acdc_udaiic_seed11", "acdc_meanteacher", "full"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(_realistic_report(name)))
        runs.append(tmp_path / name)
    console = Console(width=80, record=True, file=io.StringIO())
    monkeypatch.setattr(cli, "console", console)
    cli._compare(runs, tmp_path / "cmp.md")
    lines = console.export_text().splitlines()
    _assert_readable_at_80(lines, ["89.2 ± 3.1", "85.3 ± 4.2", "93.1 ± 2.5", "48.1 ± 37.2", "(1 undef.)"])
    assert any(line.startswith("acdc_partial") for line in lines)
    markdown = (tmp_path / "cmp.md").read_text().splitlines()
    assert markdown[0] == "| run | RV DSC | MYO DSC | LV DSC | mean DSC | mean HD95 (mm) |"
    assert markdown[1] == "|---|---|---|---|---|---|"
    assert markdown[2] == (
        "| acdc_partial | 89.2 ± 3.1 | 85.3 ± 4.2 | 93.1 ± 2.5 | 89.2 ± 2.2 | 48.1 ± 37.2 (1 undef.) |"
    )
    assert len(markdown) == 6


def test_markdown_tables() -> None:
    header, rows = comparison_rows([("a|b", _realistic_report())], sep="\n")
    assert markdown_table(header, rows).splitlines()[2].startswith("| a\\|b | 89.2 ± 3.1 |")
    summary = markdown_summary(_realistic_report())
    assert summary.startswith("# acdc_udaiic: test set, best.pt (epoch 200)\n\n## DSC (%)\n\n")
    assert "| structure | DSC ED | DSC ES | DSC all |\n|---|---|---|---|\n| RV | 89.2 ± 3.1 |" in summary
    assert "## ASSD (mm)" in summary and "| mean | n/a (20 undef.) |" in summary
    assert summary.endswith(
        "\n\n40 volumes; mean ± std over volumes; distances in mm on the evaluation "
        "grid; 'undef.' counts volumes where a structure is present in only one of "
        "prediction and ground truth.\n"
    )


def test_a_table_wider_than_the_terminal_wraps_its_cells_and_cuts_none() -> None:
    header = ["method", "configuration", "val DSC (%) at 5 %", "val DSC (%) at 10 %", "val DSC (%) at all"]
    rows = [
        ["udaiic", "c1: lr = 7.5e-06, radius = [0, 1]", "80.4 chosen", "88.3", ""],
        ["full", "c0: lr = 7.5e-06", "", "", "93.3 chosen"],
    ]
    lines = _render(cli._plain_table(header, rows, "best validation DSC"))
    text = "\n".join(lines)
    assert max(map(len, lines)) <= 80 and "…" not in text, text
    for cell in ("80.4 chosen", "88.3", "93.3 chosen", "radius", "[0, 1]"):
        assert any(cell in line for line in lines), (cell, text)
    assert text.count("val DSC (%)") == 3 and text.count("at") >= 3, text  # the headers wrap, whole
