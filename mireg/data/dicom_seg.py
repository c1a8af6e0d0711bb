"""DICOM Segmentation out: a label map of a DICOM series as a SEG object (highdicom) that references it.

One segment per foreground class, numbered by its label value, with the class name as its label and
a coded anatomy (segmented property category and type). The cardiac structures of ACDC and the
synthetic cohort (classes named ``RV``, ``MYO``, ``LV``) get their SNOMED CT codes from the DICOM
code tables (as pydicom ships them); any other class is an "Anatomical Structure" with its own name
as the label. Segments are BINARY (the type every SEG viewer reads); frames of an empty segment are
left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mireg.data.dicom import DicomSeries
from mireg.errors import DataError
from mireg.files import atomic_write

__all__ = ["CARDIAC_CODES", "segment_codes", "write_segmentation"]

#: SNOMED CT codes of the cardiac classes: name -> (code value, code meaning). ACDC's ``MYO`` is the
#: left-ventricular myocardium and its ``LV`` the left-ventricular cavity, coded as the ventricle.
CARDIAC_CODES: dict[str, tuple[str, str]] = {
    "RV": ("53085002", "Right ventricle"),
    "MYO": ("49848007", "Left ventricle myocardium"),
    "LV": ("87878005", "Left ventricle"),
}

#: Segmented property category of every segment, and the type of classes without a code of their own.
ANATOMICAL_STRUCTURE = ("91723000", "Anatomical Structure")


def segment_codes(name: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """``(category, type)`` codes (SNOMED CT value, meaning) of the class called ``name``."""
    return ANATOMICAL_STRUCTURE, CARDIAC_CODES.get(name, ANATOMICAL_STRUCTURE)


def write_segmentation(
    path: Path,
    labels: np.ndarray,
    series: DicomSeries,
    datasets: list[Any],
    classes: list[str],
    algorithm: str,
    version: str,
) -> None:
    """Write ``labels`` ``(X, Y, Z)`` on ``series``' grid as a DICOM SEG file, atomically.

    Args:
        path: The output file.
        labels: The label map (values are class indices).
        series: The source series (its files sorted along the normal, as ``labels``' Z axis).
        datasets: Its files read as pydicom datasets, in the same order.
        classes: Class names, index = label value (``classes[0]`` is the background).
        algorithm: The algorithm's name (the run's recipe) recorded in each segment.
        version: The algorithm's version (mireg's).
    """
    try:
        import highdicom as hd
        from pydicom.sr.coding import Code
        from pydicom.uid import generate_uid
    except ImportError:
        raise DataError(
            "writing DICOM SEG needs highdicom, which is not installed",
            "install the DICOM support: pip install 'mireg[clinic]'",
        ) from None

    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm[:64] or "mireg",
        version=version[:64],
        family=Code("123109", "DCM", "Artificial Intelligence"),
    )
    descriptions = []
    for number, name in enumerate(classes[1:], start=1):
        (cat_value, cat_meaning), (type_value, type_meaning) = segment_codes(name)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name[:64],
                segmented_property_category=Code(cat_value, "SCT", cat_meaning),
                segmented_property_type=Code(type_value, "SCT", type_meaning),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=identification,
            )
        )
    frames = np.ascontiguousarray(labels.transpose(2, 1, 0)).astype(np.uint8)  # (Z, rows, columns)
    first = datasets[0]
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=int(getattr(first, "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="mireg",
        manufacturer_model_name=algorithm[:64] or "mireg",
        software_versions=version[:64],
        device_serial_number="0",
        series_description=f"{algorithm} segmentation"[:64],
    )
    atomic_write(path, lambda tmp: seg.save_as(tmp))
