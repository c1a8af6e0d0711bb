"""ACDC (Automated Cardiac Diagnosis Challenge) in its distributed layout, and the ``acdc`` dataset.

Raw layout (the download, or mireg's synthetic cohort, which mimics it)::

    RAW/training/patient001/Info.cfg                   ED: 1, ES: 12, Group: DCM, ...
    RAW/training/patient001/patient001_frame01.nii.gz  (+ _gt.nii.gz: 0 bg, 1 RV, 2 MYO, 3 LV)
    RAW/testing/patient101/...                         (labels optional: unlabelled data)

``RAW`` may also be the folder holding the patient folders directly. The ED and ES frames are read
(``_4d`` files are ignored), preprocessed by :func:`mireg.preprocessing.volume.preprocess_volume` and
written as a :class:`~mireg.preprocessing.store.VolumeStore`.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from mireg.contract import Progress, reject_options
from mireg.data.stored import StoredDatasetConfig
from mireg.errors import DataError
from mireg.io.cine import read_info
from mireg.io.nifti import NIFTI_SUFFIXES, read_scan
from mireg.preprocessing.store import VolumeStore
from mireg.preprocessing.volume import StoreBuilder

__all__ = ["ACDC_CLASSES", "ACDCConfig", "add_acdc", "find_patients", "preprocess_acdc", "read_info"]

ACDC_CLASSES = ["background", "RV", "MYO", "LV"]


def find_patients(raw: Path) -> list[Path]:
    """Patient folders (holding ``Info.cfg``) under ``raw``, sorted by name."""
    if not raw.is_dir():
        raise DataError(f"{raw}: folder not found")
    if (raw / "Info.cfg").is_file():
        return [raw]
    roots = [raw / sub for sub in ("training", "testing") if (raw / sub).is_dir()] or [raw]
    patients = sorted(
        (p for root in roots for p in root.iterdir() if p.is_dir() and (p / "Info.cfg").is_file()),
        key=lambda p: p.name,
    )
    if not patients:
        raise DataError(
            f"{raw}: no ACDC patient folders found (expected training/patientNNN/Info.cfg or "
            "patientNNN/Info.cfg)"
        )
    return patients


def _frame_files(patient: Path, frame: int) -> tuple[Path, Path]:
    stem = f"{patient.name}_frame{frame:02d}"
    for ext in NIFTI_SUFFIXES:
        image = patient / f"{stem}{ext}"
        if image.is_file():
            return image, patient / f"{stem}_gt{ext}"
    return patient / f"{stem}.nii.gz", patient / f"{stem}_gt.nii.gz"


def add_acdc(raw: Path, builder: StoreBuilder, progress: Progress | None = None) -> None:
    """Add the ED and ES frames (and their label maps, where present) of every patient under ``raw``.

    Raises:
        DataError: Naming the file at fault (missing frame, unreadable file, shape or affine
            mismatch between image and label map, label values outside the four ACDC classes).
    """
    builder.classes = list(ACDC_CLASSES)
    patients = find_patients(raw)
    for index, patient in enumerate(patients):
        info = read_info(patient / "Info.cfg")
        for phase in ("ED", "ES"):
            image_file, label_file = _frame_files(patient, int(info[phase]))
            labels = label_file if label_file.is_file() else None
            builder.add_file(
                id=f"{patient.name}_{phase}",
                patient=patient.name,
                read=partial(read_scan, image_file, labels, len(ACDC_CLASSES)),
                phase=phase,
                group=info.get("Group", ""),
                source=str(image_file),
            )
        if progress is not None:
            progress(index + 1, len(patients), "reading ACDC patients")


def preprocess_acdc(
    raw: Path,
    out: Path,
    *,
    spacing: float = 1.0,
    canvas: int = 384,
    progress: Progress | None = None,
    name: str = "acdc",
) -> VolumeStore:
    """Read an ACDC folder (see the module docstring) and write its store at ``out``.

    Args:
        raw: ACDC folder.
        out: Store folder to create (must not exist).
        spacing: Target in-plane spacing in mm.
        canvas: Side of the square canvas slices are padded or cropped to.
        progress: Optional ``progress(done, total, description)``.
        name: Data set name recorded in the store.
    """
    with StoreBuilder(name, spacing, canvas, out) as builder:
        add_acdc(raw, builder, progress)
        return builder.save()


class ACDCConfig(StoredDatasetConfig):
    """``[data] name = "acdc"``: a store made by ``mireg preprocess acdc RAW ROOT``."""

    @classmethod
    def preprocess(
        cls, raw: Path, builder: StoreBuilder, options: dict[str, str], progress: Progress | None = None
    ) -> None:
        reject_options("acdc", options, set())
        add_acdc(raw, builder, progress)
