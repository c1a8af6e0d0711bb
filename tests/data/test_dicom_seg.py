"""DICOM SEG out: segments, codes, references and voxels read back with highdicom."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mireg.errors import DataError
from mireg.predict import collect_inputs

from ..helpers import strip_attribute, write_dicom_series
from .test_dicom import SHAPE, oblique_affine, stored_volume

hd = pytest.importorskip("highdicom", reason="DICOM SEG output needs the clinic extra (highdicom)")

from mireg.io.dicom_seg import prepare_sources, write_segmentation  # noqa: E402

pydicom = pytest.importorskip("pydicom")


def label_map() -> np.ndarray:
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[3:12, 2:10, :] = 1
    labels[12:17, 6:14, 1:5] = 2
    labels[6:9, 11:15, 2] = 3
    labels[0, 0, :] = 3  # every slice holds some label: no frame is left out
    return labels


def test_seg_round_trip_gives_back_the_voxels_geometry_and_codes(tmp_path: Path) -> None:
    affine = oblique_affine()
    names = [f"IM{SHAPE[2] - z}" for z in range(SHAPE[2])]
    write_dicom_series(tmp_path / "case", stored_volume(), affine, names=names)
    (scan,) = collect_inputs([tmp_path / "case"])
    labels = label_map()
    datasets = scan.series.datasets()
    out = tmp_path / "out" / "case.dcm"
    write_segmentation(out, labels, scan.series, datasets, ["background", "RV", "MYO", "LV"], "tiny", "0.1")
    assert [p.name for p in out.parent.iterdir()] == ["case.dcm"]  # no temporary left behind
    seg = hd.seg.segread(out)
    assert seg.SeriesInstanceUID != scan.series.uid
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == scan.series.uid
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == {
        ds.SOPInstanceUID for ds in datasets
    }
    codes = {}
    for number in seg.get_segment_numbers():
        description = seg.get_segment_description(number)
        codes[description.segment_label] = (
            description.segmented_property_category.value,
            description.segmented_property_type.value,
            description.segmented_property_type.scheme_designator,
        )
    assert codes == {
        "RV": ("91723000", "53085002", "SCT"),
        "MYO": ("91723000", "49848007", "SCT"),
        "LV": ("91723000", "87878005", "SCT"),
    }
    # The voxels, frame by frame through the source instances they reference.
    uids = [ds.SOPInstanceUID for ds in datasets]
    per_instance = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    np.testing.assert_array_equal(per_instance.transpose(2, 1, 0), labels)
    # The geometry: every voxel of the SEG's own volume (highdicom orders and orients its axes its
    # own way) lies, in patient coordinates, where the same voxel of the series does.
    volume = seg.get_volume(combine_segments=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ scan.series.affine
    index = np.stack([*np.indices(SHAPE).reshape(3, -1), np.ones(labels.size)])
    in_seg = np.linalg.solve(volume.affine, lps @ index)[:3]
    np.testing.assert_allclose(in_seg, np.round(in_seg), atol=1e-3)  # on the SEG's grid
    k, i, j = np.round(in_seg).astype(int)
    np.testing.assert_array_equal(volume.array[k, i, j], labels.ravel())


def test_classes_without_a_code_get_their_name_and_a_generic_code(tmp_path: Path) -> None:
    write_dicom_series(tmp_path / "case", stored_volume(), np.diag([1.0, 1.0, 4.0, 1.0]))
    (scan,) = collect_inputs([tmp_path / "case"])
    labels = (label_map() > 0).astype(np.uint8)
    out = tmp_path / "spleen.dcm"
    write_segmentation(out, labels, scan.series, scan.series.datasets(), ["background", "spleen"], "s", "1")
    description = hd.seg.segread(out).get_segment_description(1)
    assert description.segment_label == "spleen"
    assert description.segmented_property_type.value == "91723000"
    assert description.segmented_property_type.meaning == "Anatomical Structure"


# ------------------------------------------------------------- attributes missing from the source

SMALL = (8, 6, 4)
CLASSES = ["background", "RV", "MYO", "LV"]


def small_labels() -> np.ndarray:
    labels = np.zeros(SMALL, dtype=np.uint8)
    labels[1:5, 1:4, :] = 1
    labels[5:8, 2:6, 1:3] = 2
    labels[0:2, 4:6, 3] = 3
    return labels


def write_small(folder: Path, **kw: Any) -> list[Path]:
    stored = np.random.default_rng(7).integers(0, 4000, SMALL).astype(np.uint16)
    return write_dicom_series(folder, stored, oblique_affine((1.2, 1.1, 3.0)), slope=0.5, intercept=-10, **kw)


def instance_uid(ds: Any) -> str:
    return str(getattr(ds, "SOPInstanceUID", "") or ds.file_meta.MediaStorageSOPInstanceUID)


def read_back(out: Path, series: Any, datasets: list[Any], labels: np.ndarray) -> Any:
    """The SEG at ``out``, after checking its segments, frames, references and voxels."""
    seg = hd.seg.segread(out)
    assert list(seg.get_segment_numbers()) == [1, 2, 3]
    assert [seg.get_segment_description(n).segment_label for n in (1, 2, 3)] == CLASSES[1:]
    # BINARY, empty frames left out: one frame per slice and segment present in it.
    assert seg.NumberOfFrames == sum(
        int((labels[:, :, z] == k).any()) for k in (1, 2, 3) for z in range(labels.shape[2])
    )
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == series.uid
    uids = [instance_uid(ds) for ds in datasets]
    assert sorted(i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence) == sorted(uids)
    assert {i.ReferencedSOPClassUID for i in referenced.ReferencedInstanceSequence} == {
        pydicom.uid.MRImageStorage
    }
    assert seg.StudyInstanceUID == datasets[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == datasets[0].FrameOfReferenceUID
    per_instance = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    np.testing.assert_array_equal(per_instance.transpose(2, 1, 0), labels)
    return seg


def _slice_thickness(seg: Any) -> float:
    return float(seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness)


#: Attributes a correct SEG can do without, and what the SEG then has.
WRITTEN = {
    "PatientID": lambda seg, series: seg.PatientID == "",
    "PatientName": lambda seg, series: "PatientName" in seg and not seg.PatientName,
    "PatientBirthDate": lambda seg, series: "PatientBirthDate" in seg and not seg.PatientBirthDate,
    "PatientSex": lambda seg, series: "PatientSex" in seg and not seg.PatientSex,
    "StudyID": lambda seg, series: "StudyID" in seg and not seg.StudyID,
    "StudyDate": lambda seg, series: "StudyDate" in seg and not seg.StudyDate,
    "StudyTime": lambda seg, series: "StudyTime" in seg and not seg.StudyTime,
    "AccessionNumber": lambda seg, series: "AccessionNumber" in seg and not seg.AccessionNumber,
    "ReferringPhysicianName": lambda seg, series: (
        "ReferringPhysicianName" in seg and not seg.ReferringPhysicianName
    ),
    "PositionReferenceIndicator": lambda seg, series: not seg.get("PositionReferenceIndicator"),
    "SeriesNumber": lambda seg, series: seg.SeriesNumber == 1000,
    "Modality": lambda seg, series: seg.Modality == "SEG" and seg.ContentLabel == "SEG",
    "SeriesDescription": lambda seg, series: seg.SeriesDescription == "tiny segmentation",
    "InstanceNumber": lambda seg, series: seg.InstanceNumber == 1,
    "SliceThickness": lambda seg, series: abs(_slice_thickness(seg) - series.spacing[2]) < 1e-6,
    "SOPClassUID": lambda seg, series: True,  # from the file meta information: read_back checks it
    "SOPInstanceUID": lambda seg, series: True,
    "HighBit": lambda seg, series: True,
    "RescaleSlope": lambda seg, series: True,
    "RescaleIntercept": lambda seg, series: True,
}


@pytest.mark.parametrize("how", ["deleted", "empty"])
@pytest.mark.parametrize("keyword", list(WRITTEN))
def test_a_seg_is_written_without_what_it_can_do_without(tmp_path: Path, keyword: str, how: str) -> None:
    import copy

    strip_attribute(write_small(tmp_path / "case"), keyword, how)
    (scan,) = collect_inputs([tmp_path / "case"])
    datasets = scan.series.datasets()
    before = copy.deepcopy(datasets)
    labels = small_labels()
    out = tmp_path / "out.dcm"
    write_segmentation(out, labels, scan.series, datasets, CLASSES, "tiny", "1")
    seg = read_back(out, scan.series, datasets, labels)
    assert WRITTEN[keyword](seg, scan.series), seg.get(keyword)
    assert datasets == before  # the caller's datasets are left as they are
    if how == "deleted":
        assert keyword not in datasets[0]


@pytest.mark.parametrize("how", ["deleted", "empty"])
@pytest.mark.parametrize(
    "keyword, tag", [("StudyInstanceUID", "(0020,000D)"), ("FrameOfReferenceUID", "(0020,0052)")]
)
def test_a_seg_without_the_study_or_frame_of_reference_is_refused(
    tmp_path: Path, keyword: str, tag: str, how: str
) -> None:
    strip_attribute(write_small(tmp_path / "case"), keyword, how)
    (scan,) = collect_inputs([tmp_path / "case"])
    out = tmp_path / "out.dcm"
    absent = "missing" if how == "deleted" else "empty"
    message = rf"case/slice_0\.dcm: {keyword} \({tag[1:-1]}\) is {absent}; a DICOM SEG"
    with pytest.raises(DataError, match=message) as info:
        write_segmentation(out, small_labels(), scan.series, scan.series.datasets(), CLASSES, "tiny", "1")
    assert info.value.hint is not None and "--format nifti" in info.value.hint
    assert not out.exists()
    # The headers alone (no pixels) suffice to find out before predicting.
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in scan.series.files]
    with pytest.raises(DataError, match=message):
        prepare_sources(scan.series, headers)


@pytest.mark.parametrize(
    "keyword, tag", [("StudyInstanceUID", "(0020,000D)"), ("FrameOfReferenceUID", "(0020,0052)")]
)
def test_source_files_that_disagree_on_study_or_frame_of_reference_are_named(
    tmp_path: Path, keyword: str, tag: str
) -> None:
    paths = write_small(tmp_path / "case")
    ds = pydicom.dcmread(paths[2])
    setattr(ds, keyword, "1.2.3.999")
    ds.save_as(paths[2])
    (scan,) = collect_inputs([tmp_path / "case"])
    with pytest.raises(
        DataError, match=rf"slice_2\.dcm: {keyword} \({tag[1:-1]}\) 1\.2\.3\.999 differs from slice_0\.dcm's"
    ):
        prepare_sources(scan.series, scan.series.datasets())
    strip_attribute(paths[3:4], keyword, "deleted")  # missing from one file only
    (scan,) = collect_inputs([tmp_path / "case"])
    with pytest.raises(
        DataError, match=rf"slice_2\.dcm: {keyword} .* differs|slice_3\.dcm: {keyword} .* is missing"
    ):
        prepare_sources(scan.series, scan.series.datasets())


@pytest.mark.parametrize(
    "keyword, meta",
    [("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID")],
)
def test_sop_uids_missing_from_dataset_and_file_meta_are_named(
    tmp_path: Path, keyword: str, meta: str
) -> None:
    write_small(tmp_path / "case")
    (scan,) = collect_inputs([tmp_path / "case"])
    datasets = scan.series.datasets()
    delattr(datasets[1], keyword)
    delattr(datasets[1].file_meta, meta)
    with pytest.raises(
        DataError,
        match=rf"slice_1\.dcm: {keyword} \(0008,001[68]\) is missing, and the file meta .* no {meta}",
    ):
        write_segmentation(tmp_path / "out.dcm", small_labels(), scan.series, datasets, CLASSES, "tiny", "1")


def test_two_files_of_one_instance_are_named(tmp_path: Path) -> None:
    paths = write_small(tmp_path / "case")
    uid = pydicom.dcmread(paths[0]).SOPInstanceUID
    ds = pydicom.dcmread(paths[3])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.save_as(paths[3])
    (scan,) = collect_inputs([tmp_path / "case"])
    with pytest.raises(
        DataError, match=r"slice_3\.dcm: SOPInstanceUID \(0008,0018\) .* is also slice_0\.dcm's"
    ):
        prepare_sources(scan.series, scan.series.datasets())


def test_orientations_within_tolerance_and_empty_optional_attributes_are_written(tmp_path: Path) -> None:
    paths = write_small(tmp_path / "case")
    ds = pydicom.dcmread(paths[2])
    ds.ImageOrientationPatient = [f"{v + 2e-6:.8f}" for v in ds.ImageOrientationPatient]  # the reader's 1e-4
    ds.save_as(paths[2])
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet, ds.LossyImageCompression = "", ""
        ds.save_as(path)
    (scan,) = collect_inputs([tmp_path / "case"])
    datasets = scan.series.datasets()
    labels = small_labels()
    write_segmentation(tmp_path / "out.dcm", labels, scan.series, datasets, CLASSES, "tiny", "1")
    seg = read_back(tmp_path / "out.dcm", scan.series, datasets, labels)
    assert seg.LossyImageCompression == "00"
    assert datasets[2].ImageOrientationPatient != datasets[0].ImageOrientationPatient  # not changed


def test_a_seg_of_thin_slices_with_rounded_positions(tmp_path: Path) -> None:
    stored = np.random.default_rng(8).integers(0, 4000, (6, 5, 20)).astype(np.uint16)
    paths = write_dicom_series(tmp_path / "ct", stored, np.diag([0.7, 0.7, 0.625, 1.0]), position_decimals=1)
    strip_attribute(paths, "SliceThickness", "deleted")
    (scan,) = collect_inputs([tmp_path / "ct"])
    datasets = scan.series.datasets()
    labels = np.zeros((6, 5, 20), np.uint8)
    labels[1:4, 1:3, 2:15] = 1
    labels[4:6, 3:5, 5:9] = 2
    labels[0, 0, 19] = 3
    write_segmentation(tmp_path / "out.dcm", labels, scan.series, datasets, CLASSES, "tiny", "1")
    seg = read_back(tmp_path / "out.dcm", scan.series, datasets, labels)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert abs(float(measures.SliceThickness) - 0.625) < 0.01
    assert abs(float(measures.SpacingBetweenSlices) - 0.625) < 0.01


@pytest.mark.parametrize(
    "keyword, value",
    [("PatientSex", "U"), ("PatientBirthDate", "1990-01-01"), ("StudyDate", "2020"), ("StudyTime", "noon")],
)
def test_a_value_highdicom_refuses_is_left_empty_in_the_seg(tmp_path: Path, keyword: str, value: str) -> None:
    """Anonymisers and old archives write such values; the SEG is still written, with that type 2
    attribute empty, and the source files are left as they are."""
    paths = write_small(tmp_path / "case")
    for path in paths:
        ds = pydicom.dcmread(path)
        setattr(ds, keyword, value)
        ds.save_as(path)
    (scan,) = collect_inputs([tmp_path / "case"])
    datasets = scan.series.datasets()
    labels = small_labels()
    write_segmentation(tmp_path / "out.dcm", labels, scan.series, datasets, CLASSES, "tiny", "1")
    seg = read_back(tmp_path / "out.dcm", scan.series, datasets, labels)
    assert keyword in seg and not seg[keyword].value
    assert str(pydicom.dcmread(paths[0])[keyword].value) == value
