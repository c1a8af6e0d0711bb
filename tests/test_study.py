"""``mireg study``: the plan, the validation-only choice, errors in study files, and whole studies on
the CPU (a failed run reported while the rest completes; a killed study resumed)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mireg.errors import MiregError, RecipeError
from mireg.recipe import dump_toml
from mireg.study.executors.base import Ending, Executor, Launch
from mireg.study.plan import Borrowed, Study
from mireg.study.report import compare_methods, markdown, summarize_study, write_interim_report
from mireg.study.runner import launch_of, run_study
from mireg.study.runs import RunKey, RunRecord, read_record, runs_counted
from mireg.study.spec import load_study
from mireg.study.workflow import conduct, local_executor
from mireg.training.rundir import RunDir

from .helpers import tiny_recipe, wait_for


def _recipes(folder: Path, epochs: int = 1, iterations: int = 2) -> None:
    """Tiny partial / udaiic / full recipes, and one whose data cannot be found."""
    regs = tiny_recipe(folder)["regularizers"]
    for name, regularizers, ratio in (("partial", [], 0.5), ("udaiic", regs, 0.5), ("full", [], 1.0)):
        raw = tiny_recipe(folder / "unused", name=name, regularizers=regularizers)
        raw["data"]["labeled_ratio"] = ratio
        raw["train"].update(epochs=epochs, iterations_per_epoch=iterations, log_every=1)
        (folder / f"{name}.toml").write_text(dump_toml(raw))
    broken = tiny_recipe(folder / "unused", name="broken")
    broken["data"] = {
        "name": "acdc",
        "root": str(folder / "no-such-store"),
        "val_patients": 2,
        "test_patients": 2,
    }
    (folder / "broken.toml").write_text(dump_toml(broken))


def _study_file(folder: Path, text: str) -> Path:
    path = folder / "study.toml"
    path.write_text(f'runs_dir = "{folder / "out"}"\n' + text)
    return path


GRID_STUDY = """
name = "s"
seeds = [1, 2, 3]
select_seeds = [1, 2]
labeled_ratios = [0.5]
[methods.partial]
recipe = "partial.toml"
[methods.partial.grid]
"optim.lr" = [1e-5, 3e-5]
[methods.udaiic]
recipe = "udaiic.toml"
[methods.full]
recipe = "full.toml"
"""


def _grid_study(tmp_path: Path) -> tuple[Study, dict[str, RunKey]]:
    """GRID_STUDY on the tiny recipes, and its selection runs by name."""
    _recipes(tmp_path)
    study = Study(load_study(_study_file(tmp_path, GRID_STUDY)), tmp_path / "study.toml")
    return study, {k.name: k for k in study.selection_runs()}


def _record(key: RunKey, val: float, test: float) -> RunRecord:
    return RunRecord(
        key.name, key.method, key.config, key.amount.label, key.seed, "done", val, test, 10.0, 1.0
    )


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[1] / "recipes" / "studies").glob("*.toml")), ids=lambda p: p.stem
)
def test_the_shipped_study_files_load_and_every_configuration_validates(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a follow-up reads its choices from runs/studies: none here
    study = Study(load_study(path), path)
    study.check()  # every method and configuration, on the meta device
    assert study.total_runs() > 0


def test_the_plan_trains_every_configuration_on_the_selection_seeds_then_the_chosen_one(
    tmp_path: Path,
) -> None:
    _recipes(tmp_path)
    study = Study(load_study(_study_file(tmp_path, GRID_STUDY)), tmp_path / "study.toml")
    study.check()
    first = study.selection_runs()
    assert [k.name for k in first if k.method == "partial"] == [
        "partial-c0-50pct-s1",
        "partial-c1-50pct-s1",
        "partial-c0-50pct-s2",
        "partial-c1-50pct-s2",
    ]
    assert [k.name for k in first if k.method != "partial"] == [
        "udaiic-c0-50pct-s1",
        "full-c0-all-s1",
        "udaiic-c0-50pct-s2",
        "full-c0-all-s2",
        "udaiic-c0-50pct-s3",
        "full-c0-all-s3",
    ]
    assert study.total_runs() == len(first) + 1  # the chosen configuration on seed 3
    raw = study.recipe(first[1])
    assert raw["optim"]["lr"] == 3e-5 and raw["seed"] == 1 and raw["name"] == "partial-c1-50pct-s1"
    assert raw["data"]["labeled_ratio"] == 0.5 and raw["train"]["runs_dir"] == str(tmp_path / "out/s/runs")


def test_the_study_chooses_on_validation_even_where_test_would_choose_otherwise(tmp_path: Path) -> None:
    study, keys = _grid_study(tmp_path)
    records = [
        # configuration 0: worse on validation, better on test
        _record(keys["partial-c0-50pct-s1"], 0.70, 0.90),
        _record(keys["partial-c0-50pct-s2"], 0.72, 0.92),
        # configuration 1: better on validation, worse on test
        _record(keys["partial-c1-50pct-s1"], 0.80, 0.60),
        _record(keys["partial-c1-50pct-s2"], 0.82, 0.62),
    ]
    records += [_record(k, 0.8, 0.7) for name, k in keys.items() if not name.startswith("partial")]
    chosen = study.choose(records)
    assert chosen == {("partial", "50pct"): 1}
    [later] = study.evaluation_runs(chosen)
    assert later.name == "partial-c1-50pct-s3"
    records.append(_record(later, 0.81, 0.61))
    rows = {row.method: row for row in summarize_study(study, records)}
    assert rows["partial"].config == 1 and rows["partial"].settings == {"optim.lr": 3e-5}
    assert rows["partial"].seeds == [1, 2, 3] and rows["partial"].dice is not None
    assert rows["partial"].dice.mean == pytest.approx(0.61)
    assert rows["udaiic"].versus_baseline is not None
    assert rows["udaiic"].versus_baseline.difference.mean == pytest.approx(0.7 - 0.61)
    assert rows["udaiic"].gap == pytest.approx((0.7 - 0.61) / (0.7 - 0.61))


def test_the_report_shows_how_far_validation_moves_across_each_grid(tmp_path: Path) -> None:
    study, keys = _grid_study(tmp_path)
    records = [
        _record(keys["partial-c0-50pct-s1"], 0.70, 0.90),
        _record(keys["partial-c0-50pct-s2"], 0.72, 0.92),
        _record(keys["partial-c1-50pct-s1"], 0.80, 0.60),
    ]
    records += [_record(k, 0.8, 0.7) for name, k in keys.items() if not name.startswith("partial")]
    rows = {row.method: row for row in summarize_study(study, records)}
    # configuration 1 has one of its two selection runs: it has no mean yet, and no spread
    assert rows["partial"].grid_val == [pytest.approx(0.71), None]
    assert math.isnan(rows["partial"].grid_spread) and rows["udaiic"].grid_val == []
    records.append(_record(keys["partial-c1-50pct-s2"], 0.82, 0.62))
    rows_list = summarize_study(study, records)
    rows = {row.method: row for row in rows_list}
    assert rows["partial"].grid_val == [pytest.approx(0.71), pytest.approx(0.81)]
    assert rows["partial"].grid_spread == pytest.approx(0.10)
    md = markdown(study, rows_list)
    assert "## How far validation moves across each grid" in md
    assert "| partial | 50 % | lr = 1e-05: 71.0; lr = 3e-05: 81.0 (chosen) | 10.0 |" in md


def test_the_report_shows_each_methods_validation_at_its_best_epoch_and_at_its_last(tmp_path: Path) -> None:
    study, keys = _grid_study(tmp_path)
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.file(RunDir.METRICS).write_text("epoch,val_dice/mean,seconds\n1,0.5,6\n2,0.8,6\n3,0.7,6\n")
    run.file(RunDir.REPORT).write_text(
        json.dumps(
            {"summary": {"dice": {"all": {"mean": {"mean": 0.6}}}, "hd95": {"all": {"mean": {"mean": 2.0}}}}}
        )
    )
    record = read_record(keys["udaiic-c0-50pct-s1"], run, tmp_path / "log", "done")
    assert (record.val_dice, record.last_val_dice) == (0.8, 0.7)
    # An nnU-Net run validates its final checkpoint only: its last row.
    run.file(RunDir.METRICS).write_text("epoch,val_dice/mean,seconds\n1,,6\n2,,6\n3,0.7,6\n")
    record = read_record(keys["udaiic-c0-50pct-s1"], run, tmp_path / "log", "done")
    assert (record.val_dice, record.last_val_dice) == (0.7, 0.7)
    run.file(RunDir.METRICS).write_text("epoch,val_dice/mean,seconds\n1,,6\n")
    record = read_record(keys["udaiic-c0-50pct-s1"], run, tmp_path / "log", "done")
    assert record.status == "failed" and "metrics.csv holds no validation DSC" in record.log

    records = [_record(k, 0.8, 0.7) for k in keys.values()]
    assert "## Validation at the best epoch" not in markdown(study, summarize_study(study, records))
    for r in records:
        r.last_val_dice = 0.75 if r.method == "udaiic" else 0.8
    records[-1].last_val_dice = math.nan  # left out of the table, best epoch and last alike
    assert (records[-1].method, records[-1].seed) == ("full", 3)
    rows = summarize_study(study, records)
    md = markdown(study, rows)
    assert "## Validation at the best epoch and at the last" in md and "nnU-Net" not in md
    assert "| udaiic | 50 % | 3 | 80.0 ± 0.0 [80.0, 80.0] | 75.0 ± 0.0 [75.0, 75.0] | +5.0 |" in md
    assert "| full | all | 2 | 80.0 ± 0.0 [80.0, 80.0] | 80.0 ± 0.0 [80.0, 80.0] | +0.0 |" in md


def test_the_report_keeps_the_held_out_seeds_apart_and_never_reports_an_unmade_choice(
    tmp_path: Path,
) -> None:
    study, keys = _grid_study(tmp_path)
    test = {  # test DSC per seed: partial's chosen configuration (c1), udaiic and full
        "partial": {1: 0.60, 2: 0.70, 3: 0.50},
        "udaiic": {1: 0.70, 2: 0.75, 3: 0.70},
        "full": {1: 0.90, 2: 0.90, 3: 0.90},
    }
    records = [_record(keys[f"partial-c0-50pct-s{s}"], 0.5, 0.99) for s in (1, 2)]
    records += [_record(keys[f"partial-c1-50pct-s{s}"], 0.8, test["partial"][s]) for s in (1, 2)]
    records += [
        _record(k, 0.8, test[k.method][k.seed]) for n, k in keys.items() if not n.startswith("partial")
    ]
    [later] = study.evaluation_runs(study.choose(records))
    records.append(_record(later, 0.8, test["partial"][3]))
    records[-1].test_hd95 = 0.0  # a perfect prediction: a distance, not a missing value
    rows = {row.method: row for row in summarize_study(study, records)}
    partial, udaiic = rows["partial"], rows["udaiic"]
    assert partial.dice is not None and partial.dice.mean == pytest.approx(0.6)
    assert udaiic.gap == pytest.approx((0.7166667 - 0.6) / (0.9 - 0.6), abs=1e-6)
    # Seed 3 alone: nothing was chosen on it.
    assert partial.held_out_dice is not None and partial.held_out_dice.mean == pytest.approx(0.5)
    assert udaiic.held_out_versus_baseline is not None
    assert udaiic.held_out_versus_baseline.difference.mean == pytest.approx(0.2)
    assert udaiic.held_out_gap == pytest.approx(0.5)
    assert partial.hd95 is not None and partial.hd95.n == 3 and partial.hd95.mean == pytest.approx(20 / 3)
    md = markdown(study, list(rows.values()))
    assert (
        "## Held out from the choice: seeds 3" in md and "| udaiic | 50 % | 1 | 70.0 | +20.0 | 50 % |" in md
    )
    assert "which that choice may flatter" in study.rule()

    # Without partial's seed-2 runs no configuration can be chosen, and none is reported.
    records = [r for r in records if r.name not in ("partial-c0-50pct-s2", "partial-c1-50pct-s2", later.name)]
    rows = {row.method: row for row in summarize_study(study, records)}
    assert rows["partial"].config is None and rows["partial"].dice is None
    assert "not chosen: selection runs unfinished" in markdown(study, list(rows.values()))


def test_the_gap_closed_is_taken_over_the_seeds_all_three_methods_finished(tmp_path: Path) -> None:
    study, keys = _grid_study(tmp_path)
    test = {"partial": {1: 0.4, 2: 0.8, 3: 0.6}, "full": {1: 0.9, 2: 0.9, 3: 0.9}}
    records = [
        _record(keys[f"partial-c{c}-50pct-s{s}"], 0.8 - 0.1 * c, test["partial"][s])
        for c in (0, 1)
        for s in (1, 2)
    ]
    records += [_record(keys[f"full-c0-all-s{s}"], 0.8, test["full"][s]) for s in (1, 2, 3)]
    [later] = study.evaluation_runs(study.choose(records))
    records.append(_record(later, 0.8, test["partial"][3]))
    records.append(_record(keys["udaiic-c0-50pct-s1"], 0.8, 0.5))  # udaiic finished seed 1 only
    udaiic = {row.method: row for row in summarize_study(study, records)}["udaiic"]
    assert udaiic.versus_baseline is not None and udaiic.versus_baseline.difference.mean == pytest.approx(0.1)
    # On seed 1: partial 0.4, full 0.9; partial's mean over three seeds (0.6) would make it -20 %.
    assert udaiic.gap == pytest.approx(0.2)
    assert math.isnan(udaiic.held_out_gap)  # seed 3, the held-out one, is not finished by udaiic


def test_an_hd95_over_fewer_seeds_than_the_dsc_says_so(tmp_path: Path) -> None:
    study, keys = _grid_study(tmp_path)
    records = [_record(k, 0.8 if k.config == 1 else 0.7, 0.6) for k in keys.values()]
    records += [_record(k, 0.8, 0.6) for k in study.evaluation_runs(study.choose(records))]
    for r in records:
        r.test_hd95 = 10.0
    udaiic = [r for r in records if r.method == "udaiic"]
    udaiic[0].test_hd95 = math.nan  # every structure missed: no distance
    md = markdown(study, summarize_study(study, records))
    assert "| udaiic | 50 % | 3 | 60.0 ± 0.0 [60.0, 60.0] | 10.0 ± 0.0 [10.0, 10.0] (2 of 3 seeds) |" in md
    assert "| full | all | 3 | 60.0 ± 0.0 [60.0, 60.0] | 10.0 ± 0.0 [10.0, 10.0] |" in md


def test_runs_tested_on_other_patients_than_the_baseline_are_not_paired(tmp_path: Path) -> None:
    study, keys = _grid_study(tmp_path)
    records = [_record(k, 0.8, 0.6) for n, k in keys.items() if not n.startswith("udaiic")]
    records += [_record(keys[f"udaiic-c0-50pct-s{s}"], 0.8, 0.6 + 0.1 * s) for s in (1, 2, 3)]
    records += [_record(r, 0.8, 0.6) for r in study.evaluation_runs(study.choose(records))]
    for r in records:
        r.split = "other patients" if r.name == "udaiic-c0-50pct-s2" else "same patients"
    rows = {row.method: row for row in summarize_study(study, records)}
    difference = rows["udaiic"].versus_baseline
    assert rows["udaiic"].unpaired == [2] and difference is not None
    assert difference.difference.n == 2 and difference.difference.mean == pytest.approx(0.2)  # seeds 1, 3
    expected = (
        "Not paired with partial, because the runs of a seed were validated or tested on different "
        "patients (their recipes' data differ): udaiic at 50 %: seeds 2."
    )
    assert expected in markdown(study, list(rows.values()))


def test_the_pairs_a_study_file_names_are_compared_seed_by_seed(tmp_path: Path) -> None:
    _recipes(tmp_path)
    text = (
        'compare = [["mi", "udaiic"], ["mi", "full"]]\n'
        + GRID_STUDY
        + '[methods.mi]\nrecipe = "udaiic.toml"\n'
    )
    study = Study(load_study(_study_file(tmp_path, text)), tmp_path / "study.toml")
    keys = {k.name: k for k in study.selection_runs()}
    test = {"udaiic": {1: 0.70, 2: 0.60, 3: 0.80}, "mi": {1: 0.75, 2: 0.70, 3: 0.75}}
    records = [_record(k, 0.8, test[k.method][k.seed] if k.method in test else 0.5) for k in keys.values()]
    records += [_record(k, 0.8, 0.5) for k in study.evaluation_runs(study.choose(records))]
    rows = summarize_study(study, records)
    [comparison] = compare_methods(study, records, rows)  # mi and full share no labelled amount
    assert (comparison.method, comparison.versus, comparison.amount) == ("mi", "udaiic", "50pct")
    assert comparison.difference is not None and comparison.difference.difference.n == 3
    assert comparison.difference.difference.mean == pytest.approx((0.05 + 0.10 - 0.05) / 3)
    assert comparison.held_out_difference is not None
    assert comparison.held_out_difference.difference.mean == pytest.approx(-0.05)  # seed 3 alone
    md = markdown(study, rows, [comparison])
    assert "## Paired comparisons" in md and "| mi | udaiic | 50 % | 3 | +3.3 [" in md
    assert md.rstrip().endswith("| 1 | -5.0 |")
    for bad, message in (
        ('[["mi", "nope"]]', "'nope' is not one of the methods"),
        ('[["mi", "mi"]]', "with itself"),
    ):
        path = _study_file(tmp_path, text.replace('[["mi", "udaiic"], ["mi", "full"]]', bad))
        with pytest.raises(RecipeError, match=message):
            load_study(path)


def test_the_report_tests_each_method_at_its_last_checkpoint_too(tmp_path: Path) -> None:
    """A mireg run is tested at its best epoch and at its last; an nnU-Net run keeps its final
    checkpoint only, so its last is its test. The compared pairs are also paired at the last."""
    study, keys = _grid_study(tmp_path)
    key = keys["udaiic-c0-50pct-s1"]
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.file(RunDir.METRICS).write_text("epoch,val_dice/mean,seconds\n1,0.5,6\n2,0.8,6\n")

    def report(name: str, dice: float) -> None:
        summary = {"dice": {"all": {"mean": {"mean": dice}}}, "hd95": {"all": {"mean": {"mean": 2.0}}}}
        run.file(name).write_text(json.dumps({"summary": summary}))

    report(RunDir.REPORT, 0.6)
    assert math.isnan(read_record(key, run, tmp_path / "log", "done").last_test_dice)  # not tested
    report("report_test_last.json", 0.55)
    assert read_record(key, run, tmp_path / "log", "done").last_test_dice == 0.55
    run.file("report_test_last.json").write_text("{}")
    record = read_record(key, run, tmp_path / "log", "done")
    assert record.status == "failed" and "unreadable results" in record.log
    run.file("report_test_last.json").unlink()
    (run.path / "nnunet").mkdir()  # trained by nnU-Net: its final checkpoint is the one tested
    assert read_record(key, run, tmp_path / "log", "done").last_test_dice == 0.6

    _recipes(tmp_path)
    text = 'compare = [["mi", "udaiic"]]\n' + GRID_STUDY + '[methods.mi]\nrecipe = "udaiic.toml"\n'
    study = Study(load_study(_study_file(tmp_path, text)), tmp_path / "study.toml")
    selection = {k.name: k for k in study.selection_runs()}
    test = {"udaiic": {1: 0.70, 2: 0.60, 3: 0.80}, "mi": {1: 0.75, 2: 0.70, 3: 0.75}}
    records = [_record(k, 0.8, test.get(k.method, {}).get(k.seed, 0.5)) for k in selection.values()]
    records += [_record(k, 0.8, 0.5) for k in study.evaluation_runs(study.choose(records))]
    md = markdown(study, summarize_study(study, records), compare_methods(study, records, []))
    assert "## Tested at the best epoch and at the last" not in md  # no run tested its last
    for r in records:
        if r.method in test:  # each one point below its best epoch's, but mi's seed 3 not tested
            r.last_test_dice = math.nan if (r.method, r.seed) == ("mi", 3) else r.test_dice - 0.01
    rows = summarize_study(study, records)
    [comparison] = compare_methods(study, records, rows)
    assert comparison.last_difference is not None and comparison.last_difference.difference.n == 2
    assert comparison.last_difference.difference.mean == pytest.approx((0.05 + 0.10) / 2)  # seeds 1, 2
    md = markdown(study, rows, [comparison])
    assert "## Tested at the best epoch and at the last" in md and "nnU-Net" not in md
    assert "| udaiic | 50 % | 3 | 70.0 ± 10.0 [45.2, 94.8] | 69.0 ± 10.0 [44.2, 93.8] | +1.0 |" in md
    assert "| mi | 50 % | 2 | 72.5 ± 3.5 [40.7, 104.3] | 71.5 ± 3.5 [39.7, 103.3] | +1.0 |" in md
    assert "| mi | udaiic | 50 % | 2 | +7.5 [" in md.split("## Tested at the best epoch")[1]
    assert "| partial |" not in md.split("## Tested at the best epoch")[1]  # nothing tested at last


def test_the_full_method_trains_with_every_label_and_amounts_do_not_repeat(tmp_path: Path) -> None:
    _recipes(tmp_path)
    text = GRID_STUDY.replace(
        'recipe = "full.toml"\n', 'recipe = "full.toml"\nset = ["data.labeled_ratio=0.1"]\n'
    )
    study = Study(load_study(_study_file(tmp_path, text)), tmp_path / "study.toml")
    [full] = [k for k in study.selection_runs() if k.method == "full" and k.seed == 1]
    assert study.recipe(full)["data"]["labeled_ratio"] == 1.0
    with pytest.raises(RecipeError, match="the labelled amounts repeat"):
        load_study(
            _study_file(tmp_path, GRID_STUDY.replace("labeled_ratios = [0.5]", "labeled_ratios = [0.5, 0.5]"))
        )


def test_a_configuration_missing_a_selection_run_does_not_compete(tmp_path: Path) -> None:
    study, keys = _grid_study(tmp_path)
    records = [
        _record(keys["partial-c0-50pct-s1"], 0.5, 0.5),
        _record(keys["partial-c0-50pct-s2"], 0.5, 0.5),
        _record(keys["partial-c1-50pct-s1"], 0.9, 0.9),
    ]
    records.append(RunRecord("partial-c1-50pct-s2", "partial", 1, "50pct", 2, "failed"))
    assert study.choose(records) == {("partial", "50pct"): 0}


def _finished_run(run: Path, val: float, seconds: float, epochs: int = 4, test: float = 0.123456) -> None:
    """The files ``mireg train`` leaves in a finished run that a study reads (test DSC 12.3456 %
    unless ``test`` says otherwise)."""
    run.mkdir(parents=True)
    rows = "".join(f"{e},{val},{seconds / epochs}\n" for e in range(1, epochs + 1))
    (run / "metrics.csv").write_text("epoch,val_dice/mean,seconds\n" + rows)
    summary = {"dice": {"all": {"mean": {"mean": test}}}, "hd95": {"all": {"mean": {"mean": 9.87}}}}
    (run / "report.json").write_text(json.dumps({"summary": summary}))


def test_a_run_trained_by_another_engine_than_the_study_file_now_names_is_not_reused(tmp_path: Path) -> None:
    study, keys = _grid_study(tmp_path)
    mine, theirs = keys["udaiic-c0-50pct-s1"], keys["udaiic-c0-50pct-s2"]
    _finished_run(study.run_dir(mine).path, 0.8, 60)
    assert study.state(mine)[0] == "done"
    text = GRID_STUDY.replace('recipe = "udaiic.toml"', 'recipe = "udaiic.toml"\nengine = "nnunet"')
    switched = Study(load_study(_study_file(tmp_path, text)), tmp_path / "study.toml")
    with pytest.raises(
        MiregError, match="trained by mireg, but the study file now has udaiic trained by nnunet"
    ):
        switched.state(mine)
    # The other way round: an nnU-Net run (its tree, or its metrics once archived) under a mireg method.
    (switched.run_dir(theirs).path / "nnunet").mkdir(parents=True)
    switched.state(theirs)  # the engine that trained it: no complaint
    with pytest.raises(
        MiregError, match="trained by nnunet, but the study file now has udaiic trained by mireg"
    ):
        study.state(theirs)
    (switched.run_dir(theirs).path / "nnunet").rmdir()
    (switched.run_dir(theirs).path / "metrics.csv").write_text("epoch,step,nnunet/val_loss,val_dice/mean\n")
    with pytest.raises(MiregError, match="trained by nnunet"):
        study.state(theirs)


def _stopped_run(run: Path, rows: str) -> None:
    """A run stopped at a checkpoint after the epochs ``rows`` (lines of epoch, val DSC, seconds)."""
    run.mkdir()
    (run / "last.pt").write_bytes(b"checkpoint")
    (run / "metrics.csv").write_text("epoch,val_dice/mean,seconds\n" + rows)


def test_an_archive_holds_the_finished_runs_without_checkpoints_and_a_study_reuses_it(
    cli, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    _recipes(tmp_path, epochs=4)
    path = _study_file(tmp_path, GRID_STUDY)
    out = tmp_path / "out" / "s"
    result = cli("study", path, "--archive", tmp_path / "kept")
    assert result.code == 0 and "no run of s has finished yet: nothing archived" in result.out
    assert not (tmp_path / "kept").exists()
    finished = out / "runs" / "partial-c0-50pct-s1"
    _finished_run(finished, 0.80, 120)
    key = RunKey("partial", 0, Study(load_study(path), path).amounts[0], 1)
    planned = Study(load_study(path), path).recipe_text(key)
    (out / "recipes").mkdir()
    (out / "recipes" / "partial-c0-50pct-s1.toml").write_text(planned)  # as the study wrote it
    (finished / "best.pt").write_bytes(b"checkpoint")
    (finished / "curves.png").write_bytes(b"plot")
    (finished / "nnunet" / "results").mkdir(parents=True)
    (out / "logs").mkdir()
    (out / "logs" / "partial-c0-50pct-s1.log").write_text("trained\n")
    stopped = out / "runs" / "partial-c1-50pct-s1"
    stopped.mkdir()
    (stopped / "last.pt").write_bytes(b"checkpoint")
    (stopped / "metrics.csv").write_text("epoch,val_dice/mean,seconds\n1,0.5,30\n")

    result = cli("study", path, "--archive", tmp_path / "kept")
    assert result.code == 0, result.err
    assert "archived 1 finished run of s" in result.out and "1 run not finished left out" in result.out
    kept = tmp_path / "kept" / "s"
    assert [p.name for p in (kept / "runs").iterdir()] == ["partial-c0-50pct-s1"]
    assert sorted(p.name for p in (kept / "runs" / "partial-c0-50pct-s1").iterdir()) == [
        "metrics.csv",
        "report.json",
    ]
    assert (kept / "logs" / "partial-c0-50pct-s1.log").read_text() == "trained\n"
    assert [p.name for p in (kept / "recipes").iterdir()] == ["partial-c0-50pct-s1.toml"]
    assert (kept / "recipes" / "partial-c0-50pct-s1.toml").read_text() == planned
    assert (finished / "best.pt").is_file() and (stopped / "last.pt").is_file()  # the study is untouched

    for inside in (tmp_path / "out", out / "runs"):
        result = cli("study", path, "--archive", inside)
        assert result.code == 1 and "the study's own folder" in result.err
    (tmp_path / "file").write_text("")
    result = cli("study", path, "--archive", tmp_path / "file")
    assert result.code == 1 and "cannot archive the study there" in result.err
    assert "Traceback" not in result.err

    # A swap cut short (the archive's copy set aside, the new one not in place yet) is undone, and an
    # archive again leaves no half-copied folder behind.
    archived = kept / "runs" / "partial-c0-50pct-s1"
    archived.rename(archived.with_name(".partial-c0-50pct-s1.old"))
    (kept / "runs" / ".partial-c0-50pct-s1.partial").mkdir()
    assert cli("study", path, "--archive", tmp_path / "kept").code == 0
    assert [p.name for p in (kept / "runs").iterdir()] == ["partial-c0-50pct-s1"]

    shutil.rmtree(out)  # another machine: the study starts from the archive
    shutil.copytree(kept, out)
    result = cli("study", path, "--plan")
    assert result.code == 0, result.err
    lines = [" ".join(line.split()) for line in result.out.splitlines()]
    assert "partial 50 % 2 1 0 3" in lines  # 2 configurations: 1 finished, none to resume, 3 to train


def test_a_study_goes_on_on_another_device_but_not_with_another_recipe(tmp_path: Path) -> None:
    """Where a run trains (``--device``) is not what it is: the recipes a study wrote on the CPU are
    still its runs on a GPU box; any other change is refused."""
    study, keys = _grid_study(tmp_path)
    key = keys["partial-c0-50pct-s1"]
    written = study.recipe_file(key)
    written.parent.mkdir(parents=True)
    written.write_text(study.recipe_text(key))
    elsewhere = Study(study.spec, study.source, device="cuda")
    assert 'device = "cuda"' in elsewhere.recipe_text(key) and 'device = "cpu"' in written.read_text()
    _finished_run(elsewhere.run_dir(key).path, 0.8, 60)
    launch_of(elsewhere, key)  # a finished run keeps the recipe it trained on
    assert 'device = "cpu"' in written.read_text()
    later = keys["partial-c1-50pct-s1"]
    assert 'device = "cuda"' in launch_of(elsewhere, later).recipe.read_text()  # a new run: the GPU
    written.write_text(written.read_text().replace("lr = 1e-05", "lr = 0.001"))
    with pytest.raises(MiregError, match="the study file changed since this run was planned"):
        elsewhere.recipe_text(key)


def test_the_plan_shows_where_a_study_stands_without_training_or_reading_test(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _recipes(tmp_path, epochs=4)
    full_grid = '[methods.full]\nrecipe = "full.toml"\n[methods.full.grid]\n"optim.lr" = [1e-5, 3e-5]\n'
    path = _study_file(tmp_path, GRID_STUDY.replace('[methods.full]\nrecipe = "full.toml"\n', full_grid))
    runs = tmp_path / "out" / "s" / "runs"
    _finished_run(runs / "partial-c0-50pct-s1", 0.80, 120)
    _finished_run(runs / "partial-c1-50pct-s1", 0.90, 120)
    _finished_run(runs / "partial-c0-50pct-s2", 0.70, 120)
    resumed = runs / "partial-c1-50pct-s2"
    _stopped_run(resumed, "1,0.5,30\n2,0.6,30\n")

    result = cli("study", path, "--plan")
    assert result.code == 0, result.err
    lines = [" ".join(line.split()) for line in result.out.splitlines()]
    assert "selection, seeds 1, 2, 3" in lines and "evaluation of the configuration chosen, seeds 3" in lines
    assert "partial 50 % 2 3 1 0" in lines  # selection: 2 configurations, 3 finished, 1 to resume
    assert "udaiic 50 % 1 0 0 3" in lines and "full all 2 0 0 4" in lines
    assert "partial 50 % not chosen yet 0 0 1" in lines  # evaluation on seed 3
    assert "full all not chosen yet 0 0 1" in lines
    assert "partial c0: lr = 1e-05 75.0" in lines  # validation DSC at 50 %, nothing at "all"
    assert "partial c1: lr = 3e-05 90.0 (1 of 2)" in lines
    assert "full c0: lr = 1e-05 (0 of 2)" in lines  # full trains at "all" only
    # 2 min per finished run: half of one, seven more, and the two evaluation runs left.
    assert "about 19 min of training left at 1 run at a time" in result.out
    # udaiic and full have no finished run: their minutes are a guess, and the plan says so.
    assert "full, udaiic: none finished yet, counted at the finished runs' median" in " ".join(lines)
    assert "12.3" not in result.out and "9.9" not in result.out  # no test number
    assert not list((tmp_path / "out" / "s").glob("recipes/*"))  # nothing written

    shutil.rmtree(resumed)
    _finished_run(resumed, 0.85, 120)
    result = cli("study", path, "--plan", "--jobs", "3")
    lines = [" ".join(line.split()) for line in result.out.splitlines()]
    assert "partial c1: lr = 3e-05 87.5 chosen" in lines
    assert "partial 50 % c1 0 0 1" in lines
    assert "about 6 min of training left at 3 runs at a time" in result.out  # 9 runs x 2 min over 3

    # A recipe the study wrote earlier that differs from today's: refused, as running would be.
    (tmp_path / "out" / "s" / "recipes").mkdir()
    key = RunKey("partial", 0, Study(load_study(path), path).amounts[0], 1)
    (tmp_path / "out" / "s" / "recipes" / f"{key.name}.toml").write_text("old recipe")
    result = cli("study", path, "--plan")
    assert result.code == 1 and "the study file changed since this run was planned" in result.err

    # Without a grid there is nothing to choose: one phase over every seed.
    gridless = _study_file(
        tmp_path,
        'name = "g"\nseeds = [1, 2]\nlabeled_ratios = [0.5]\n[methods.partial]\nrecipe = "partial.toml"\n'
        '[methods.full]\nrecipe = "full.toml"\n',
    )
    result = cli("study", gridless, "--plan")
    lines = [" ".join(line.split()) for line in result.out.splitlines()]
    assert result.code == 0 and "seeds 1, 2" in lines and not any("selection" in line for line in lines)
    study = Study(load_study(gridless), gridless)
    assert study.rule().startswith("No method has a grid: nothing is chosen")
    records = [_record(k, 0.8, 0.7) for k in study.selection_runs()]
    md = markdown(study, summarize_study(study, records))
    assert "| val DSC (%) | min / run |" in md and "chosen on validation" not in md


def test_an_interim_report_shows_test_numbers_only_of_configurations_chosen_on_validation(
    cli, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    _recipes(tmp_path, epochs=4)
    path = _study_file(tmp_path, GRID_STUDY)
    out = tmp_path / "out" / "s"
    result = cli("study", path, "--interim")
    assert result.code == 0 and "no run of s has finished yet: no interim report" in result.out
    assert not list(out.glob("interim.*"))

    runs = out / "runs"
    _finished_run(runs / "partial-c0-50pct-s1", 0.60, 120, test=0.401)
    _finished_run(runs / "partial-c0-50pct-s2", 0.60, 120, test=0.402)
    _finished_run(runs / "partial-c1-50pct-s1", 0.90, 120, test=0.501)
    _finished_run(runs / "udaiic-c0-50pct-s1", 0.70, 120, test=0.551)
    _finished_run(runs / "udaiic-c0-50pct-s2", 0.70, 120, test=0.552)
    _finished_run(runs / "full-c0-all-s1", 0.95, 120, test=0.901)
    result = cli("study", path, "--interim")
    assert result.code == 0, result.err
    md = (out / "interim.md").read_text()
    assert md.startswith("# Study s: interim\n\nInterim: 6 of 11 runs finished.")
    # c0's selection runs all finished, c1's not: no choice yet, so neither shows a test number
    # (the configuration complete so far is not taken for the choice).
    assert "not chosen: selection runs unfinished" in md
    assert "40.1" not in md and "40.2" not in md and "50.1" not in md
    assert "55.2 ± 0.1" in md and "90.1" in md  # udaiic's two seeds, full's one
    data = json.loads((out / "interim.json").read_text())
    assert data["interim"].startswith("Interim: 6 of 11") and len(data["runs"]) == 6
    assert sorted(p.name for p in out.glob("interim.*")) == [
        "interim.csv",
        "interim.json",
        "interim.md",
        "interim.png",
    ]
    assert not (out / "study.md").exists() and not (out / "recipes").exists()  # nothing else written

    _finished_run(runs / "partial-c1-50pct-s2", 0.80, 120, test=0.502)  # c1 chosen: 85 against 60
    result = cli("study", path, "--interim")
    assert result.code == 0, result.err
    assert "7 of 11 runs finished" in result.out
    lines = [" ".join(line.split()) for line in (out / "interim.md").read_text().splitlines()]
    partial = next(line for line in lines if line.startswith("| partial | 50 % | 2 |"))  # the first table
    assert "50.2 ± 0.1" in partial and "lr = 3e-05" in partial and "40.1" not in " ".join(lines)
    udaiic = next(line for line in lines if line.startswith("| udaiic | 50 % | 2 |"))
    assert "+5.0" in udaiic  # paired with partial's chosen configuration on seeds 1 and 2

    assert cli("study", path, "--archive", tmp_path / "kept").code == 0
    assert (tmp_path / "kept" / "s" / "interim.md").read_text() == (out / "interim.md").read_text()
    for flags in (("--plan", "--interim"), ("--interim", "--archive", str(tmp_path / "kept"))):
        result = cli("study", path, *flags)
        assert result.code == 2 and "each train nothing: give one" in result.err
    # What only training uses is named when given with them, not ignored.
    for flags, name in (
        (("--interim", "--jobs", "2"), "--jobs: has no effect with --interim"),
        (
            ("--archive", str(tmp_path / "kept"), "--order", "methods"),
            "--order: has no effect with --archive",
        ),
        (("--plan", "--order", "seeds"), "--order: has no effect with --plan"),
        (("--interim", "--executor", "slurm"), "--executor: has no effect with --interim"),
        # A Slurm option without --executor slurm: the study would train here, not on the cluster.
        (("--partition", "gpu"), "--partition: is an option of --executor slurm, which was not given"),
        (("--interim", "--time", "4:00:00"), "--time: is an option of --executor slurm"),
    ):
        result = cli("study", path, *flags)
        assert result.code == 2 and name in " ".join(result.err.split()), flags


def test_the_time_left_counts_a_method_with_no_finished_run_from_its_stopped_runs_epochs(
    cli, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    _recipes(tmp_path, epochs=4)
    path = _study_file(tmp_path, GRID_STUDY)
    runs = tmp_path / "out" / "s" / "runs"
    for name in ("partial-c0-50pct-s1", "partial-c1-50pct-s1", "partial-c0-50pct-s2", "partial-c1-50pct-s2"):
        _finished_run(runs / name, 0.8, 120)
    _stopped_run(runs / "udaiic-c0-50pct-s1", "1,0.5,300\n")

    result = cli("study", path, "--plan")
    assert result.code == 0, result.err
    out = " ".join(result.out.split())
    # udaiic: a quarter of a run took 5 min, so 20 min a run: 15 + 20 + 20 left; partial: its
    # evaluation run, 2 min; full: nothing trained, at the finished runs' mean, 3 x 2 min.
    assert "about 1 h 03 min of training left at 1 run at a time" in out
    assert "udaiic: none finished yet, counted from the epochs trained so far" in out
    assert "full: none finished yet, counted at the finished runs' median" in out


def test_the_time_left_is_counted_from_the_median_run_so_one_slowed_down_run_does_not_stand_for_all(
    cli, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A run that shared the machine with other work took ten times as long as its siblings: the
    estimate follows the typical run, not the mean the slow one drags up (10 min a run)."""
    _recipes(tmp_path, epochs=4)
    path = _study_file(tmp_path, GRID_STUDY)
    runs = tmp_path / "out" / "s" / "runs"
    _finished_run(runs / "partial-c0-50pct-s1", 0.8, 120)
    _finished_run(runs / "partial-c1-50pct-s1", 0.8, 120)
    _finished_run(runs / "partial-c0-50pct-s2", 0.8, 1200)

    result = cli("study", path, "--plan")
    assert result.code == 0, result.err
    out = " ".join(result.out.split())
    # partial: 1 selection and 1 evaluation run left at 2 min; udaiic and full, 3 runs each at the
    # median of every finished run, 2 min: 8 runs x 2 min (the mean, 8 min a run, would say 1 h 04).
    assert "about 16 min of training left at 1 run at a time" in out


