"""DICOM Segmentation out: a label map of a DICOM series as a SEG object (highdicom) that references it.

One segment per foreground class, numbered by its label value, with the class name as its label and
a coded anatomy (segmented property category and type). The cardiac structures of ACDC and the
synthetic cohort (classes named ``RV``, ``MYO``, ``LV``) get their SNOMED CT codes from the DICOM
code tables (as pydicom ships them); any other class is an "Anatomical Structure" with its own name
as the label. Segments are BINARY (the type every SEG viewer reads); frames of an empty segment are
left out.

The source images are checked first (:func:`prepare_sources`). A SEG shares the study and the frame
of reference of the images it segments and references each of them by SOP class and instance, so a
series without a StudyInstanceUID or FrameOfReferenceUID, or whose files disagree on them, is a
:class:`~mireg.errors.DataError` (``--format nifti`` writes a NIfTI label map instead). What a
correct SEG can do without is completed on copies of the datasets given to highdicom (the caller's
datasets and files are never changed): a missing SOP class or instance UID from the file meta
information, missing patient and study attributes of type 2 as empty values, a missing or empty
SliceThickness and SpacingBetweenSlices from the series' slice gap, orientations that differ within
the reader's tolerance as the first file's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mireg.errors import DataError
from mireg.files import atomic_write
from mireg.io.dicom import DicomSeries, absence
from mireg.io.dicom_scan import DicomScan
from mireg.io.formats import Frame, LabelMapWriter, ModelInfo, Scan

__all__ = ["CARDIAC_CODES", "SegWriter", "prepare_sources", "segment_codes", "write_segmentation"]

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


#: Patient and study attributes of type 2 that highdicom reads from the first source image; a missing
#: one is given to it empty (as the standard allows a type 2 attribute to be).
TYPE_2_SOURCE_ATTRIBUTES = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
)


def _valid_as(vr: str) -> Any:
    """A check that a value reads as a date (``DA``) or time (``TM``), as highdicom requires."""

    def valid(value: Any) -> bool:
        from pydicom import valuerep

        try:
            getattr(valuerep, vr)(str(value))
        except (ValueError, TypeError):
            return False
        return True

    return valid


#: Patient and study attributes highdicom copies from the first source image and refuses when their
#: value breaks their VR or enumeration (an anonymiser's ``U`` sex, a date with dashes): the SEG gets
#: them empty instead, as a type 2 attribute may be.
CHECKED_SOURCE_VALUES: dict[str, Any] = {
    "PatientSex": lambda value: str(value) in ("M", "F", "O"),
    "PatientBirthDate": _valid_as("DA"),
    "StudyDate": _valid_as("DA"),
    "StudyTime": _valid_as("TM"),
}

_STUDY_WHY = "a DICOM SEG belongs to the study of the images it segments"
_FRAME_WHY = (
    "a DICOM SEG must share the frame of reference of the images it segments (highdicom places "
    "no more than one frame without one)"
)
_NIFTI_HINT = "--format nifti writes the label map as NIfTI (with the series' geometry) instead"


def _ds_number(value: float) -> str:
    from pydicom.valuerep import format_number_as_ds

    return str(format_number_as_ds(float(value)))


class _Copy:
    """A shallow copy of a pydicom dataset, made on the first change: its elements are the
    original's objects, and changes replace or remove elements of the copy only."""

    def __init__(self, ds: Any) -> None:
        self.original = ds
        self.copy: Any = None

    def _copied(self) -> Any:
        if self.copy is None:
            from pydicom.dataset import Dataset

            self.copy = Dataset()
            for element in self.original:
                self.copy.add(element)
            if hasattr(self.original, "file_meta"):
                self.copy.file_meta = self.original.file_meta
        return self.copy

    def set(self, keyword: str, value: Any) -> None:
        from pydicom.datadict import dictionary_VR

        self._copied().add_new(keyword, dictionary_VR(keyword), value)

    def delete(self, keyword: str) -> None:
        copy = self._copied()
        if keyword in copy:
            del copy[keyword]

    @property
    def dataset(self) -> Any:
        return self.original if self.copy is None else self.copy


