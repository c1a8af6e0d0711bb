"""A study's report: per method and labelled amount, the test DSC and HD95 over seeds (mean, std,
95 % interval), the paired difference to the baseline (and between the pairs the study file names in
``compare``, and of every method to an nnU-Net method), the share of the partial-to-full gap, the
configuration chosen on validation and what the runs cost. Written as ``study.md``, ``study.json``,
``study.csv`` (one row per run) and ``study.png``; while runs are under way, ``mireg study --interim``
writes the same from the runs finished so far as ``interim.*``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mireg.evaluation.report import markdown_table
from mireg.files import atomic_write, atomic_write_text
from mireg.study.plan import (
    Study,
    duration,
    minutes_left,
    minutes_per_run,
    settings_text,
    timed_runs,
    trained_on,
)
from mireg.study.runs import Amount, PlannedRun, RunRecord, records_to_json, runs_counted
from mireg.study.stats import Estimate, PairedDifference, estimate, gap_share, paired_difference

__all__ = [
    "Comparison",
    "Interim",
    "Row",
    "compare_methods",
    "overview",
    "standing",
    "summarize_study",
    "write_interim_report",
    "write_study_report",
]


@dataclass
class Row:
    """One method at one labelled amount, its chosen configuration's runs over the seeds."""

    method: str
    amount: str
    amount_text: str
    config: int | None  # None: a grid whose choice could not be made (selection runs unfinished)
    settings: dict[str, Any]
    seeds: list[int]
    dice: Estimate | None
    hd95: Estimate | None
    val_dice: Estimate | None
    versus_baseline: PairedDifference | None
    gap: float
    minutes_per_run: float
    minutes_in_all: float  # every run of this method and amount, the grid's included
    failed: list[str]  # log paths of runs that did not finish
    unpaired: list[int] = field(default_factory=list)  # seeds tested on other patients than the baseline
    # The same on the seeds no configuration was chosen on (a study with select_seeds only).
    held_out_dice: Estimate | None = None
    held_out_versus_baseline: PairedDifference | None = None
    held_out_gap: float = math.nan
    # A gridded method: each configuration's mean best-validation DSC over the selection seeds (None
    # until all its selection runs finished), and the spread of those means (max - min; NaN below two).
    grid_val: list[float | None] = field(default_factory=list)
    grid_spread: float = math.nan
    # Validation DSC at the best epoch and at the last, over the seeds whose runs have both.
    epoch_val: tuple[Estimate, Estimate] | None = None
    # Test DSC at the best epoch's checkpoint and at the last, over the seeds whose runs have both.
    epoch_test: tuple[Estimate, Estimate] | None = None


@dataclass
class Comparison:
    """A compared pair (:meth:`~mireg.study.Study.compared`) at one labelled amount both methods
    train at: the paired test-DSC difference ``method - versus`` over the seeds both finished, and
    over the seeds no configuration was chosen on."""

    method: str
    versus: str
    amount: str
    amount_text: str
    difference: PairedDifference | None
    held_out_difference: PairedDifference | None
    unpaired: list[int]  # seeds whose two runs were tested on different patients
    # At the last checkpoints, over the seeds both tested it (an nnU-Net run: its final checkpoint).
    last_difference: PairedDifference | None = None


