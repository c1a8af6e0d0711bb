"""nnU-Net v2 as a method beside mireg's: ``mireg nnunet`` trains it on a recipe's split and budget
and scores it with mireg's evaluator; a stopped run continues; a study file's ``engine = "nnunet"``
method is reported beside the others with every method's paired difference to it. The runs need the
nnunet extra (CI's extras step installs it); the checks of its absence run everywhere."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from mireg.data.splits import Split, make_split
from mireg.errors import RecipeError
from mireg.recipe import dump_toml, load_recipe
from mireg.study.plan import Study
from mireg.study.runner import run_study
from mireg.study.spec import load_study

from .helpers import tiny_recipe, wait_for

needs_nnunet = pytest.mark.skipif(
    importlib.util.find_spec("nnunetv2") is None,
    reason="nnU-Net v2 is not installed (pip install 'mireg[nnunet]')",
)


def _recipe(folder: Path, name: str = "nn", epochs: int = 2, iterations: int = 2, **changes: Any) -> Path:
    raw = tiny_recipe(folder / "runs", name=name, regularizers=[], **changes)
    raw["train"].update(epochs=epochs, iterations_per_epoch=iterations)
    path = folder / f"{name}.toml"
    path.write_text(dump_toml(raw))
    return path


def _study_file(folder: Path) -> Path:
    """A study of a tiny mireg baseline, full supervision and nnU-Net, two seeds, one short epoch."""
    for name in ("partial", "full", "nn"):
        _recipe(folder, name=name, epochs=1, iterations=2)
    path = folder / "study.toml"
    path.write_text(
        f'name = "s"\nruns_dir = "{folder / "out"}"\nseeds = [1, 2]\nlabeled_ratios = [0.5]\n'
        '[methods.partial]\nrecipe = "partial.toml"\n[methods.full]\nrecipe = "full.toml"\n'
        '[methods.nnunet]\nrecipe = "nn.toml"\nengine = "nnunet"\n'
    )
    return path


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_volumes_reach_nnunet_and_come_back_the_right_way_round(tmp_path: Path) -> None:
    """The NIfTI handed to nnU-Net is read by its reader (SimpleITK) as the (Z, H, W) volume, and a
    label map written on that grid reads back as it was: no transposed or flipped prediction."""
    from mireg.nnunet.workflow import _read_prediction, _write_nifti

    volume = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    path = tmp_path / "case_0000.nii.gz"
    _write_nifti(path, volume, (8.0, 1.5, 1.25))
    assert np.array_equal(_read_prediction(path), volume.astype(np.int64))
    sitk = pytest.importorskip("SimpleITK", reason="SimpleITK comes with the nnunet extra")
    image = sitk.ReadImage(str(path))
    assert np.array_equal(sitk.GetArrayFromImage(image), volume)
    assert image.GetSpacing() == pytest.approx((1.25, 1.5, 8.0))  # (W, H, Z), as nnU-Net reads it


def test_without_nnunet_the_command_and_a_study_that_needs_it_say_how_to_install_it(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    import mireg.nnunet.workflow as workflow

    monkeypatch.setattr(workflow, "nnunet_version", lambda: None)
    path = _recipe(tmp_path)
    result = cli("nnunet", path)
    assert result.code == 1 and "nnU-Net v2 is not installed" in result.err
    assert "pip install 'mireg[nnunet]'" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "runs").exists()
    study_file = _study_file(tmp_path)
    with pytest.raises(RecipeError, match=r"methods\.nnunet: engine = \"nnunet\" needs nnU-Net v2"):
        run_study(Study(load_study(study_file), study_file))
    assert not (tmp_path / "out").exists()  # nothing started
    Study(load_study(study_file), study_file).check()  # the recipes themselves are valid


@needs_nnunet
@pytest.mark.slow
def test_nnunet_trains_on_the_recipes_split_and_budget_and_is_scored_by_mireg(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = _recipe(tmp_path, epochs=2, iterations=2)
    result = cli("nnunet", path)
    assert result.code == 0, result.err
    run = tmp_path / "runs" / "nn"
    recipe = load_recipe(path)
    store = recipe.data.load()
    split = make_split(store, recipe.data, recipe.seed)
    # The split a mireg run of the recipe gets; nnU-Net sees the labelled patients' labels only.
    assert Split.read(run / "split.json") == split
    # What trained it, for a study's time left.
    assert json.loads((run / "versions.json").read_text())["machine"]
    labels = {p.name for p in (run / "nnunet" / "raw" / "Dataset001_mireg" / "labelsTr").iterdir()}
    assert labels == {f"{v.id}.nii.gz" for v in store.volumes_of(split.labeled)}
    # The budget: epochs x iterations, one metrics row per epoch, the validation DSC on the last.
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == ["1", "2"] and [r["step"] for r in rows] == ["2", "4"]
    assert rows[0]["val_dice/mean"] == ""
    validation = json.loads((run / "report_validation_final.json").read_text())
    assert float(rows[-1]["val_dice/mean"]) == pytest.approx(
        validation["summary"]["dice"]["all"]["mean"]["mean"]
    )
    assert {v["patient"] for v in validation["volumes"]} == set(split.validation)
    # The test report: mireg's schema, every test volume, each DSC that of the prediction file.
    report = json.loads((run / "report.json").read_text())
    assert report["method"].startswith("nnU-Net v2 ") and report["structures"] == store.classes[1:]
    assert sorted(v["id"] for v in report["volumes"]) == sorted(v.id for v in store.volumes_of(split.test))
    volume = store.volumes_of(split.test)[0]
    predicted = np.asarray(nib.load(run / "nnunet" / "predictions" / f"{volume.id}.nii.gz").dataobj)
    predicted = np.transpose(predicted, (2, 1, 0))
    truth = np.asarray(store.volume_labels(volume))
    for k, name in enumerate(store.classes[1:], start=1):
        a, b = predicted == k, truth == k
        if a.sum() + b.sum() == 0:
            continue
        expected = 2 * (a & b).sum() / (a.sum() + b.sum())
        reported = next(v for v in report["volumes"] if v["id"] == volume.id)["metrics"][name]["dice"]
        assert reported == pytest.approx(expected)
    assert "test set, nnU-Net" in result.out
    # A finished run is not a run to resume into another folder: --resume on it only reports again.
    again = cli("nnunet", path)
    assert again.code == 1 and "already exists" in again.err


@needs_nnunet
@pytest.mark.slow
def test_a_stopped_nnunet_run_continues_from_its_last_epoch(tmp_path: Path) -> None:
    path = _recipe(tmp_path, epochs=5, iterations=3)
    run = tmp_path / "runs" / "nn"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    with open(tmp_path / "log.txt", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mireg", "nnunet", str(path)], stdout=log, stderr=log, env=env
        )
        # stopped once nnU-Net has written a checkpoint (after its first epoch)
        fold = (
            run
            / "nnunet"
            / "results"
            / "Dataset001_mireg"
            / "MiregBudgetTrainer__nnUNetPlans__2d"
            / "fold_all"
        )
        wait_for(lambda: (fold / "checkpoint_latest.pth").is_file(), every=0.05)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    output = (tmp_path / "log.txt").read_text()
    assert code == 130, output
    assert f"mireg nnunet --resume {run}" in output
    stopped_at = len(_rows(run))
    assert 1 <= stopped_at < 5 and not (run / "report.json").exists()
    done = subprocess.run(
        [sys.executable, "-m", "mireg", "nnunet", "--resume", str(run)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "continues from its last checkpoint" in done.stdout
    assert [r["epoch"] for r in _rows(run)] == ["1", "2", "3", "4", "5"]
    assert (run / "report.json").is_file()


@needs_nnunet
@pytest.mark.slow
def test_a_study_puts_nnunet_beside_mireg_methods_with_paired_differences(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    study_file = _study_file(tmp_path)
    result = cli("study", study_file, "--jobs", "2")  # two runs at a time: CI has two cores
    assert result.code == 0, result.err
    out = tmp_path / "out" / "s"
    data = json.loads((out / "study.json").read_text())
    rows = {(row["method"], row["amount"]): row for row in data["rows"]}
    assert rows[("nnunet", "50pct")]["seeds"] == [1, 2]
    pairs = {(c["method"], c["versus"]) for c in data["comparisons"]}
    assert ("partial", "nnunet") in pairs
    assert "nnunet" in (out / "study.md").read_text()
    # nnU-Net validates its final checkpoint only: its best epoch is its last, and the report says so.
    best, last = rows[("nnunet", "50pct")]["epoch_val"]
    assert best["n"] == 2 and best["mean"] == last["mean"]
    assert "validates and tests its final checkpoint only" in (out / "study.md").read_text()
    for seed in (1, 2):
        name = f"nnunet-c0-50pct-s{seed}"
        assert (out / "runs" / name / "nnunet").is_dir()
        assert json.loads((out / "runs" / name / "report.json").read_text())["method"].startswith("nnU-Net")
    reports = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/report.json")}
    assert cli("study", study_file).code == 0  # finished runs are reused
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/report.json")} == reports