def _uid(path: Path, ds: Any, keyword: str, tag: str, meta_keyword: str, meta_tag: str) -> Any:
    """The SOP class or instance UID of ``ds``, from its file meta information where missing."""
    absent = absence(ds, keyword)
    if not absent:
        return ds.get(keyword)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and not absence(meta, meta_keyword):
        return meta.get(meta_keyword)
    raise DataError(
        f"{path}: {keyword} {tag} is {absent}, and the file meta information has no "
        f"{meta_keyword} {meta_tag} either; a DICOM SEG references each source image by its SOP "
        "class and instance UIDs",
        _NIFTI_HINT,
    )


def _shared_uid(path: Path, ds: Any, keyword: str, tag: str, why: str, first: tuple[Path, Any] | None) -> Any:
    """A UID every source image must have, the same in all (StudyInstanceUID, FrameOfReferenceUID)."""
    absent = absence(ds, keyword)
    if absent:
        raise DataError(f"{path}: {keyword} {tag} is {absent}; {why}", _NIFTI_HINT)
    value = ds.get(keyword)
    if first is not None and str(value) != str(first[1]):
        raise DataError(
            f"{path}: {keyword} {tag} {value} differs from {first[0].name}'s {first[1]}; {why}",
            _NIFTI_HINT,
        )
    return value


def prepare_sources(series: DicomSeries, datasets: Sequence[Any]) -> list[Any]:
    """The source datasets as highdicom is to be given them: checked, and completed where a correct
    SEG can do without what is missing.

    Every file needs a StudyInstanceUID and a FrameOfReferenceUID, the same in all (a SEG belongs
    to the study of its source and shares its frame of reference; without one highdicom can place
    no more than one frame), and a SOPClassUID and SOPInstanceUID (taken from the file meta
    information where the dataset has none), no two files the same instance. The first file's
    missing type 2 patient and study attributes (:data:`TYPE_2_SOURCE_ATTRIBUTES`) are given
    empty, and those of :data:`CHECKED_SOURCE_VALUES` whose value is invalid likewise; its missing or
    empty SliceThickness is the series' slice gap, as is its SpacingBetweenSlices
    for a series of several slices; an empty SpecificCharacterSet (the default repertoire) or
    LossyImageCompression (unknown, as when it is missing) is left out; every file gets the first
    file's ImageOrientationPatient (the reader accepted the series' orientations as one).

    Args:
        series: The source series (or frame).
        datasets: Its files as pydicom datasets, in ``series.files``' order; headers without pixel
            data will do for the check alone.

    Returns:
        The datasets to give highdicom: the caller's own where nothing changes, else shallow copies
        with the changes (the caller's datasets are never changed).

    Raises:
        DataError: Naming the file and the attribute: a StudyInstanceUID or FrameOfReferenceUID that
            is missing, empty, or not the first file's; a SOP class or instance UID missing from the
            dataset and the file meta information; two files of one SOP instance.
    """
    copies = [_Copy(ds) for ds in datasets]
    study: tuple[Path, Any] | None = None
    frame: tuple[Path, Any] | None = None
    instances: dict[str, Path] = {}
    orientation = None
    for path, copy in zip(series.files, copies, strict=True):
        ds = copy.original
        uid = _shared_uid(path, ds, "StudyInstanceUID", "(0020,000D)", _STUDY_WHY, study)
        study = study or (path, uid)
        uid = _shared_uid(path, ds, "FrameOfReferenceUID", "(0020,0052)", _FRAME_WHY, frame)
        frame = frame or (path, uid)
        for keyword, tag, meta_keyword, meta_tag in (
            ("SOPClassUID", "(0008,0016)", "MediaStorageSOPClassUID", "(0002,0002)"),
            ("SOPInstanceUID", "(0008,0018)", "MediaStorageSOPInstanceUID", "(0002,0003)"),
        ):
            value = _uid(path, ds, keyword, tag, meta_keyword, meta_tag)
            if absence(ds, keyword):
                copy.set(keyword, value)
        instance = str(copy.dataset.SOPInstanceUID)
        if instance in instances:
            raise DataError(
                f"{path}: SOPInstanceUID (0008,0018) {instance} is also {instances[instance].name}'s; "
                "two files of one instance cannot both be referenced",
                "remove the copy from the folder",
            )
        instances[instance] = path
        if orientation is None:
            orientation = ds.ImageOrientationPatient
        elif [float(v) for v in ds.ImageOrientationPatient] != [float(v) for v in orientation]:
            copy.set("ImageOrientationPatient", list(orientation))
    first = copies[0]
    for keyword in TYPE_2_SOURCE_ATTRIBUTES:
        if keyword not in first.original:
            first.set(keyword, "")
    for keyword, valid in CHECKED_SOURCE_VALUES.items():
        if not absence(first.original, keyword) and not valid(first.original.get(keyword)):
            first.set(keyword, "")
    gap = _ds_number(series.spacing[2])
    if absence(first.original, "SliceThickness"):
        first.set("SliceThickness", gap)
    if len(series.files) > 1 and absence(first.original, "SpacingBetweenSlices"):
        first.set("SpacingBetweenSlices", gap)
    for keyword in ("SpecificCharacterSet", "LossyImageCompression"):
        if absence(first.original, keyword) == "empty":
            first.delete(keyword)
    return [copy.dataset for copy in copies]