def summarize_study(
    study: Study, records: list[RunRecord], chosen: dict[tuple[str, str], int] | None = None
) -> list[Row]:
    """The rows of the report, for the configurations ``chosen`` per method and amount (default:
    those :meth:`Study.choose` picks); a gridded method and amount not in it has no test numbers."""
    if chosen is None:
        chosen = study.choose(records)
    spec = study.spec
    held_out = set(study.held_out_seeds)
    rows: list[Row] = []
    for method in spec.methods:
        for amount in study.amounts_of(method):
            gridded = len(study.configs(method)) > 1
            config = chosen.get((method, amount.label), None if gridded else 0)
            mine = [r for r in records if (r.method, r.amount) == (method, amount.label)]
            picked = sorted((r for r in mine if r.config == config), key=lambda r: r.seed)
            ok = [r for r in picked if r.status == "done"]
            kept = [r for r in ok if r.seed in held_out]
            rows.append(
                Row(
                    method=method,
                    amount=amount.label,
                    amount_text=amount.text,
                    config=config,
                    settings={} if config is None else study.configs(method)[config],
                    seeds=[r.seed for r in ok],
                    dice=estimate([r.test_dice for r in ok]) if ok else None,
                    hd95=_finite_estimate([r.test_hd95 for r in ok]),
                    val_dice=estimate([r.val_dice for r in ok]) if ok else None,
                    versus_baseline=None,
                    gap=math.nan,
                    minutes_per_run=_mean([r.minutes for r in ok]),
                    minutes_in_all=sum(r.minutes for r in mine if r.status == "done"),
                    failed=[r.log for r in mine if r.status != "done"],
                    held_out_dice=estimate([r.test_dice for r in kept]) if kept else None,
                    epoch_val=_best_and_last(ok, "val_dice", "last_val_dice"),
                    epoch_test=_best_and_last(ok, "test_dice", "last_test_dice"),
                )
            )
            if gridded:
                grid = _grid_validation(study, records, method, amount.label)
                rows[-1].grid_val, rows[-1].grid_spread = grid
    by_key = {(row.method, row.amount): row for row in rows}
    full = next((row for row in rows if row.method == spec.full), None)
    for row in rows:
        base = by_key.get((spec.baseline, row.amount))
        if row.method in (spec.baseline, spec.full) or base is None:
            continue
        row.versus_baseline, row.unpaired = _paired(records, row, base)
        row.held_out_versus_baseline, _ = _paired(records, row, base, held_out)
        if full is not None:
            row.gap = _gap_of(records, row, base, full)
            row.held_out_gap = _gap_of(records, row, base, full, held_out)
    return rows


def compare_methods(study: Study, records: list[RunRecord], rows: list[Row]) -> list[Comparison]:
    """The study's compared pairs (:meth:`~mireg.study.Study.compared`), at every labelled amount both
    methods have a row for."""
    by_key = {(row.method, row.amount): row for row in rows}
    held_out = set(study.held_out_seeds)
    comparisons = []
    for method, versus in study.compared():
        for amount in study.amounts_of(method):
            row, base = by_key.get((method, amount.label)), by_key.get((versus, amount.label))
            if row is None or base is None:
                continue
            difference, unpaired = _paired(records, row, base)
            held_out_difference, _ = _paired(records, row, base, held_out)
            last_difference, _ = _paired(records, row, base, value="last_test_dice")
            comparisons.append(
                Comparison(
                    method,
                    versus,
                    row.amount,
                    row.amount_text,
                    difference,
                    held_out_difference,
                    unpaired,
                    last_difference,
                )
            )
    return comparisons


def _grid_validation(
    study: Study, records: list[RunRecord], method: str, amount: str
) -> tuple[list[float | None], float]:
    """Each configuration's mean best-validation DSC over the selection seeds (None where a
    selection run did not finish), and their spread (max - min, NaN with fewer than two)."""
    means: list[float | None] = []
    for config in range(len(study.configs(method))):
        scores = study.validation_scores(records, method, config, amount)
        means.append(_mean(scores) if len(scores) == len(study.select_seeds) else None)
    known = [m for m in means if m is not None]
    return means, (max(known) - min(known) if len(known) > 1 else math.nan)


def _best_and_last(records: list[RunRecord], best: str, last: str) -> tuple[Estimate, Estimate] | None:
    """A DSC of the runs' best epochs and of their last (the records' fields ``best`` and
    ``last``: ``val_dice`` and ``last_val_dice``, or ``test_dice`` and ``last_test_dice``), over
    the runs with both."""
    both = [r for r in records if not (math.isnan(getattr(r, best)) or math.isnan(getattr(r, last)))]
    if not both:
        return None
    return estimate([getattr(r, best) for r in both]), estimate([getattr(r, last) for r in both])


def _gap_of(records: list[RunRecord], row: Row, base: Row, full: Row, among: set[int] | None = None) -> float:
    """The share of the baseline-to-full gap ``row`` closes, from the mean test DSC of the three
    over the seeds all three finished (of ``among`` only, if given), less the seeds whose runs of
    ``row`` and the baseline were tested on different patients; NaN with no such seed. Over shared
    seeds, as its paired difference, so that a method with fewer seeds finished (a failed run, an
    interim report) is not set against the others' means over more splits."""
    runs = [_done_by_seed(records, r, among) for r in (row, base, full)]
    seeds = (set(runs[0]) & set(runs[1]) & set(runs[2])) - set(row.unpaired)
    if not seeds:
        return math.nan
    return gap_share(*(sum(by_seed[s].test_dice for s in seeds) / len(seeds) for by_seed in runs))


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def _finite_estimate(values: list[float]) -> Estimate | None:
    values = [v for v in values if not math.isnan(v)]
    return estimate(values) if values else None


