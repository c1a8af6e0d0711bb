"""What `mireg predict` takes as its inputs (no model needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mireg.errors import DataError
from mireg.predict import collect_inputs


def test_folders_give_their_nifti_files_without_resource_forks(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("b.nii", "a.nii.gz", "._a.nii.gz", "readme.txt"):
        (scans / name).write_bytes(b"x")
    single = tmp_path / "c.nii.gz"
    single.write_bytes(b"x")
    found = collect_inputs([scans, single])
    assert [scan.path for scan in found] == [scans / "a.nii.gz", scans / "b.nii", single]
    assert [scan.name for scan in found] == ["a", "b", "c"] and not any(scan.is_dicom for scan in found)


def test_bad_inputs_are_errors_naming_them(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "._a.nii.gz").write_bytes(b"macOS resource fork")
    with pytest.raises(DataError, match="empty: holds no .nii or .nii.gz files"):
        collect_inputs([tmp_path / "empty"])
    (tmp_path / "scan.txt").write_bytes(b"x")
    with pytest.raises(DataError, match=r"scan.txt: not a NIfTI file"):
        collect_inputs([tmp_path / "scan.txt"])
    with pytest.raises(DataError, match="nothing.nii: no such file or folder"):
        collect_inputs([tmp_path / "nothing.nii"])
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "same.nii").write_bytes(b"x")
    with pytest.raises(DataError, match="two inputs share the output name 'same.nii'"):
        collect_inputs([tmp_path / "x", tmp_path / "y"])


def test_a_dicom_folder_without_the_clinic_extra_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pydicom", None)  # importing it now fails, as when not installed
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "IM0001").write_bytes(b"x")
    with pytest.raises(DataError, match="reading DICOM needs pydicom") as info:
        collect_inputs([tmp_path / "series"])
    assert info.value.hint is not None and "mireg[clinic]" in info.value.hint


def test_the_nifti_reader_obeys_the_reader_contract(tmp_path: Path) -> None:
    import nibabel as nib
    import numpy as np

    from mireg import registry
    from mireg.testing import check_reader

    affine = np.diag([1.5, 1.5, 8.0, 1.0])
    cine = np.random.default_rng(0).random((12, 10, 3, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(cine, affine), str(tmp_path / "cine.nii.gz"))
    nib.save(nib.Nifti1Image(cine[..., 0], affine), str(tmp_path / "volume.nii"))
    cine_scan, volume = check_reader(registry.format_of("reader", "nifti"), tmp_path)
    assert (cine_scan.n_frames, volume.n_frames) == (4, 1)
    np.testing.assert_array_equal(next(cine_scan.read([2])).image, cine[..., 2])