def _content_label(modality: str) -> str:
    """highdicom's ``<Modality>_SEG``, or ``SEG`` where the modality is missing or no valid start."""
    modality = modality.strip()
    return f"{modality}_SEG" if re.fullmatch(r"[A-Z][A-Z0-9 _]{0,11}", modality) else "SEG"


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
        datasets: Its files read as pydicom datasets, in the same order (left unchanged).
        classes: Class names, index = label value (``classes[0]`` is the background).
        algorithm: The algorithm's name (the run's recipe) recorded in each segment.
        version: The algorithm's version: what identifies the model's weights (checkpoint, epoch,
            checksum). The SEG's Software Versions is this mireg's.

    Raises:
        DataError: The source cannot be referenced by a correct SEG (:func:`prepare_sources`),
            highdicom refuses a value of it, or highdicom is not installed.
    """
    try:
        import highdicom as hd
        from pydicom.sr.coding import Code
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
    sources = prepare_sources(series, datasets)
    frames = np.ascontiguousarray(labels.transpose(2, 1, 0)).astype(np.uint8)  # (Z, rows, columns)
    try:
        seg = _segmentation(hd, sources, frames, descriptions, algorithm)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # highdicom's checks of the source
        raise DataError(
            f"{series.folder}: cannot write a DICOM SEG of series {series.uid} ({type(exc).__name__}: {exc})",
            _NIFTI_HINT,
        ) from exc
    atomic_write(path, lambda tmp: seg.save_as(tmp))


def _segmentation(
    hd: Any, sources: list[Any], frames: np.ndarray, descriptions: list[Any], algorithm: str
) -> Any:
    """highdicom's SEG object of ``frames`` ``(Z, rows, columns)`` over ``sources``."""
    from pydicom.uid import generate_uid

    import mireg

    first = sources[0]
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=int(getattr(first, "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="mireg",
        manufacturer_model_name=algorithm[:64] or "mireg",
        software_versions=f"mireg {mireg.__version__}"[:64],
        device_serial_number="0",
        series_description=f"{algorithm} segmentation"[:64],
        content_label=_content_label(str(first.get("Modality", "") or "")),
    )


class SegWriter(LabelMapWriter):
    """``mireg predict``'s DICOM SEG output: one SEG per frame segmented, referencing the frame's
    series; for DICOM inputs only."""

    name = "seg"
    per_frame = True

    def check(self, scan: Scan, frames: Sequence[int]) -> None:
        """Whether a SEG can reference each frame's images (from their headers)."""
        if not isinstance(scan, DicomScan):
            raise DataError(
                f"{scan.path}: --format seg needs a DICOM series to reference; this input is {scan.kind}",
                f"use --format nifti for {scan.kind} inputs",
            )
        try:
            import highdicom  # noqa: F401 (only to find out before anything is written)
        except ImportError:
            raise DataError(
                f"{scan.path}: writing DICOM SEG needs highdicom, which is not installed",
                "install the DICOM support: pip install 'mireg[clinic]', or use --format nifti",
            ) from None
        for t in frames:
            series = scan.frame_series[t]
            prepare_sources(series, series.headers())

    def paths(self, scan: Scan, out_dir: Path, tags: Sequence[str]) -> tuple[Path, ...]:
        return tuple(out_dir / f"{scan.name}{tag}.dcm" for tag in tags)

    def write(
        self, path: Path, labels: np.ndarray, scan: Scan, frame: Frame | None, model: ModelInfo
    ) -> None:
        assert frame is not None and frame.source is not None  # a DICOM frame, per frame
        series, datasets = frame.source
        write_segmentation(path, labels, series, datasets, list(model.classes), model.name, model.identity)