def _done_by_seed(records: list[RunRecord], row: Row, among: set[int] | None = None) -> dict[int, RunRecord]:
    """The finished runs of ``row``'s method, amount and configuration, by seed (of ``among`` only)."""
    return {
        x.seed: x
        for x in records
        if (x.method, x.amount, x.config, x.status) == (row.method, row.amount, row.config, "done")
        and (among is None or x.seed in among)
    }


def _paired(
    records: list[RunRecord], row: Row, base: Row, among: set[int] | None = None, value: str = "test_dice"
) -> tuple[PairedDifference | None, list[int]]:
    """Test DSC of ``row`` minus the baseline's over the seeds both finished (of ``among`` only, if
    given), and the seeds left out because the two runs were validated or tested on different
    patients (their recipes' data differ), which no difference can pair. ``value``: the records'
    field compared (``last_test_dice``: the last checkpoints', over the seeds both have it)."""

    mine, theirs = _done_by_seed(records, row, among), _done_by_seed(records, base, among)
    both = sorted(set(mine) & set(theirs))
    unpaired = [s for s in both if mine[s].split and theirs[s].split and mine[s].split != theirs[s].split]
    seeds = [
        s
        for s in both
        if s not in unpaired
        and not (math.isnan(getattr(mine[s], value)) or math.isnan(getattr(theirs[s], value)))
    ]
    if not seeds:
        return None, unpaired
    a, b = [getattr(mine[s], value) for s in seeds], [getattr(theirs[s], value) for s in seeds]
    return paired_difference(a, b), unpaired


# --------------------------------------------------------------------------------------------------
# Writing


def _pct(e: Estimate | None, scale: float = 100.0) -> str:
    if e is None:
        return "n/a"
    if e.n == 1:
        return f"{scale * e.mean:.1f}"
    return f"{scale * e.mean:.1f} ± {scale * e.std:.1f} [{scale * e.low:.1f}, {scale * e.high:.1f}]"


def _hd95(row: Row) -> str:
    """The HD95 cell. A run whose test HD95 is undefined (on every test volume, each structure
    missed or predicted where there is none: the worst runs) is left out of the mean, so the cell
    says over how many of the row's seeds it is."""
    text = _pct(row.hd95, 1.0)
    if row.hd95 is not None and row.hd95.n < len(row.seeds):
        text += f" ({row.hd95.n} of {len(row.seeds)} seeds)"
    return text


def _difference(d: PairedDifference | None) -> str:
    if d is None:
        return ""
    e = d.difference
    text = f"{100 * e.mean:+.1f}"
    if e.n > 1:
        text += f" [{100 * e.low:+.1f}, {100 * e.high:+.1f}]"
    if not math.isnan(d.p_value):
        text += f", p = {d.p_value:.2g}"
    return text


def _settings(settings: dict[str, Any]) -> str:
    return settings_text(settings) or "recipe as is"


def _chosen(row: Row) -> str:
    return "not chosen: selection runs unfinished" if row.config is None else _settings(row.settings)


