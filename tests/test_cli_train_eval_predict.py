"""End to end through the real CLI entry point, on the tiny synthetic cohort."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mireg.data.phantom import generate_patient
from mireg.recipe import load_recipe
from mireg.training.runtime import hardware

pytestmark = pytest.mark.slow


@pytest.fixture
def trained_run(cli, write_recipe: Callable[..., Path]) -> Path:  # type: ignore[no-untyped-def]
    recipe = write_recipe()
    result = cli("train", recipe)
    assert result.code == 0, result
    assert "test set, best checkpoint" in result.out and "mean" in result.out
    return recipe.parent / "runs" / "tiny"


def test_train_writes_a_complete_run_directory(trained_run: Path) -> None:
    for name in (
        "recipe.toml",
        "versions.json",
        "split.json",
        "metrics.csv",
        "last.pt",
        "best.pt",
        "report.json",
        "report.csv",
        "report.md",
        "curves.png",
    ):
        assert (trained_run / name).is_file(), name
    with open(trained_run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for key in (
        "lr",
        "loss/total",
        "loss/sup",
        "loss/consistency",
        "loss/mutual_information",
        "val_dice/mean",
        "val_dice/RV",
    ):
        assert key in rows[0]
    report = json.loads((trained_run / "report.json").read_text())
    assert report["split"] == "test" and report["structures"] == ["RV", "MYO", "LV"]
    assert len(report["volumes"]) == 4  # 2 test patients x (ED, ES)
    summary = report["summary"]
    assert set(summary["dice"]) == {"ED", "ES", "all"}
    assert 0.0 <= summary["dice"]["all"]["mean"]["mean"] <= 1.0
    for structure in ("RV", "MYO", "LV", "mean"):
        stat = summary["hd95"]["all"][structure]
        assert stat["n"] + stat["undefined"] == 4  # every volume counted, defined or not
    with open(trained_run / "report.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 * 3 and set(rows[0]) == {
        "volume",
        "patient",
        "phase",
        "structure",
        "dice",
        "hd95",
        "hd",
        "assd",
    }
    assert "| mean |" in (trained_run / "report.md").read_text()
    versions = json.loads((trained_run / "versions.json").read_text())
    assert versions["plugins"]["regularizer:mutual_information"]["distribution"] == "mireg"
    # The saved recipe reproduces the run on its own.
    assert load_recipe(trained_run / "recipe.toml").name == "tiny"
    split = json.loads((trained_run / "split.json").read_text())
    assert not set(split["test"]) & set(split["labeled"] + split["unlabeled"])


def test_a_run_records_the_machine_that_trained_it(trained_run: Path) -> None:
    """versions.json names what trained the run (the CPU's model and torch's threads here), so a
    study counts its time left from the runs trained on the machine it runs on."""
    machine = json.loads((trained_run / "versions.json").read_text())["machine"]
    assert machine == hardware(torch.device("cpu"))
    threads = torch.get_num_threads()
    model, count = machine.rsplit(", ", 1)
    assert model and count == f"{threads} thread{'s' if threads != 1 else ''}"


def test_train_also_tests_the_last_checkpoint_as_eval_does(cli, trained_run: Path) -> None:  # type: ignore[no-untyped-def]
    """Beside the best checkpoint's report, the last one's (what the run gives without choosing an
    epoch on validation): the report ``mireg eval RUN --checkpoint last`` writes."""
    written = json.loads((trained_run / "report_test_last.json").read_text())
    assert (written["split"], written["checkpoint"], written["epoch"]) == ("test", "last.pt", 2)
    for suffix in ("csv", "md"):
        assert (trained_run / f"report_test_last.{suffix}").is_file()
    result = cli("eval", trained_run, "--checkpoint", "last")
    assert result.code == 0, result
    assert json.loads((trained_run / "report_test_last.json").read_text())["summary"] == written["summary"]


def test_eval_reproduces_the_training_report(cli, trained_run: Path) -> None:  # type: ignore[no-untyped-def]
    before = json.loads((trained_run / "report.json").read_text())
    result = cli("eval", trained_run)
    assert result.code == 0, result
    after = json.loads((trained_run / "report.json").read_text())
    assert after["summary"] == before["summary"]
    assert "DSC ED" in result.out and "HD95 all" in result.out and "LV" in result.out
    result = cli("eval", trained_run, "--split", "validation", "--checkpoint", "last", "--overlays")
    assert result.code == 0, result
    for suffix in ("json", "csv", "md"):
        assert (trained_run / f"report_validation_last.{suffix}").is_file()
    assert len(list((trained_run / "overlays_validation").glob("*.png"))) == 4
    result = cli("eval", trained_run, "--split", "train")
    assert result.code == 2


def test_compare_puts_runs_side_by_side(cli, trained_run: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli("eval", "--compare", trained_run, trained_run, "--out", tmp_path / "cmp.md")
    assert result.code == 0, result
    table = (tmp_path / "cmp.md").read_text().splitlines()
    assert table[0].startswith("| run | RV DSC | MYO DSC | LV DSC | mean DSC | mean HD95 (mm) |")
    assert len(table) == 4 and table[2].startswith("| tiny |")
    result = cli("eval", "--compare", trained_run, tmp_path)
    assert result.code == 1 and "no report.json" in result.err


def test_predict_keeps_the_input_geometry(cli, trained_run: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    patient = generate_patient(40, seed=9)
    image, _ = patient.frames[patient.ed_frame]
    affine = np.array([[0, -1.4, 0, 10], [1.6, 0, 0, -3], [0, 0, 7.0, 2], [0, 0, 0, 1]])
    src = tmp_path / "scans"
    src.mkdir()
    nib.save(nib.Nifti1Image(image, affine), src / "scan.nii.gz")
    result = cli("predict", trained_run / "best.pt", src, "-o", tmp_path / "masks", "--overlay")
    assert result.code == 0, result
    out = nib.load(tmp_path / "masks" / "scan.nii.gz")
    assert out.shape == image.shape
    np.testing.assert_allclose(out.affine, affine)
    np.testing.assert_allclose(out.header.get_zooms(), nib.load(src / "scan.nii.gz").header.get_zooms())
    labels = np.asarray(out.dataobj)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 3}
    assert (tmp_path / "masks" / "overlays" / "scan.png").is_file()
    result = cli("predict", trained_run, tmp_path / "nothing.nii.gz", "-o", tmp_path / "m2")
    assert result.code == 1 and "no such file" in result.err and not (tmp_path / "m2").exists()


def test_an_existing_run_is_never_overwritten(cli, trained_run: Path) -> None:  # type: ignore[no-untyped-def]
    recipe = trained_run.parent.parent / "tiny.toml"
    before = (trained_run / "best.pt").read_bytes()
    result = cli("train", recipe)
    assert result.code == 1 and "refusing to overwrite" in result.err
    assert "Traceback" not in result.err + result.out
    assert (trained_run / "best.pt").read_bytes() == before
    result = cli("train", recipe, "--fresh", "--set", "train.epochs=1")
    assert result.code == 0, result
    assert (trained_run.parent / "tiny-2" / "report.json").is_file()


def test_overrides_and_bad_recipes_on_the_command_line(cli, write_recipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    recipe = write_recipe()
    result = cli("train", recipe, "--set", "regularizers.consistency.wieght=3")
    assert result.code == 1
    assert "tiny.toml: regularizers[0].wieght: unknown key" in result.err
    assert "Traceback" not in result.err
    result = cli(
        "train",
        recipe,
        "--set",
        'regularizers.mutual_information.layers=["Conv7"]',
        "--set",
        "regularizers.mutual_information.importance=[1.0]",
    )
    assert result.code == 1 and "Conv7" in result.err and "taps" in result.err
    assert not (tmp_path / "runs" / "tiny" / "best.pt").exists()
    result = cli("train", tmp_path / "nope.toml")
    assert result.code == 1 and "recipe file not found" in result.err
    result = cli("train")
    assert result.code == 2


def test_preprocess_and_train_on_an_acdc_layout(cli, write_recipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from mireg.data.phantom import generate_cohort

    generate_cohort(tmp_path / "raw", n_patients=8, seed=4)
    result = cli(
        "preprocess", "acdc", tmp_path / "raw", tmp_path / "store", "--spacing", "5", "--canvas", "48"
    )
    assert result.code == 0, result
    assert "8 patients, 16 volumes (16 labelled)" in result.out
    result = cli(
        "preprocess", "acdc", tmp_path / "raw", tmp_path / "store", "--spacing", "5", "--canvas", "48"
    )
    assert result.code == 0 and "is up to date" in result.out  # reruns are idempotent
    result = cli("preprocess", "acdc", tmp_path / "raw", tmp_path / "store")
    assert result.code == 1 and "already exists and was not made from this input" in result.err
    data = {
        "name": "acdc",
        "root": str(tmp_path / "store"),
        "labeled_patients": 2,
        "val_patients": 2,
        "test_patients": 2,
    }
    result = cli("train", write_recipe(data=data))
    assert result.code == 0, result
    missing = {**data, "root": str(tmp_path / "nowhere")}
    result = cli("train", write_recipe("missing.toml", data=missing, name="other"))
    assert result.code == 1 and "nowhere does not exist" in result.err
    assert "mireg preprocess acdc" in result.err


def test_inference_benchmark_measures_each_option_and_plain_matches_the_report(trained_run: Path) -> None:
    from .helpers import load_benchmark

    bench = load_benchmark("inference")
    measured = bench.measure(trained_run)
    report = json.loads((trained_run / "report.json").read_text())
    assert measured["test"]["plain"]["dice"] == pytest.approx(
        report["summary"]["dice"]["all"]["mean"]["mean"]
    )
    assert set(measured["validation"]) == {"plain", "tta", "largest", "tta+largest"}
    rows = bench.table([measured, measured], "test")
    assert len(rows) == 6 and rows[2].startswith("| plain |") and "| +0.00 | 0 of 2 |" in rows[2]
    assert set(bench.chosen([measured])) == {"tta", "largest"}
