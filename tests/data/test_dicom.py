"""DICOM series in: geometry from the headers, the series of a folder, and every bad input named."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mireg.errors import DataError
from mireg.predict import collect_inputs

from ..helpers import strip_attribute, write_dicom_series

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


# ------------------------------------------------------------------------- rounded positions

THIN = 0.625  # mm: a thin-slice CT's gap
THIN_SLICES = 24


def thin_affine(oblique: bool) -> np.ndarray:
    """A thin-slice series' affine, axial or oblique, its origin at no round number."""
    affine = oblique_affine((0.7, 0.7, THIN)) if oblique else np.diag([0.7, 0.7, THIN, 1.0])
    affine[:3, 3] = [-150.0312, 20.3718, -87.4436]
    return affine


def write_thin_series(folder: Path, decimals: int, oblique: bool = False) -> list[Path]:
    stored = np.random.default_rng(5).integers(0, 4000, (6, 5, THIN_SLICES)).astype(np.uint16)
    return write_dicom_series(folder, stored, thin_affine(oblique), position_decimals=decimals)


def _shift(paths: list[Path], first: int, mm: float, decimals: int, affine: np.ndarray) -> None:
    """Move slices ``first`` on by ``mm`` along their normal, positions rounded to ``decimals``."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    normal = lps[:3, 2] / np.linalg.norm(lps[:3, 2])
    for z in range(first, len(paths)):
        position = lps[:3, 3] + z * lps[:3, 2] + mm * normal
        _edit(paths[z], ImagePositionPatient=[f"{v:.{decimals}f}" for v in position])


@pytest.mark.parametrize("oblique", [False, True], ids=["axial", "oblique"])
@pytest.mark.parametrize("decimals", [1, 2])
def test_thin_slices_with_rounded_positions_are_read_with_their_gap(
    tmp_path: Path, decimals: int, oblique: bool
) -> None:
    write_thin_series(tmp_path / "ct", decimals, oblique)
    (scan,) = collect_inputs([tmp_path / "ct"])
    series = scan.series
    assert series.shape == (6, 5, THIN_SLICES)
    # The gap is first to last over the gaps: rounding both ends errs by this much at most.
    rounding = 2 * 0.5 * 10.0**-decimals * np.sqrt(3) / (THIN_SLICES - 1)
    assert abs(series.spacing[2] - THIN) <= rounding
    np.testing.assert_allclose(series.affine, thin_affine(oblique), atol=0.5 * 10.0**-decimals * np.sqrt(3))
    # The rounded positions do not all have one gap: the 1 % tolerance alone refuses them.
    along = [
        float(np.array(pydicom.dcmread(p).ImagePositionPatient, float) @ np.array([0, 0, 1]))
        for p in series.files
    ]
    if not oblique:
        assert np.ptp(np.diff(along)) > 0.01 * THIN


@pytest.mark.parametrize("decimals", [1, 2])
def test_a_missing_slice_among_rounded_positions_is_still_named(tmp_path: Path, decimals: int) -> None:
    paths = write_thin_series(tmp_path / "ct", decimals)
    paths[10].unlink()
    with pytest.raises(
        DataError, match=r"slice_11\.dcm: 1 slice\(s\) missing before it: .* from slice_9\.dcm"
    ):
        collect_inputs([tmp_path / "ct"])


@pytest.mark.parametrize("decimals", [1, 2, 6])
def test_one_gap_30_percent_too_large_is_still_refused(tmp_path: Path, decimals: int) -> None:
    paths = write_thin_series(tmp_path / "ct", decimals)
    _shift(paths, 12, 0.3 * THIN, decimals, thin_affine(False))  # slice 12 on: one gap of 0.8125 mm
    with pytest.raises(DataError, match=r"slice_12\.dcm: non-uniform slice spacing: .* from slice_11\.dcm"):
        collect_inputs([tmp_path / "ct"])


def test_rounding_allows_no_more_than_half_a_gap(tmp_path: Path) -> None:
    # Whole-millimetre positions may each be 0.5 mm off; a missing 1 mm slice is still missing.
    paths = write_dicom_series(
        tmp_path / "mm", stored_volume(), np.diag([1.0, 1.0, 1.0, 1.0]), position_decimals=0
    )
    paths[2].unlink()
    with pytest.raises(DataError, match=r"slice_3\.dcm: 1 slice\(s\) missing before it"):
        collect_inputs([tmp_path / "mm"])


# --------------------------------------------------------------------------------- intensities


def test_monochrome1_is_read_with_intensities_increasing_with_brightness(tmp_path: Path) -> None:
    stored = np.random.default_rng(3).integers(0, 4096, SHAPE).astype(np.uint16)
    affine = oblique_affine()
    kw = {"bits_stored": 12, "slope": 0.5, "intercept": -100.0}
    write_dicom_series(tmp_path / "m2", stored, affine, **kw)
    # The same picture in MONOCHROME1: the lowest stored value is the brightest.
    write_dicom_series(tmp_path / "m1", 4095 - stored, affine, photometric="MONOCHROME1", **kw)
    (m2,) = collect_inputs([tmp_path / "m2"])
    (m1,) = collect_inputs([tmp_path / "m1"])
    np.testing.assert_array_equal(m2.series.volume(), stored.astype(np.float32) * 0.5 - 100)
    np.testing.assert_array_equal(m1.series.volume(), m2.series.volume())


def test_a_modality_lut_is_applied_and_flipped_for_monochrome1(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    stored = np.random.default_rng(4).integers(0, 4096, SHAPE).astype(np.uint16)
    lut = np.arange(4096) * 2 + 10  # values 10 ... 8200

    def with_lut(paths: list[Path]) -> None:
        for path in paths:
            ds = pydicom.dcmread(path)
            del ds.RescaleSlope, ds.RescaleIntercept
            item = Dataset()
            item.LUTDescriptor, item.ModalityLUTType = [4096, 0, 16], "US"
            item.add_new("LUTData", "US", lut.tolist())
            ds.ModalityLUTSequence = [item]
            ds.save_as(path)

    with_lut(write_dicom_series(tmp_path / "m2", stored, oblique_affine(), bits_stored=12))
    with_lut(
        write_dicom_series(
            tmp_path / "m1", 4095 - stored, oblique_affine(), photometric="MONOCHROME1", bits_stored=12
        )
    )
    (m2,) = collect_inputs([tmp_path / "m2"])
    (m1,) = collect_inputs([tmp_path / "m1"])
    np.testing.assert_array_equal(m2.series.volume(), lut[stored].astype(np.float32))
    np.testing.assert_array_equal(m1.series.volume(), m2.series.volume())


@pytest.mark.parametrize("how", ["deleted", "empty"])
@pytest.mark.parametrize(
    "keyword, expected",
    [("RescaleSlope", lambda s: s - 100.0), ("RescaleIntercept", lambda s: s * 0.5)],
    ids=["RescaleSlope", "RescaleIntercept"],
)
def test_a_missing_or_empty_rescale_value_is_its_identity(
    tmp_path: Path, keyword: str, expected: Callable[[np.ndarray], np.ndarray], how: str
) -> None:
    stored = stored_volume()
    paths = write_dicom_series(tmp_path / "case", stored, oblique_affine(), slope=0.5, intercept=-100)
    strip_attribute(paths, keyword, how)
    (scan,) = collect_inputs([tmp_path / "case"])
    np.testing.assert_array_equal(scan.series.volume(), expected(stored.astype(np.float32)))


def test_a_zero_rescale_slope_is_named(tmp_path: Path) -> None:
    paths = write_dicom_series(tmp_path / "case", stored_volume(), oblique_affine())
    _edit(paths[2], RescaleSlope="0")
    (scan,) = collect_inputs([tmp_path / "case"])
    with pytest.raises(DataError, match=r"slice_2\.dcm: RescaleSlope \(0028,1053\) is 0"):
        scan.series.volume()


@pytest.mark.parametrize("how", ["deleted", "empty"])
@pytest.mark.parametrize(
    "keyword, tag, message",
    [
        ("PhotometricInterpretation", "(0028,0004)", "the pixel data cannot be read without it"),
        ("BitsAllocated", "(0028,0100)", "the pixel data cannot be read without it"),
        ("BitsStored", "(0028,0101)", "the pixel data cannot be read without it"),
        ("PixelRepresentation", "(0028,0103)", "the pixel data cannot be read without it"),
        ("SamplesPerPixel", "(0028,0002)", "the pixel data cannot be read without it"),
        ("ImagePositionPatient", "(0020,0032)", None),
        ("ImageOrientationPatient", "(0020,0037)", None),
        ("PixelSpacing", "(0028,0030)", None),
        ("Rows", "(0028,0010)", None),
        ("Columns", "(0028,0011)", None),
    ],
)
def test_a_missing_or_empty_attribute_the_reader_needs_is_named(
    tmp_path: Path, keyword: str, tag: str, message: str | None, how: str
) -> None:
    paths = write_dicom_series(tmp_path / "case", stored_volume(), oblique_affine())
    strip_attribute(paths, keyword, how)
    absent = "missing" if how == "deleted" else "empty"
    expected = f"{keyword} {tag} is {absent}" + (f"; {message}" if message else "")
    if message is None:
        expected = f"not an image slice with a position (MR Image Storage): {expected}"
    with pytest.raises(DataError, match=r"slice_0\.dcm: " + re.escape(expected)):
        collect_inputs([tmp_path / "case"])


@pytest.mark.parametrize("how", ["deleted", "empty"])
def test_a_series_without_series_instance_uid_is_named(tmp_path: Path, how: str) -> None:
    paths = write_dicom_series(tmp_path / "case", stored_volume(), oblique_affine())
    strip_attribute(paths, "SeriesInstanceUID", how)
    absent = "missing" if how == "deleted" else "empty"
    with pytest.raises(
        DataError, match=rf"slice_0\.dcm: no SeriesInstanceUID \(0020,000E\) \(it is {absent}\)"
    ):
        collect_inputs([tmp_path / "case"])


@pytest.mark.parametrize("how", ["deleted", "empty"])
def test_missing_or_empty_pixel_data_is_named(tmp_path: Path, how: str) -> None:
    paths = write_dicom_series(tmp_path / "case", stored_volume(), oblique_affine())
    strip_attribute(paths[3:4], "PixelData", how)
    (scan,) = collect_inputs([tmp_path / "case"])  # headers are read without their pixels
    absent = "missing" if how == "deleted" else "empty"
    with pytest.raises(DataError, match=rf"slice_3\.dcm: PixelData \(7FE0,0010\) is {absent}"):
        scan.series.volume()


def test_a_palette_colour_image_is_refused(tmp_path: Path) -> None:
    paths = write_dicom_series(tmp_path / "case", stored_volume(), oblique_affine())
    _edit(paths[1], PhotometricInterpretation="PALETTE COLOR")
    with pytest.raises(
        DataError,
        match=r"slice_1\.dcm: PhotometricInterpretation \(0028,0004\) is 'PALETTE COLOR'; only greyscale",
    ):
        collect_inputs([tmp_path / "case"])