def markdown(
    study: Study, rows: list[Row], comparisons: list[Comparison] | None = None, interim: str = ""
) -> str:
    """``study.md`` (``interim``: what an interim report is, written under its title)."""
    spec = study.spec
    chooses = bool(study.gridded_methods())  # without any grid there is no column of choices
    header = [
        "method",
        "labelled",
        "seeds",
        "test DSC (%)",
        "test HD95 (mm)",
        f"Δ DSC vs {spec.baseline}",
        "gap closed",
        "val DSC (%)",
        *(["chosen on validation"] if chooses else []),
        "min / run",
    ]
    table = []
    for row in rows:
        gap = "" if row.method in (spec.baseline, spec.full) else _gap(row.gap)
        table.append(
            [
                row.method,
                row.amount_text,
                str(len(row.seeds)),
                _pct(row.dice),
                _hd95(row),
                _difference(row.versus_baseline),
                gap,
                _pct(row.val_dice),
                *([_chosen(row)] if chooses else []),
                "n/a" if math.isnan(row.minutes_per_run) else f"{row.minutes_per_run:.1f}",
            ]
        )
    lines = [
        f"# Study {spec.name}{' (quick preset)' if study.quick else ''}{': interim' if interim else ''}",
        "",
        *([interim, ""] if interim else []),
        markdown_table(header, table).rstrip("\n"),
        "",
        f"Seeds {', '.join(map(str, study.seeds))}; each seed draws the patient split, shared by every "
        "method. Values are mean ± sample std over seeds [95 % t interval of the mean]. "
        f"Δ DSC vs {spec.baseline}: the paired difference over the seeds both finished, with its "
        "95 % interval and the two-sided paired t test's p."
        + (
            f" Gap closed: (method - {spec.baseline}) / ({spec.full} - {spec.baseline}) of the mean test DSC "
            "over the seeds all three finished."
            if spec.full is not None
            else ""
        ),
        "",
        f"Selection rule: {study.rule()}",
        "",
        "Cost: "
        + "; ".join(f"{r.method} at {r.amount_text}: {r.minutes_in_all:.1f} min" for r in rows)
        + " of training in all (grids included).",
    ]
    unpaired = [
        f"{r.method} at {r.amount_text}: seeds {', '.join(map(str, r.unpaired))}" for r in rows if r.unpaired
    ]
    if unpaired:
        lines += [
            "",
            f"Not paired with {spec.baseline}, because the runs of a seed were validated or tested on "
            f"different patients (their recipes' data differ): {'; '.join(unpaired)}.",
        ]
    lines += _grid_table(study, rows)
    lines += _held_out_table(study, rows)
    lines += _comparison_table(study, comparisons or [])
    lines += _epoch_table(study, rows)
    lines += _last_checkpoint_tables(study, rows, comparisons or [])
    failed = [log for row in rows for log in row.failed]
    if failed:
        lines += ["", f"Runs that did not finish ({len(failed)}); their logs:", ""]
        lines += [f"- {log}" for log in failed]
    return "\n".join(lines) + "\n"


def _held_out_table(study: Study, rows: list[Row]) -> list[str]:
    """The test numbers on the seeds no configuration was chosen on, as lines of ``study.md``."""
    held_out = study.held_out_seeds
    if not held_out:
        return []
    spec = study.spec
    header = ["method", "labelled", "seeds", "test DSC (%)", f"Δ DSC vs {spec.baseline}", "gap closed"]
    table = [
        [
            row.method,
            row.amount_text,
            str(row.held_out_dice.n if row.held_out_dice is not None else 0),
            _pct(row.held_out_dice),
            _difference(row.held_out_versus_baseline),
            "" if row.method in (spec.baseline, spec.full) else _gap(row.held_out_gap),
        ]
        for row in rows
    ]
    return [
        "",
        f"## Held out from the choice: seeds {', '.join(map(str, held_out))}",
        "",
        "The same, on the seeds no configuration was chosen on (the chosen configurations' runs "
        "only; a method without a grid also trained on the selection seeds, left out here).",
        "",
        markdown_table(header, table).rstrip("\n"),
    ]


def _comparison_table(study: Study, comparisons: list[Comparison]) -> list[str]:
    """The compared pairs, as lines of ``study.md``."""
    if not comparisons:
        return []
    held_out = study.held_out_seeds
    header = ["method", "versus", "labelled", "seeds", "Δ test DSC [95 % interval]"]
    if held_out:
        header += ["seeds held out", "Δ test DSC, held out"]
    table = []
    for c in comparisons:
        line = [c.method, c.versus, c.amount_text, _seed_count(c.difference), _difference(c.difference)]
        if held_out:
            line += [_seed_count(c.held_out_difference), _difference(c.held_out_difference)]
        table.append(line)
    lines = [
        "",
        "## Paired comparisons",
        "",
        "Test DSC of the first method minus the second's, in points, over the seeds both finished (each "
        "with its chosen configuration), with the 95 % t interval of the mean difference and the "
        "two-sided paired t test's p"
        + (f"; held out: seeds {', '.join(map(str, held_out))} only." if held_out else "."),
        "",
        markdown_table(header, table).rstrip("\n"),
    ]
    unpaired = [
        f"{c.method} - {c.versus} at {c.amount_text}: seeds {', '.join(map(str, c.unpaired))}"
        for c in comparisons
        if c.unpaired
    ]
    if unpaired:
        lines += ["", f"Not paired (tested on different patients): {'; '.join(unpaired)}."]
    return lines


