"""DICOM series in: geometry from the headers, the series of a folder, and every bad input named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mireg.errors import DataError
from mireg.predict import collect_inputs

from ..helpers import write_dicom_series

pydicom = pytest.importorskip("pydicom", reason="DICOM input needs the clinic extra (pydicom)")

SHAPE = (20, 16, 6)  # X (columns), Y (rows), Z (slices)


def oblique_affine(spacing: tuple[float, float, float] = (1.4, 1.8, 7.0)) -> np.ndarray:
    """A RAS affine with an oblique orientation (rotations about two axes) and anisotropic voxels."""
    a, b = np.deg2rad(25.0), np.deg2rad(-40.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag(spacing)
    affine[:3, 3] = [-31.5, 12.25, 47.0]
    return affine


def stored_volume(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, SHAPE).astype(np.uint16)


def test_an_oblique_anisotropic_series_in_reversed_file_order(tmp_path: Path) -> None:
    stored, affine = stored_volume(), oblique_affine()
    names = [f"IM{SHAPE[2] - z:04d}" for z in range(SHAPE[2])]  # names sort opposite to positions
    write_dicom_series(tmp_path / "case", stored, affine, names=names, slope=0.5, intercept=-100)
    (scan,) = collect_inputs([tmp_path / "case"])
    series = scan.series
    assert scan.is_dicom and scan.name == "case"
    assert [p.name for p in series.files] == names  # sorted by position, not by name
    assert series.shape == SHAPE
    np.testing.assert_allclose(series.spacing, (1.4, 1.8, 7.0), atol=1e-5)
    np.testing.assert_allclose(series.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(series.volume(), stored.astype(np.float32) * 0.5 - 100)


def test_slices_sorted_by_position_along_the_normal_not_by_name(tmp_path: Path) -> None:
    stored = stored_volume(1)
    affine = oblique_affine()
    affine[:3, 2] *= -1  # slices step against the normal: the last file is the first slice
    write_dicom_series(tmp_path / "case", stored, affine)
    (scan,) = collect_inputs([tmp_path / "case"])
    assert scan.series.files[0].name == f"slice_{SHAPE[2] - 1}.dcm"
    np.testing.assert_array_equal(scan.series.volume(), stored[:, :, ::-1].astype(np.float32))
    flipped = affine.copy()
    flipped[:3, 2] *= -1
    flipped[:3, 3] = affine[:3, 3] + (SHAPE[2] - 1) * affine[:3, 2]
    np.testing.assert_allclose(scan.series.affine, flipped, atol=1e-5)


def test_a_folder_with_two_series_needs_a_choice(tmp_path: Path) -> None:
    write_dicom_series(
        tmp_path / "study",
        stored_volume(),
        oblique_affine(),
        series_uid="1.2.3.4",
        names=[f"a{z}.dcm" for z in range(SHAPE[2])],
    )
    write_dicom_series(
        tmp_path / "study",
        stored_volume(2)[:, :, :4],
        np.diag([1.0, 1.0, 5.0, 1.0]),
        series_uid="1.2.3.5",
        names=[f"b{z}.dcm" for z in range(4)],
        description="localizer",
    )
    with pytest.raises(
        DataError,
        match=r"study: holds 2 DICOM series: 1\.2\.3\.4 \(6 files, cine\); 1\.2\.3\.5 \(4 files, localizer\)",
    ) as info:
        collect_inputs([tmp_path / "study"])
    assert info.value.hint is not None and "--series" in info.value.hint
    (scan,) = collect_inputs([tmp_path / "study"], series_uid="1.2.3.5")
    assert scan.series.uid == "1.2.3.5" and scan.series.shape == (20, 16, 4)
    with pytest.raises(DataError, match=r"study: no series 9\.9 \(--series\); it holds 1\.2\.3\.4"):
        collect_inputs([tmp_path / "study"], series_uid="9.9")


def test_a_missing_slice_is_named(tmp_path: Path) -> None:
    paths = write_dicom_series(tmp_path / "case", stored_volume(), oblique_affine())
    paths[3].unlink()
    with pytest.raises(
        DataError, match=r"slice_4\.dcm: 1 slice\(s\) missing before it: 14 mm from slice_2\.dcm"
    ):
        collect_inputs([tmp_path / "case"])


def _edit(path: Path, **values: object) -> None:
    ds = pydicom.dcmread(path)
    for key, value in values.items():
        setattr(ds, key, value)
    ds.save_as(path)


def test_uneven_spacing_mixed_orientations_and_duplicates_are_named(tmp_path: Path) -> None:
    affine = np.diag([1.5, 1.5, 8.0, 1.0])
    paths = write_dicom_series(tmp_path / "uneven", stored_volume(), affine)
    _edit(paths[2], ImagePositionPatient=["0", "0", "19"])  # 11 mm after slice 1, 5 before slice 3
    with pytest.raises(DataError, match=r"slice_2\.dcm: non-uniform slice spacing: 11 mm from slice_1\.dcm"):
        collect_inputs([tmp_path / "uneven"])
    paths = write_dicom_series(tmp_path / "mixed", stored_volume(), affine)
    _edit(paths[4], ImageOrientationPatient=["0", "1", "0", "-1", "0", "0"])
    with pytest.raises(
        DataError, match=r"slice_4\.dcm: ImageOrientationPatient .* differs from slice_0\.dcm"
    ):
        collect_inputs([tmp_path / "mixed"])
    paths = write_dicom_series(tmp_path / "twice", stored_volume(), affine)
    _edit(paths[1], ImagePositionPatient=["-0", "-0", "0"])
    with pytest.raises(DataError, match=r"slice_[01]\.dcm: at the same position along the slice normal as"):
        collect_inputs([tmp_path / "twice"])
    paths = write_dicom_series(tmp_path / "sheared", stored_volume(), affine)
    _edit(paths[5], ImagePositionPatient=["-3", "0", "40"])
    with pytest.raises(DataError, match=r"slice_5\.dcm: ImagePositionPatient is 3 mm off the slice normal"):
        collect_inputs([tmp_path / "sheared"])


def test_non_image_objects_and_other_files_are_named(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

    write_dicom_series(tmp_path / "case", stored_volume(), oblique_affine())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = BasicTextSRStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report = Dataset()
    report.file_meta = meta
    report.SOPClassUID, report.SOPInstanceUID = BasicTextSRStorage, meta.MediaStorageSOPInstanceUID
    report.SeriesInstanceUID, report.Modality = generate_uid(), "SR"
    report.save_as(tmp_path / "case" / "report.dcm", enforce_file_format=True)
    with pytest.raises(DataError, match="report.dcm: not an image slice with a position") as info:
        collect_inputs([tmp_path / "case"], series_uid=None)
    assert "Basic Text SR" in info.value.message
    (tmp_path / "case" / "report.dcm").unlink()
    (tmp_path / "case" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"notes\.txt: not a DICOM file"):
        collect_inputs([tmp_path / "case"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(DataError, match="empty: holds no .nii or .nii.gz files and no DICOM files"):
        collect_inputs([tmp_path / "empty"])


def test_dicom_and_nifti_inputs_may_not_share_an_output_name(tmp_path: Path) -> None:
    write_dicom_series(tmp_path / "case", stored_volume(), oblique_affine())
    (tmp_path / "niftis").mkdir()
    (tmp_path / "niftis" / "case.nii.gz").write_bytes(b"x")
    with pytest.raises(DataError, match="two inputs share the output name"):
        collect_inputs([tmp_path / "case", tmp_path / "niftis"])
