"""DICOM SEG out: segments, codes, references and voxels read back with highdicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mireg.predict import collect_inputs

from ..helpers import write_dicom_series
from .test_dicom import SHAPE, oblique_affine, stored_volume

hd = pytest.importorskip("highdicom", reason="DICOM SEG output needs the clinic extra (highdicom)")

from mireg.data.dicom_seg import write_segmentation  # noqa: E402


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