def _epoch_table(study: Study, rows: list[Row]) -> list[str]:
    """Each method's validation DSC at its best epoch and at its last, as lines of ``study.md``."""
    table = _best_and_last_cells([(row, row.epoch_val) for row in rows])
    if not table:
        return []
    header = [
        "method",
        "labelled",
        "seeds",
        "val DSC at the best epoch (%)",
        "at the last epoch (%)",
        "best - last",
    ]
    text = (
        "A mireg run tests the checkpoint of its best validation epoch, and the val DSC above is that "
        "epoch's: the highest of many evaluations, which flatters it. Best - last (points, mean over "
        "the seeds) is what choosing the epoch adds on validation, flattery included: large where "
        "runs fall away late. Test numbers are free of the flattery: a run's is its chosen "
        "checkpoint's, on patients the choice never saw."
    )
    if _trains_nnunet(study):
        text += (
            ' An nnU-Net run (engine = "nnunet") validates and tests its final checkpoint only, so '
            "its two numbers are one: compare a mireg method's validation with it at the last epoch."
        )
    return [
        "",
        "## Validation at the best epoch and at the last",
        "",
        text,
        "",
        markdown_table(header, table).rstrip("\n"),
    ]


def _best_and_last_cells(shown: list[tuple[Row, tuple[Estimate, Estimate] | None]]) -> list[list[str]]:
    """The cells of a table of each row's DSC at the best epoch and at the last (rows without both
    left out): method, labelled, seeds, best, last, best - last."""
    table = []
    for row, both in shown:
        if both is not None:
            best, last = both
            drop = f"{100 * (best.mean - last.mean):+.1f}"
            table.append([row.method, row.amount_text, str(best.n), _pct(best), _pct(last), drop])
    return table


def _trains_nnunet(study: Study) -> bool:
    """Whether a method of the study is trained by nnU-Net (its final checkpoint only)."""
    return any("nnunet" in study.engines(method) for method in study.spec.methods)


def _last_checkpoint_tables(study: Study, rows: list[Row], comparisons: list[Comparison]) -> list[str]:
    """Each method's test DSC at its best epoch's checkpoint and at its last, and the compared pairs
    at their last checkpoints, as lines of ``study.md`` (none before a run tested its last)."""
    table = _best_and_last_cells([(row, row.epoch_test) for row in rows])
    if not table:
        return []
    header = ["method", "labelled", "seeds", "test DSC, best epoch (%)", "last checkpoint (%)", "best - last"]
    text = (
        "A mireg run is tested at its best validation epoch's checkpoint (the numbers above) and at "
        "its last (report_test_last.json), here over the seeds whose runs have both. Best - last "
        "(points, mean over the seeds) is what choosing the epoch on validation gave on patients the "
        "choice never saw."
    )
    if _trains_nnunet(study):
        text += (
            ' An nnU-Net run (engine = "nnunet") keeps and tests its final checkpoint only, so its two '
            "numbers are one, and the paired differences below compare it with each method with no "
            "epoch chosen on either side."
        )
    lines = [
        "",
        "## Tested at the best epoch and at the last",
        "",
        text,
        "",
        markdown_table(header, table).rstrip("\n"),
    ]
    paired = [c for c in comparisons if c.last_difference is not None]
    if paired:
        header = [
            "method",
            "versus",
            "labelled",
            "seeds",
            "Δ test DSC at the last checkpoints [95 % interval]",
        ]
        cells = [
            [
                c.method,
                c.versus,
                c.amount_text,
                _seed_count(c.last_difference),
                _difference(c.last_difference),
            ]
            for c in paired
        ]
        lines += [
            "",
            "The compared pairs at their last checkpoints, paired over the seeds both tested it:",
            "",
            markdown_table(header, cells).rstrip("\n"),
        ]
    return lines


def _grid_table(study: Study, rows: list[Row]) -> list[str]:
    """How far each gridded method's validation DSC moves across its grid, as lines of ``study.md``."""
    gridded = [row for row in rows if row.grid_val]
    if not gridded:
        return []
    table = []
    for row in gridded:
        configs = study.configs(row.method)
        cells = [
            f"{_short_settings(settings)}: "
            + ("unfinished" if val is None else f"{100 * val:.1f}")
            + (" (chosen)" if config == row.config else "")
            for config, (settings, val) in enumerate(zip(configs, row.grid_val, strict=True))
        ]
        spread = "n/a" if math.isnan(row.grid_spread) else f"{100 * row.grid_spread:.1f}"
        table.append([row.method, row.amount_text, "; ".join(cells), spread])
    header = ["method", "labelled", "mean val DSC (%) of each configuration", "spread (points)"]
    return [
        "",
        "## How far validation moves across each grid",
        "",
        "Mean best-validation DSC over the selection seeds "
        f"({', '.join(map(str, study.select_seeds))}) of each configuration, and the spread (highest "
        "minus lowest). A method whose spread is large next to its gain over the baseline depends on a "
        "setting that does not travel: choose it on the validation split of your own data "
        "(docs/study.md).",
        "",
        markdown_table(header, table).rstrip("\n"),
    ]


