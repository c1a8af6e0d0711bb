"""`mireg eval --pred --gt`: folder evaluation of NIfTI label maps."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


def _save(path: Path, labels: np.ndarray, zooms: tuple[float, float, float] = (1.0, 1.0, 5.0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), np.diag([*zooms, 1.0])), path)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    gt = np.zeros((8, 8, 3), dtype=np.uint8)
    gt[2:4, 2:4, 1] = 1
    gt[5, 5, 2] = 2
    pred = gt.copy()
    pred[5, 5, 2] = 0
    pred[5, 5, 0] = 2  # label 2 moved by two slices: 10 mm
    _save(tmp_path / "gt" / "case_a.nii.gz", gt)
    _save(tmp_path / "pred" / "case_a.nii.gz", pred)
    _save(tmp_path / "gt" / "case_b.nii.gz", gt)
    _save(tmp_path / "pred" / "case_b.nii.gz", np.zeros_like(gt))  # nothing predicted
    return tmp_path / "pred", tmp_path / "gt"


def test_folder_evaluation_writes_the_documented_json(cli, folders, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pred, gt = folders
    result = cli("eval", "--pred", pred, "--gt", gt, "--out", tmp_path / "r.json")
    assert result.code == 0, result
    report = json.loads((tmp_path / "r.json").read_text())
    assert [c["case"] for c in report["cases"]] == ["case_a.nii.gz", "case_b.nii.gz"]
    a, b = (c["labels"] for c in report["cases"])
    assert a["1"] == {"dice": 1.0, "hd95": 0.0, "hd": 0.0, "assd": 0.0}
    assert a["2"] == {"dice": 0.0, "hd95": 10.0, "hd": 10.0, "assd": 10.0}
    assert b["1"] == {"dice": 0.0, "hd95": None, "hd": None, "assd": None}
    mean = report["mean"]["1"]
    assert mean["dice"]["mean"] == 0.5 and mean["hd95"]["undefined"] == 1 and mean["hd95"]["n"] == 1


def test_printed_paths_keep_their_brackets(cli, folders, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pred, gt = folders
    out = tmp_path / "reports[v1]" / "r.json"  # [v1] read as rich markup would vanish from the line
    out.parent.mkdir()
    result = cli("eval", "--pred", pred, "--gt", gt, "--out", out)
    assert result.code == 0, result
    assert f"report: {out}" in result.out


def test_hidden_files_are_not_cases(folders) -> None:  # type: ignore[no-untyped-def]
    from mireg.evaluation.evaluate import evaluate_folders

    pred, gt = folders
    (gt / "._case_a.nii.gz").write_bytes(b"macOS resource fork")  # no partner, not even NIfTI
    (pred / "._case_c.nii.gz").write_bytes(b"macOS resource fork")
    report = evaluate_folders(pred, gt)
    assert [c["case"] for c in report["cases"]] == ["case_a.nii.gz", "case_b.nii.gz"]


@pytest.mark.parametrize("problem", ["missing", "shape", "float"])
def test_folder_problems_name_the_file(cli, folders, problem: str) -> None:  # type: ignore[no-untyped-def]
    pred, gt = folders
    if problem == "missing":
        (pred / "case_b.nii.gz").unlink()
        expected = "case_b.nii.gz: no prediction of that name"
    elif problem == "shape":
        _save(pred / "case_b.nii.gz", np.zeros((8, 9, 3), dtype=np.uint8))
        expected = "case_b.nii.gz: shape (8, 9, 3) differs"
    else:
        nib.save(nib.Nifti1Image(np.full((8, 8, 3), 0.5, np.float32), np.eye(4)), pred / "case_a.nii.gz")
        expected = "case_a.nii.gz: label map has non-integer"
    result = cli("eval", "--pred", pred, "--gt", gt)
    assert result.code == 1 and expected in result.err and "Traceback" not in result.err


def test_eval_usage_errors_exit_2(cli, folders) -> None:  # type: ignore[no-untyped-def]
    pred, _ = folders
    assert cli("eval", "--pred", pred).code == 2
    assert cli("eval").code == 2