def test_the_time_left_is_counted_from_the_runs_finished_on_the_machine_the_study_trains_on(
    cli, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Runs finished on a machine twice as slow (or on a GPU) do not stand for this one's, where any
    run finished here: the study went on from a copy of another machine's runs."""
    _recipes(tmp_path, epochs=4)
    path = _study_file(tmp_path, GRID_STUDY)
    runs = tmp_path / "out" / "s" / "runs"
    here = local_executor(None, 1).machine
    for name, seconds, machine in (
        ("partial-c0-50pct-s1", 1200, "Slower CPU, 1 thread"),
        ("partial-c1-50pct-s1", 1200, "Slower CPU, 1 thread"),
        ("partial-c0-50pct-s2", 120, here),
    ):
        _finished_run(runs / name, 0.8, seconds)
        (runs / name / "versions.json").write_text(json.dumps({"mireg": "0", "machine": machine}))
    assert (
        read_record(
            RunKey("partial", 0, Study(load_study(path), path).amounts[0], 2),
            RunDir(runs / "partial-c0-50pct-s2"),
            tmp_path / "log",
            "done",
        ).machine
        == here
    )

    result = cli("study", path, "--plan")
    assert result.code == 0, result.err
    out = " ".join(result.out.split())
    # Every run left at the 2 min of the one finished here, not the 20 of the two finished elsewhere
    # (their median with it, 20 min, would say 2 h 40): 8 runs x 2 min.
    assert "about 16 min of training left at 1 run at a time" in out
    assert f'from the minutes the finished runs took on this machine, "{here}"' in out

    # None finished here: every machine's runs count.
    slower = json.dumps({"mireg": "0", "machine": "Slower CPU, 1 thread"})
    (runs / "partial-c0-50pct-s2" / "versions.json").write_text(slower)
    result = cli("study", path, "--plan")
    out = " ".join(result.out.split())
    assert "about 2 h 40 min of training left at 1 run at a time" in out
    assert f'the finished runs took, none known to have trained on this machine, "{here}"' in out


class _InstantExecutor(Executor):
    """Ends each run the moment it starts: finished (configuration 1 above configuration 0 on
    validation), or failed for the runs named ``failing``; keeps the order the runs started in."""

    def __init__(self, capacity: int, failing: tuple[str, ...] = ()) -> None:
        super().__init__(capacity)
        self.failing = failing
        self.started: list[str] = []

    def start(self, launch: Launch, arguments: list[str], slot: int) -> Launch:
        self.started.append(launch.name)
        if launch.name not in self.failing:
            _finished_run(launch.run, 0.8 if "-c1-" in launch.name else 0.7, 60)
        return launch

    def poll(self, handles: Mapping[str, object]) -> dict[str, Ending]:
        return {name: Ending("failed" if name in self.failing else "done") for name in handles}

    def stop(self, handles: Mapping[str, object]) -> str:
        return ""


def test_a_methods_chosen_configuration_trains_as_soon_as_its_selection_runs_ended(tmp_path: Path) -> None:
    study, keys = _grid_study(tmp_path)
    executor = _InstantExecutor(1)
    records = run_study(study, executor)
    # Seed by seed, and partial's chosen configuration ahead of the seed-2 and seed-3 runs still to go.
    assert executor.started == [
        "partial-c0-50pct-s1",
        "partial-c1-50pct-s1",
        "udaiic-c0-50pct-s1",
        "full-c0-all-s1",
        "partial-c0-50pct-s2",
        "partial-c1-50pct-s2",
        "partial-c1-50pct-s3",
        "udaiic-c0-50pct-s2",
        "full-c0-all-s2",
        "udaiic-c0-50pct-s3",
        "full-c0-all-s3",
    ]
    # The records come in plan order whatever the order the runs trained in.
    assert [r.name for r in records] == [*keys, "partial-c1-50pct-s3"]
    assert {r.status for r in records} == {"done"}


def test_a_run_folder_the_study_will_not_touch_fails_that_run_and_the_study_goes_on(tmp_path: Path) -> None:
    study, keys = _grid_study(tmp_path)
    # udaiic seed 1 holds a file a run writes after its first checkpoint, but no checkpoint.
    held = study.run_dir(keys["udaiic-c0-50pct-s1"]).path
    held.mkdir(parents=True)
    (held / "curves.png").write_bytes(b"not mine to delete")
    # partial c0 seed 1 was stopped while writing its first checkpoint: best.pt, no last.pt.
    cut = study.run_dir(keys["partial-c0-50pct-s1"]).path
    cut.mkdir(parents=True)
    (cut / "metrics.csv").write_text("epoch,val_dice/mean\n1,0.5\n")
    (cut / "best.pt").write_bytes(b"half")
    executor = _InstantExecutor(1)
    records = {r.name: r for r in run_study(study, executor)}
    failed = records["udaiic-c0-50pct-s1"]
    assert failed.status == "failed" and "no checkpoint; not touching it" in failed.log
    assert (held / "curves.png").read_bytes() == b"not mine to delete"
    assert "udaiic-c0-50pct-s1" not in executor.started and "partial-c0-50pct-s1" in executor.started
    assert records["partial-c0-50pct-s1"].status == "done" and not (cut / "best.pt").exists()
    assert sum(r.status == "done" for r in records.values()) == len(records) - 1


def test_a_failed_selection_run_settles_the_choice_as_the_running_study_made_it(tmp_path: Path) -> None:
    study, keys = _grid_study(tmp_path)
    executor = _InstantExecutor(1, failing=("partial-c1-50pct-s2",))
    run_study(study, executor)
    # Configuration 1 (better on validation) failed a selection run: the study chose configuration 0.
    assert "partial-c0-50pct-s3" in executor.started
    marker = study.failed_file(keys["partial-c1-50pct-s2"])
    assert marker.is_file()
    # --plan, --interim, --archive and a follow-up see the choice the study made, and the failure.
    plan, records = study.standing()
    assert study.choose(records, settled=True) == {("partial", "50pct"): 0}
    assert all(r.config is not None for r in plan) and sum(r.state == "done" for r in plan) == len(plan) - 1
    assert [(r.config, r.seed) for r in plan if r.failed] == [(1, 2)]
    interim = write_interim_report(study).paths[0].read_text()
    assert "Runs that did not finish (1)" in interim and "partial-c1-50pct-s2" in interim
    # Run again, the failed run is tried again; it finishes, and the choice is made anew.
    again = _InstantExecutor(1)
    run_study(study, again)
    assert again.started == ["partial-c1-50pct-s2", "partial-c1-50pct-s3"] and not marker.exists()
    plan, records = study.standing()
    assert study.choose(records, settled=True) == {("partial", "50pct"): 1} and not any(
        r.failed for r in plan
    )


def test_each_amounts_choice_is_made_when_its_own_selection_runs_ended_and_queued_in_turn(
    tmp_path: Path,
) -> None:
    _recipes(tmp_path)
    text = (
        GRID_STUDY.replace("seeds = [1, 2, 3]", "seeds = [1, 2, 3, 4]")
        .replace("labeled_ratios = [0.5]", "labeled_ratios = [0.25, 0.5]")
        .replace("[methods.full]", '[methods.udaiic.grid]\n"optim.lr" = [1e-5, 3e-5]\n[methods.full]')
    )
    study = Study(load_study(_study_file(tmp_path, text)), tmp_path / "study.toml")
    executor = _InstantExecutor(4, failing=("partial-c1-25pct-s2",))
    records = run_study(study, executor, order="methods")
    # Four at a time: both amounts' choices are made as seed 2's runs end together, and their
    # evaluation runs start in the order the choices were made, before udaiic's first run.
    assert executor.started[:13] == [
        *(f"partial-c{c}-{a}pct-s{s}" for s in (1, 2) for a in (25, 50) for c in (0, 1)),
        "partial-c0-25pct-s3",
        "partial-c0-25pct-s4",
        "partial-c1-50pct-s3",
        "partial-c1-50pct-s4",
        "udaiic-c0-25pct-s1",
    ]
    selection = [r for r in records if r.seed in (1, 2)]
    chosen = study.choose(selection)
    # Per amount: at 25 % configuration 1 failed a selection run, so configuration 0 goes on.
    assert chosen == {
        ("partial", "25pct"): 0,
        ("partial", "50pct"): 1,
        ("udaiic", "25pct"): 1,
        ("udaiic", "50pct"): 1,
    }
    assert [r.name for r in records] == [
        k.name for k in study.selection_runs() + study.evaluation_runs(chosen)
    ]
    assert len(executor.started) == len(set(executor.started)) == study.total_runs()


FOLLOW_STUDY = """
name = "f"
seeds = [1, 2]
labeled_ratios = [0.5]
set = ["train.epochs=8"]
[choices_from]
study = "study.toml"
[methods.partial]
chosen = "partial"
[methods.best]
chosen = ["udaiic", "partial"]
[methods.udaiic]
chosen = "udaiic"
[methods.full]
chosen = "full"
"""


def _without(recipe: dict[str, Any], *keys: str) -> dict[str, Any]:
    """``recipe`` without the ``section.key`` entries ``keys``."""
    copy = json.loads(json.dumps(recipe))
    for key in keys:
        section, name = key.split(".")
        copy[section].pop(name) if section != "top" else copy.pop(name)
    return copy


def test_a_study_trains_the_configurations_another_study_chose_on_validation(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _recipes(tmp_path)
    origin_file = _study_file(tmp_path, 'set = ["train.iterations_per_epoch=3"]\n' + GRID_STUDY)
    origin = Study(load_study(origin_file), origin_file)
    path = tmp_path / "follow.toml"
    path.write_text(f'runs_dir = "{tmp_path / "out"}"\n' + FOLLOW_STUDY)
    # Before the other study chose: every configuration it may choose validates, nothing of the
    # waiting methods trains; a method with nothing to choose (udaiic and full have no grid there)
    # needs no wait.
    waiting = Study(load_study(path), path)
    waiting.check()
    assert {m: (b.method, b.config) for m, b in waiting.borrowed.items()} == {
        "udaiic": ("udaiic", 0),
        "full": ("full", 0),
    }
    assert waiting.total_runs() == 8
    with pytest.raises(MiregError, match=r"has not chosen partial at 50 % yet: 0 of its 4 selection runs"):
        waiting.recipe(waiting.selection_runs()[0])
    assert [k.name for k in waiting.waiting_runs()] == [
        "partial-c0-50pct-s1", "best-c0-50pct-s1", "partial-c0-50pct-s2", "best-c0-50pct-s2",
    ]  # fmt: skip
    result = cli("study", path, "--plan")  # the waiting runs, and why they wait
    out = " ".join(result.out.split())
    assert result.code == 0 and "0 to resume, 4 to train, 4 waiting for choices not made yet: " in out
    assert "methods.partial.chosen: " in out and f"have finished in {origin.out}" in out
    assert not (tmp_path / "out" / "f").exists()

    # A selection run that failed there: the choice is taken as that study made it, the failed
    # configuration not competing (a deterministic failure must not hold the follow-up forever);
    # running that study again tries the failed run again.
    run_study(origin, _InstantExecutor(1, failing=("partial-c0-50pct-s2",)))
    taken = Study(load_study(path), path)
    assert "partial" not in taken.pending and taken.borrowed["partial"].config == 1
    run_study(origin, _InstantExecutor(1))  # validation DSC 0.8 for configuration 1, 0.7 for 0
    for seed, val in ((1, 0.95), (2, 0.9)):  # udaiic above partial's chosen 0.8 on validation
        shutil.rmtree(origin.run_dir(RunKey("udaiic", 0, origin.amounts[0], seed)).path)
        _finished_run(origin.run_dir(RunKey("udaiic", 0, origin.amounts[0], seed)).path, val, 60)
    study = Study(load_study(path), path)
    assert {m: (b.method, b.config) for m, b in study.borrowed.items()} == {
        "partial": ("partial", 1),
        "best": ("udaiic", 0),
        "udaiic": ("udaiic", 0),
        "full": ("full", 0),
    }
    assert study.borrowed["best"].score == pytest.approx(0.925)
    assert study.borrowed["partial"].score == pytest.approx(0.8)
    assert study.rule().startswith("Nothing is chosen in this study")
    rule = " ".join(study.rule().split())
    assert "partial: partial at optim.lr = 3e-05 (mean best-validation DSC 80.0 % there" in rule
    assert (
        "best: udaiic (mean best-validation DSC 92.5 % there over seeds 1, 2, the highest of udaiic, partial)"
        in rule
    )

    result = cli("study", path, "--plan")  # says what it takes from where
    assert result.code == 0 and "partial: partial at optim.lr = 3e-05" in " ".join(result.out.split())

    executor = _InstantExecutor(1)
    outcome = conduct(study, executor)
    assert executor.started == [
        "partial-c0-50pct-s1", "best-c0-50pct-s1", "udaiic-c0-50pct-s1", "full-c0-all-s1",
        "partial-c0-50pct-s2", "best-c0-50pct-s2", "udaiic-c0-50pct-s2", "full-c0-all-s2",
    ]  # fmt: skip
    assert {r.status for r in outcome.records} == {"done"}
    taken = json.loads((study.out / "study.json").read_text())["taken_from"]
    assert taken["study"] == str(origin_file)
    assert taken["methods"]["partial"] == {
        "method": "partial",
        "config": 1,
        "settings": {"optim.lr": 3e-5},
        "val_dice": pytest.approx(0.8),
    }
    # Each run's recipe is the other study's for the same configuration and seed (its overrides
    # included), with this study's own on top: here the epochs.
    for method, (there, config) in {
        "partial": ("partial", 1),
        "best": ("udaiic", 0),
        "full": ("full", 0),
    }.items():
        amount = study.amounts_of(method)[0]
        mine = study.recipe(RunKey(method, 0, amount, 2))
        theirs = origin.recipe(RunKey(there, config, amount, 2))
        assert mine["train"]["epochs"] == 8 and mine["train"]["iterations_per_epoch"] == 3
        assert _without(mine, "top.name", "train.runs_dir", "train.epochs") == _without(
            theirs, "top.name", "train.runs_dir", "train.epochs"
        )
    # Under --quick nothing is read: the first method listed, at its first configuration.
    quick = Study(load_study(path), path, quick=True)
    assert {m: (b.method, b.config) for m, b in quick.borrowed.items()} == {
        "partial": ("partial", 0),
        "best": ("udaiic", 0),
        "udaiic": ("udaiic", 0),
        "full": ("full", 0),
    }
    # The other study's file changed since its runs were planned: its choices are not taken.
    origin_file.write_text(
        origin_file.read_text().replace("iterations_per_epoch=3", "iterations_per_epoch=4")
    )
    with pytest.raises(MiregError) as info:
        Study(load_study(path), path)
    assert info.value.message.startswith(f"{path}: choices_from.study: ")
    assert "the study file changed" in info.value.message and "restore" in (info.value.hint or "")


def test_a_study_trains_the_methods_whose_choices_are_made_and_the_rest_waits(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mireg.study.workflow

    _recipes(tmp_path)
    origin_file = _study_file(tmp_path, 'set = ["train.iterations_per_epoch=3"]\n' + GRID_STUDY)
    origin = Study(load_study(origin_file), origin_file)
    path = tmp_path / "follow.toml"
    path.write_text(f'runs_dir = "{tmp_path / "out"}"\n' + FOLLOW_STUDY)
    executor = _InstantExecutor(1)
    monkeypatch.setattr(mireg.study.workflow, "local_executor", lambda device, jobs=None: executor)
    # A study whose every method waits (here the other study has a grid for full too) has nothing
    # to train: it says why and writes nothing.
    other = tmp_path / "other"
    other.mkdir()
    _recipes(other)
    other_file = _study_file(other, GRID_STUDY + '[methods.full.grid]\n"optim.lr" = [1e-5, 3e-5]\n')
    alone = other / "alone.toml"
    alone.write_text(
        f'runs_dir = "{other / "out"}"\nname = "g"\nseeds = [1]\nlabeled_ratios = [0.5]\n'
        '[choices_from]\nstudy = "study.toml"\n[methods.partial]\nchosen = "partial"\n'
        '[methods.full]\nchosen = "full"\n'
    )
    result = cli("study", alone)
    err = " ".join(result.err.split())
    assert result.code == 1 and "Traceback" not in err
    assert f"{alone}: methods.partial.chosen: {other_file} has not chosen partial" in err
    assert executor.started == [] and not (other / "out" / "g").exists()
    # With a method of its own beside them it trains that one, and takes nothing yet.
    alone.write_text(alone.read_text() + '[methods.mine]\nrecipe = "udaiic.toml"\n')
    mixed = Study(load_study(alone), alone)
    assert [k.name for k in mixed.waiting_runs()] == ["partial-c0-50pct-s1", "full-c0-all-s1"]
    assert "Taken from" not in mixed.rule()
    # partial and best wait for the other study's choice of partial; udaiic and full train now, and
    # the study says it is not complete, with an interim report of what it has.
    result = cli("study", path)
    err = " ".join(result.err.split())
    assert result.code == 1 and "Traceback" not in err
    assert "4 runs of f wait for choices not made yet: methods.partial.chosen: " in err
    assert f"methods.best.chosen: {origin_file} has not chosen udaiic at 50 % yet" in err
    assert f"mireg study {origin_file}" in err
    assert executor.started == [
        "udaiic-c0-50pct-s1", "full-c0-all-s1", "udaiic-c0-50pct-s2", "full-c0-all-s2",
    ]  # fmt: skip
    out = tmp_path / "out" / "f"
    assert not (out / "study.md").exists()
    interim = " ".join((out / "interim.md").read_text().split())
    assert "Waiting for choices not made yet (no run trained): methods.partial.chosen: " in interim
    printed = " ".join(result.out.split())
    assert "study f: 4 runs, 1 at a time" in printed
    assert "4 more wait for choices not made yet: methods.partial.chosen: " in printed
    result = cli("study", path, "--plan")  # what can train has; the waiting runs are not counted
    printed = " ".join(result.out.split())
    assert "4 finished, 0 to resume, 0 to train, 4 waiting" in printed
    assert "every run that can train has finished; 4 wait for choices not made yet" in printed
    # Once that study chose, the waiting runs train and the finished ones are reused.
    run_study(origin, _InstantExecutor(1))
    executor.started.clear()
    result = cli("study", path)
    assert result.code == 0, result.err
    assert executor.started == [
        "partial-c0-50pct-s1", "best-c0-50pct-s1", "partial-c0-50pct-s2", "best-c0-50pct-s2",
    ]  # fmt: skip
    assert (out / "study.md").is_file()


def test_a_study_that_takes_another_ones_choices_names_what_is_wrong(tmp_path: Path) -> None:
    _recipes(tmp_path)
    _study_file(tmp_path, GRID_STUDY)
    path = tmp_path / "follow.toml"

    def problem(text: str) -> str:
        path.write_text(text)
        with pytest.raises(RecipeError) as info:
            Study(load_study(path), path)
        return " ".join(info.value.message.split())

    edits = [  # (text to replace, its replacement, what the error says)
        ('"study.toml"', '"nope.toml"', "choices_from.study: "),
        ('["udaiic", "partial"]', '["udaiic", "nope"]', "methods.best.chosen: 'nope' is not a method of"),
        ('study = "study.toml"', 'study = "study.toml"\nat = 0.3', "choices_from.at: "),
        ('[choices_from]\nstudy = "study.toml"\n', "", "needs [choices_from]"),
        ('chosen = "full"', 'chosen = "full"\nrecipe = "full.toml"', "give recipe or chosen"),
        ('chosen = "full"', 'chosen = "full"\n[methods.full.grid]\n"optim.lr" = [1e-5]', "has no grid"),
        ('chosen = "full"', 'chosen = "full"\nengine = "mireg"', "leave engine out"),
        # The method with every label takes the other study's method with every label, and only it.
        ('chosen = "full"', 'chosen = "partial"', "full.chosen: 'partial' is not the method with every"),
        ('chosen = "udaiic"\n', 'chosen = "full"\n', "udaiic.chosen: 'full' is the method with every"),
        # Choices come from the study that made them, not from one that took them in turn.
        ('"study.toml"', '"follow.toml"', "takes its own choices from another study"),
    ]  # fmt: skip
    for old, new, message in edits:
        assert old in FOLLOW_STUDY
        assert message in problem(FOLLOW_STUDY.replace(old, new)), (old, new)


def test_the_follow_up_studies_train_the_strong_studys_methods_on_their_own_cohort_and_schedule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no runs of phantom_strong here, whatever this checkout holds
    studies = Path(__file__).parents[1] / "recipes" / "studies"
    unseen = Study(
        load_study(studies / "phantom_strong_unseen.toml"), studies / "phantom_strong_unseen.toml", quick=True
    )
    assert unseen.origin is not None and unseen.origin.source == studies / "phantom_strong.toml"
    assert unseen.engines("nnunet") == {"nnunet"} and unseen.engines("cps_strong") == {"mireg"}
    assert ("cps_strong", "nnunet") in unseen.compared()
    key = RunKey("nnunet", 0, unseen.amounts[0], 10)
    assert unseen.engine(key) == "nnunet"
    recipe = unseen.recipe(key)
    assert recipe["data"]["cohort_seed"] == 1 and recipe["data"]["labeled_ratio"] == 0.05
    for length, epochs in (("2x", 120), ("4x", 240)):
        path = studies / f"phantom_strong_{length}.toml"
        study = Study(load_study(path), path)
        assert study.spec.methods["best_semi"].candidates == ["cps_strong", "bcp_strong", "udaiic_strong"]
        assert set(study.seeds) == set(study.origin.held_out_seeds)  # type: ignore[union-attr]
        # Whichever configuration phantom_strong chooses, it trains at this study's length.
        key = RunKey("partial_strong", 0, study.amounts[0], 13)
        recipe = study._recipe(key, Borrowed("partial_strong", 1, math.nan))
        assert recipe["train"]["epochs"] == epochs and recipe["optim"]["lr"] == 0.003


def test_a_study_in_method_order_trains_each_methods_runs_together(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    study, keys = _grid_study(tmp_path)
    executor = _InstantExecutor(1)
    records = run_study(study, executor, order="methods")
    assert executor.started == [
        "partial-c0-50pct-s1",
        "partial-c1-50pct-s1",
        "partial-c0-50pct-s2",
        "partial-c1-50pct-s2",
        "partial-c1-50pct-s3",
        "udaiic-c0-50pct-s1",
        "udaiic-c0-50pct-s2",
        "udaiic-c0-50pct-s3",
        "full-c0-all-s1",
        "full-c0-all-s2",
        "full-c0-all-s3",
    ]
    assert [r.name for r in records] == [*keys, "partial-c1-50pct-s3"]
    # From the command line, on the runs now finished: every one reused, the report written.
    result = cli("study", tmp_path / "study.toml", "--order", "methods")
    assert result.code == 0, result.err
    assert "[5/11] s: partial-c1-50pct-s3 reused" in result.out  # in method order, as trained
    assert "[11/11] s: full-c0-all-s3 reused" in result.out
    assert (tmp_path / "out" / "s" / "study.md").is_file()
    result = cli("study", tmp_path / "study.toml", "--order", "random")
    assert result.code == 2 and "--order" in result.err


def test_bad_study_files_name_the_file_and_every_key(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = _study_file(
        tmp_path,
        'name = "s"\nseeds = [1]\nlabeled_ratios = [0.5]\nwieght = 1\n'
        '[methods.partial]\nrecipe = "partial.toml"\nsett = []\n',
    )
    with pytest.raises(RecipeError) as info:
        load_study(path)
    assert info.value.message.startswith(f"{path}: 2 problems")
    assert (
        "wieght: unknown key" in info.value.message
        and "methods.partial.sett: unknown key" in info.value.message
    )
    path = _study_file(
        tmp_path,
        'name = "s"\nseeds = [1, 1]\nlabeled_ratios = [0.5]\nbaseline = "nope"\n'
        '[methods.partial]\nrecipe = "partial.toml"\n',
    )
    with pytest.raises(RecipeError, match="seeds has duplicates"):
        load_study(path)
    result = cli("study", path)
    assert result.code == 1 and "seeds has duplicates" in result.err and "Traceback" not in result.err
    # An empty list of labelled amounts is named, not an IndexError later.
    path = _study_file(
        tmp_path, 'name = "s"\nseeds = [1]\nlabeled_patients = []\n[methods.partial]\nrecipe = "p.toml"\n'
    )
    result = cli("study", path)
    assert result.code == 1 and "labeled_patients" in result.err and "at least 1" in result.err
    assert "Traceback" not in result.err
    # A configuration whose recipe is wrong fails before anything trains, naming method and key.
    _recipes(tmp_path)
    path = _study_file(tmp_path, GRID_STUDY.replace("[1e-5, 3e-5]", "[1e-5, -1.0]"))
    result = cli("study", path)
    assert result.code == 1 and "methods.partial (configuration 1)" in result.err
    assert "optim.lr" in result.err and not (tmp_path / "out").exists()
    # So does a method whose recipe file is missing, or an override that is not key.path=value.
    path = _study_file(tmp_path, GRID_STUDY.replace('recipe = "udaiic.toml"', 'recipe = "udaiik.toml"'))
    result = cli("study", path)
    err = " ".join(result.err.split())  # as one line, whatever the terminal's width
    assert result.code == 1 and f"{path}: methods.udaiic (configuration 0): " in err
    assert "udaiik.toml: recipe file not found" in err and not (tmp_path / "out").exists()
    path = _study_file(tmp_path, 'set = ["train.epochs"]\n' + GRID_STUDY)
    result = cli("study", path)
    err = " ".join(result.err.split())
    assert result.code == 1 and f"{path}: methods.partial (configuration 0): " in err
    assert "expected key.path=value" in err and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_whole_study_reports_a_failed_run_and_completes_the_rest(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _recipes(tmp_path)
    text = GRID_STUDY.replace("seeds = [1, 2, 3]", "seeds = [1, 2]").replace(
        "select_seeds = [1, 2]", "select_seeds = [1]"
    )
    path = _study_file(tmp_path, text + '[methods.broken]\nrecipe = "broken.toml"\n')
    result = cli("study", path, "--jobs", "2")
    assert (
        result.code == 1
        and "2 of 9 runs did not finish: broken-c0-50pct-s1, broken-c0-50pct-s2" in result.err
    )
    # Without a terminal (a log file), each finished run is a line.
    assert "[1/9] s: " in result.out and "[9/9] s: " in result.out
    out = tmp_path / "out" / "s"
    md = (out / "study.md").read_text()
    assert str(out / "logs" / "broken-c0-50pct-s1.log") in md
    assert "data.root" in (out / "logs" / "broken-c0-50pct-s1.log").read_text()
    data = json.loads((out / "study.json").read_text())
    rows = {row["method"]: row for row in data["rows"]}
    assert rows["partial"]["seeds"] == [1, 2] and rows["udaiic"]["seeds"] == [1, 2]
    assert rows["full"]["amount"] == "all" and rows["broken"]["dice"] is None
    assert "over seeds 1 (validation split only" in data["selection_rule"]
    assert len((out / "study.csv").read_text().splitlines()) == 1 + 9
    assert (out / "study.png").stat().st_size > 0
    # Run again: the finished runs are reused as they are.
    reports = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/report.json")}
    assert len(reports) == 7
    result = cli("study", path, "--jobs", "2")
    assert result.code == 1
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/report.json")} == reports


@pytest.mark.slow
def test_a_study_folder_copied_without_its_checkpoints_trains_nothing_again(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    # A study moved to a fresh checkout (results kept, checkpoints left behind) trains nothing again.
    _recipes(tmp_path)
    study = tmp_path / "study.toml"
    study.write_text(
        'name = "s"\nruns_dir = "runs/studies"\nseeds = [1, 2]\nlabeled_ratios = [0.5]\n'
        '[methods.partial]\nrecipe = "partial.toml"\n[methods.full]\nrecipe = "full.toml"\n'
    )
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    monkeypatch.chdir(first)
    result = cli("study", study)
    assert result.code == 0 and "[1/4] s: partial-c0-50pct-s1 done, about " in result.out
    assert "[4/4] s: full-c0-all-s2 done (" in result.out  # the last run leaves nothing to estimate
    shutil.copytree(first / "runs", second / "runs", ignore=shutil.ignore_patterns("*.pt"))
    monkeypatch.chdir(second)
    result = cli("study", study)
    assert result.code == 0, result.err
    assert "[1/4] s: partial-c0-50pct-s1 reused (0 min elapsed)" in result.out
    for run in (second / "runs" / "studies" / "s" / "runs").iterdir():
        assert not list(run.glob("*.pt")), f"{run.name} was trained again"
    table = json.loads((second / "runs" / "studies" / "s" / "study.json").read_text())["rows"]
    assert table == json.loads((first / "runs" / "studies" / "s" / "study.json").read_text())["rows"]


@contextmanager
def _killed_at_exit(proc: subprocess.Popen[Any]) -> Iterator[subprocess.Popen[Any]]:
    """``proc`` (a study) is killed when the block ends, a failed assertion included, so that a
    failing test leaves no study training on (its runs see it die and stop)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _partial_only_study(root: Path, seeds: list[int]) -> list[str]:
    """A study of partial supervision alone (3 epochs x 100 steps per seed) written in ``root``; the
    ``mireg study`` command line that runs it. An epoch lasts a few seconds, so that a test that stops
    the study once a run's first checkpoint appears stops it in training, not in its test evaluation
    (which runs to the end)."""
    _recipes(root, epochs=3, iterations=100)
    path = _study_file(
        root,
        f'name = "s"\nseeds = {seeds}\nlabeled_ratios = [0.5]\nfull = "partial"\n'
        '[methods.partial]\nrecipe = "partial.toml"\n',
    )
    return [sys.executable, "-m", "mireg", "study", str(path)]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="runs are stopped with their study through Linux's prctl")
def test_a_killed_study_continues_where_it_stopped(tmp_path: Path) -> None:
    command = _partial_only_study(tmp_path, seeds=[1, 2])
    runs = tmp_path / "out" / "s" / "runs"
    env = {**os.environ, "COLUMNS": "200"}
    log = tmp_path / "out" / "s" / "logs" / "partial-c0-all-s2.log"
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    logs = log.parent

    def shown() -> str:  # what the study's runs wrote, should a wait time out
        return "\n".join(f"{f.name}:\n{f.read_text()[-1500:]}" for f in sorted(logs.glob("*.log")))

    with _killed_at_exit(proc):
        wait_for(lambda: (runs / "partial-c0-all-s1" / "report.json").is_file(), timeout=600, shown=shown)
        first = (runs / "partial-c0-all-s1" / "report.json").stat().st_mtime_ns
        wait_for(lambda: (runs / "partial-c0-all-s2" / "last.pt").is_file(), timeout=600, shown=shown)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    # The run saw its study die.
    wait_for(lambda: "interrupted" in log.read_text(), timeout=120, shown=shown)
    assert not (runs / "partial-c0-all-s2" / "report.json").exists()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (runs / "partial-c0-all-s1" / "report.json").stat().st_mtime_ns == first
    assert "resuming" in log.read_text()
    rows = (runs / "partial-c0-all-s2" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]


def _ignore_sigint() -> None:  # runs in the child, as a script's `mireg study ... &` starts it
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.slow
@pytest.mark.parametrize(
    "stop, preexec",
    [(signal.SIGTERM, None), (signal.SIGINT, _ignore_sigint)],
    ids=["sigterm", "sigint-though-started-with-it-ignored"],
)
def test_a_study_sent_sigterm_stops_its_runs_at_a_checkpoint_and_says_so(
    tmp_path: Path, stop: signal.Signals, preexec: Any
) -> None:
    command = _partial_only_study(tmp_path, seeds=[1])
    run = tmp_path / "out" / "s" / "runs" / "partial-c0-all-s1"
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=preexec
    )
    with _killed_at_exit(proc):
        wait_for(lambda: (run / "last.pt").is_file(), timeout=240)
        proc.send_signal(stop)  # as a job scheduler, `kill` or `kill -INT` stops it
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    flat = " ".join(out.split())
    assert "study s stopped; 1 run stopped at a checkpoint" in flat, out[-3000:]
    assert "interrupted" in (tmp_path / "out" / "s" / "logs" / "partial-c0-all-s1.log").read_text()
    assert not (run / "report.json").exists()


def test_messages_count_one_run_in_the_singular() -> None:
    assert runs_counted(1) == "1 run" and runs_counted(0) == "0 runs" and runs_counted(3) == "3 runs"
    assert (
        runs_counted(1, "finished") == "1 finished run" and runs_counted(2, "finished") == "2 finished runs"
    )