def _seed_count(d: PairedDifference | None) -> str:
    return "0" if d is None else str(d.difference.n)


def _gap(share: float) -> str:
    return "n/a" if math.isnan(share) else f"{100 * share:.0f} %"


def _csv(records: list[RunRecord]) -> str:
    out = io.StringIO()
    rows = records_to_json(records)
    writer = csv.DictWriter(out, fieldnames=list(RunRecord.__dataclass_fields__))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _plain(value: Any) -> Any:
    """JSON-able, with NaN as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def plot(study: Study, rows: list[Row], path: Path) -> None:
    """DSC and HD95 against the labelled amount: mean and 95 % interval over seeds per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = study.spec
    amounts = [a.label for a in study.amounts]
    x = {label: i for i, label in enumerate(amounts)}
    # Each method's points sit a little apart at every amount, so that their intervals do not hide
    # each other.
    plotted = [m for m in spec.methods if m != spec.full]
    width = min(0.12, 0.6 / max(len(plotted), 1))
    shift = {m: (i - (len(plotted) - 1) / 2) * width for i, m in enumerate(plotted)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    for ax, metric, scale, unit in (
        (axes[0], "dice", 100.0, "test DSC (%)"),
        (axes[1], "hd95", 1.0, "test HD95 (mm)"),
    ):
        for method in spec.methods:
            mine = [r for r in rows if r.method == method and getattr(r, metric) is not None]
            if method == spec.full:
                for r in mine:
                    e = getattr(r, metric)
                    ax.axhline(scale * e.mean, color="k", linestyle="--", label=f"{method} (all labels)")
                    if e.n > 1:
                        ax.axhspan(scale * e.low, scale * e.high, color="k", alpha=0.08)
                continue
            points = [(x[r.amount], getattr(r, metric)) for r in mine if r.amount in x]
            if not points:
                continue
            xs = [p[0] + shift[method] for p in points]
            means = [scale * p[1].mean for p in points]
            errs = [
                [scale * (p[1].mean - p[1].low) if p[1].n > 1 else 0.0 for p in points],
                [scale * (p[1].high - p[1].mean) if p[1].n > 1 else 0.0 for p in points],
            ]
            ax.errorbar(xs, means, yerr=errs, marker="o", capsize=3, label=method)
        ax.set_xticks(range(len(amounts)), [a.text for a in study.amounts])
        ax.set_xlabel("labelled")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right center", fontsize=8)
    fig.suptitle(f"{spec.name}: mean and 95 % interval over {len(study.seeds)} seeds")
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)


