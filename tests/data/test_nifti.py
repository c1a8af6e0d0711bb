"""Listing and naming NIfTI files: one lister for every folder of scans mireg reads."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mireg.errors import DataError
from mireg.io.nifti import add_unlabeled_folder, is_nifti, nifti_files, nifti_stem, read_volume
from mireg.preprocessing.volume import StoreBuilder


def _scan(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).uniform(0, 100, (12, 10, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.diag([2.0, 2.0, 5.0, 1.0])), path)
    return path


def test_names() -> None:
    assert is_nifti(Path("a/case.nii.gz")) and is_nifti(Path("case.nii"))
    assert not is_nifti(Path("case.gz")) and not is_nifti(Path("case.nii.bak")) and not is_nifti(Path("nii"))
    assert nifti_stem(Path("a/case.nii.gz")) == "case" and nifti_stem(Path("case_0000.nii")) == "case_0000"
    assert nifti_stem(Path("my.nii.scan.nii.gz")) == "my.nii.scan"


def test_the_lister_sorts_and_skips_hidden_files_and_folders(tmp_path: Path) -> None:
    for name in ("b.nii", "a.nii.gz", "._a.nii.gz", ".hidden.nii", "notes.txt", "c.nii.gz.tmp"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "d.nii.gz").mkdir()
    assert [p.name for p in nifti_files(tmp_path)] == ["a.nii.gz", "b.nii"]


def test_a_missing_or_empty_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'nope'}: folder not found")):
        nifti_files(tmp_path / "nope")
    (tmp_path / "._a.nii.gz").write_bytes(b"macOS resource fork")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}: holds no .nii or .nii.gz files")):
        nifti_files(tmp_path)
    assert nifti_files(tmp_path, optional=True) == [] == nifti_files(tmp_path / "nope", optional=True)


def test_the_unlabelled_folder_reader_ignores_resource_forks(tmp_path: Path) -> None:
    folder = tmp_path / "extra"
    _scan(folder / "scan_b.nii.gz", 1)
    _scan(folder / "scan_a.nii", 2)
    (folder / "._scan_a.nii.gz").write_bytes(b"macOS resource fork")
    builder = StoreBuilder("t", 4.0, 16)
    add_unlabeled_folder(folder, builder)
    assert [(v.id, v.patient, v.labeled) for v in builder.volumes] == [
        ("extra/scan_a", "extra/scan_a", False),
        ("extra/scan_b", "extra/scan_b", False),
    ]


def test_an_empty_volume_is_a_data_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "empty.nii"
    nib.save(nib.Nifti1Image(np.zeros((0, 5, 4), dtype=np.uint8), np.eye(4)), str(path))
    for label in (False, True):
        with pytest.raises(DataError, match=r"empty.nii: empty volume \(shape \(0, 5, 4\)\)"):
            read_volume(path, label=label)