def overview(study: Study, rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """The short table a terminal shows: test DSC (mean ± std over seeds) and the gap closed."""
    spec = study.spec
    header = ["method", "labelled", "seeds", "test DSC (%)", "gap closed"]
    table = [
        [
            row.method,
            row.amount_text,
            str(len(row.seeds)),
            "n/a" if row.dice is None else f"{100 * row.dice.mean:.1f} ± {100 * row.dice.std:.1f}",
            "" if row.method in (spec.baseline, spec.full) else _gap(row.gap),
        ]
        for row in rows
    ]
    return header, table


def write_study_report(study: Study, records: list[RunRecord], rows: list[Row]) -> list[Path]:
    """Write ``study.md``, ``study.json``, ``study.csv`` and ``study.png`` into the study folder.

    Args:
        study: The study.
        records: Every run's record.
        rows: ``summarize_study(study, records)``.
    """
    return _write_report(study, records, rows)


@dataclass(frozen=True)
class Interim:
    """An interim report :func:`write_interim_report` wrote.

    Attributes:
        paths: ``interim.md`` first (none: no run has finished).
        rows: Its rows (none: no run has finished).
        finished: The runs finished.
        total: The runs the study has in all.
    """

    paths: list[Path]
    rows: list[Row]
    finished: int
    total: int


def write_interim_report(study: Study) -> Interim:
    """Write ``interim.md``, ``.json``, ``.csv`` and ``.png`` into the study folder from the runs
    finished so far, training nothing. A gridded method and amount has test numbers only once its
    configuration is chosen (every one of its selection runs ended, finished or failed, as the
    running study chooses it); every number is over the seeds finished so far, and each paired
    difference over the seeds both methods finished. ``study.md`` stays the report of a study whose
    runs all ended. With no run finished, nothing is written (``paths`` is empty).

    Raises:
        MiregError: As :meth:`~mireg.study.Study.standing`, when the study file changed since a run
            was planned.
    """
    plan, records = study.standing()
    finished = sum(run.state == "done" for run in plan)
    if not finished:
        return Interim([], [], 0, len(plan))
    rows = summarize_study(study, records, study.choose(records, settled=True))
    text = (
        f"Interim: {finished} of {len(plan)} runs finished. A method with a grid has test numbers "
        "once its configuration is chosen on validation (all of its selection runs ended; a "
        "configuration with a failed one does not compete); every number is over the seeds finished "
        "so far, and a paired difference over the seeds both methods finished. `study.md` is "
        "written when every run has ended."
    )
    if study.pending:
        text += f" Waiting for choices not made yet (no run trained): {study.waiting_text()}"
    paths = _write_report(study, records, rows, text)
    return Interim(paths, rows, finished, len(plan))


def _write_report(study: Study, records: list[RunRecord], rows: list[Row], interim: str = "") -> list[Path]:
    """The report's files (:meth:`~mireg.study.Study.report_files`), the interim ones if ``interim``
    says what an interim report is (:func:`markdown`)."""
    comparisons = compare_methods(study, records, rows)
    data = {
        "study": study.spec.model_dump(mode="json"),
        "quick": study.quick,
        **({"interim": interim} if interim else {}),
        "seeds": study.seeds,
        "select_seeds": study.select_seeds,
        "selection_rule": study.rule(),
        "configurations": {m: study.configs(m) for m in study.spec.methods},
        "rows": [_plain(asdict(row)) for row in rows],
        "comparisons": [_plain(asdict(c)) for c in comparisons],
        "runs": records_to_json(records),
    }
    if study.origin is not None:  # what each chosen method trains, and where it was chosen
        data["taken_from"] = {
            "study": str(study.origin.source),
            "methods": {
                method: {
                    "method": b.method,
                    "config": b.config,
                    "settings": study.origin.configs(b.method)[b.config],
                    "val_dice": None if math.isnan(b.score) else b.score,
                }
                for method, b in study.borrowed.items()
            },
        }
    paths = study.report_files(interim=bool(interim))
    atomic_write_text(paths[0], markdown(study, rows, comparisons, interim))
    atomic_write_text(paths[1], json.dumps(data, indent=1) + "\n")
    atomic_write_text(paths[2], _csv(records))
    plot(study, rows, paths[3])
    return paths


# --------------------------------------------------------------------------------------------------
# Where a study stands (``mireg study --plan``)

Table = tuple[str, list[str], list[list[str]]]  # title, header, rows


def standing(study: Study, jobs: int, machine: str = "") -> tuple[list[Table], str]:
    """Where the study stands, without training anything: per phase, method and labelled amount,
    the runs finished, to resume, to train and waiting for another study's choices; each gridded
    configuration's mean best validation DSC so far and the one chosen; and a closing line with the
    training time left, estimated from the minutes the finished runs took, those on ``machine``
    (where the runs left will train) first (:func:`~mireg.study.plan.minutes_per_run`). No test
    number is shown.
    """
    plan, records = study.standing()
    states = ["done", "resume", "train"] + (["wait"] if study.pending else [])
    count = {state: sum(r.state == state for r in plan) for state in states}
    tables: list[Table] = []
    for phase in ("selection", "evaluation"):
        groups: dict[tuple[str, str], list[PlannedRun]] = {}
        for run in plan:
            if run.phase == phase:
                groups.setdefault((run.method, run.amount.label), []).append(run)
        if not groups:
            continue
        rows = []
        for (method, _), runs in groups.items():
            configs = sorted({r.config for r in runs if r.config is not None})
            if phase == "selection":
                which = str(len(configs))
            else:
                which = ", ".join(f"c{c}" for c in configs) or "not chosen yet"
            counts = [str(sum(r.state == state for r in runs)) for state in states]
            rows.append([method, runs[0].amount.text, which, *counts])
        seeds = ", ".join(map(str, sorted({r.seed for r in plan if r.phase == phase})))
        if phase == "evaluation":
            title = f"evaluation of the configuration chosen, seeds {seeds}"
        elif study.gridded_methods():
            title = f"selection, seeds {seeds}"
        else:  # nothing to choose: one phase
            title = f"seeds {seeds}"
        header = ["method", "labelled", "configurations", "finished", "to resume", "to train"]
        header += ["waiting"] if study.pending else []
        tables.append((title, header, rows))
    amounts = list(dict.fromkeys(a for m in study.gridded_methods() for a in study.amounts_of(m)))
    choices = _choices(study, plan, records, amounts)
    if choices:
        header = ["method", "configuration", *(f"val DSC (%) at {a.text}" for a in amounts)]
        title = "best validation DSC, mean over the selection seeds finished so far"
        tables.append((title, header, choices))
    failed = sum(r.failed for r in plan)
    head = (
        f"study {study.spec.name}: {runs_counted(len(plan))} in {study.out}: {count['done']} finished, "
        f"{count['resume']} to resume, {count['train']} to train"
        + (f" ({failed} of them failed when last run: tried again when the study runs)" if failed else "")
    )
    if study.pending:
        head += f", {count['wait']} waiting for choices not made yet: {study.waiting_text()}"
    taken = study.borrowed_rule().strip()  # what the chosen methods train, and where it was chosen
    return tables, head + "\n" + (f"{taken}\n" if taken else "") + _time_left(plan, records, jobs, machine)


def _choices(
    study: Study, plan: list[PlannedRun], records: list[RunRecord], amounts: list[Amount]
) -> list[list[str]]:
    """Per gridded method and configuration, its mean best validation DSC at each amount so far."""
    chosen = {
        (r.method, r.amount.label): r.config for r in plan if r.phase == "evaluation" and r.config is not None
    }
    rows = []
    for method in study.gridded_methods():
        for config, settings in enumerate(study.configs(method)):
            cells = []
            for amount in amounts:
                if amount not in study.amounts_of(method):
                    cells.append("")
                    continue
                val = study.validation_scores(records, method, config, amount.label)
                cell = f"{100 * _mean(val):.1f}" if val else ""
                if len(val) < len(study.select_seeds):
                    cell += f" ({len(val)} of {len(study.select_seeds)})"
                elif chosen.get((method, amount.label)) == config:
                    cell += " chosen"
                cells.append(cell.strip())
            rows.append([method, f"c{config}: {_short_settings(settings)}", *cells])
    return rows


def _short_settings(settings: dict[str, Any]) -> str:
    """Settings by the last part of their key (``lr = 1e-06``), unless two of them share it."""
    names = [key.rsplit(".", 1)[-1] for key in settings]
    if len(set(names)) < len(names):
        return _settings(settings)
    return ", ".join(f"{n} = {v}" for n, v in zip(names, settings.values(), strict=True))


def _time_left(plan: list[PlannedRun], records: list[RunRecord], jobs: int, machine: str) -> str:
    left = sum(r.to_train for r in plan)
    waiting = sum(r.state == "wait" for r in plan)
    if not left:
        if waiting:
            verb = "waits" if waiting == 1 else "wait"
            return f"every run that can train has finished; {waiting} {verb} for choices not made yet"
        return "every run has finished; running the study writes its report"
    minutes = minutes_left(plan, records, jobs, machine)
    if minutes is None:
        return f"{runs_counted(left)} to train; the time they take is estimated once one has finished"
    finished = timed_runs(records)
    measured = {r.method for r in finished}
    per_method, _ = minutes_per_run(plan, records, machine) or ({}, math.nan)
    unfinished = {r.method for r in plan if r.to_train} - measured
    partly = sorted(unfinished & per_method.keys())
    guessed = sorted(unfinished - per_method.keys())
    here = {r.method for r in trained_on(finished, machine)}
    if here:
        basis = f'from the minutes the finished runs took on this machine, "{machine}"'
        elsewhere = sorted((measured - here) & {r.method for r in plan if r.to_train})
        if elsewhere:
            basis += f"; {', '.join(elsewhere)}: none finished here yet, counted from other machines"
    else:
        basis = "from the minutes the finished runs took"
        basis += f', none known to have trained on this machine, "{machine}"' if machine else ""
    if partly:
        basis += f"; {', '.join(partly)}: none finished yet, counted from the epochs trained so far"
    if guessed:  # a cheaper method's minutes may stand for a dearer one's, or the other way round
        basis += f"; {', '.join(guessed)}: none finished yet, counted at the finished runs' median"
    if waiting:
        basis += f"; {'the run' if waiting == 1 else f'the {waiting} runs'} waiting for choices not counted"
    return f"about {duration(60 * minutes)} of training left at {runs_counted(jobs)} at a time ({basis})"
