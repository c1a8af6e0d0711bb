"""Prediction on new scans: NIfTI files or DICOM series in, NIfTI label maps or DICOM SEG out.

A :class:`Predictor` is a network (a trained run's, through torch, or an exported ONNX model's,
through ONNX Runtime) with what it needs to know of its training data; :mod:`mireg.inference`
segments each scan with it on the scan's own grid. This module imports neither torch nor the
optional DICOM and ONNX libraries until a command needs them: ``mireg predict model.onnx`` runs
without torch.

Outputs are named after their input: ``scan.nii.gz`` -> ``OUT/scan.nii.gz``; the DICOM folder
``case7/`` -> ``OUT/case7.dcm`` (SEG) or ``OUT/case7.nii.gz``; probabilities go to
``OUT/<name>_probabilities.nii.gz`` (``(X, Y, Z, C)`` float32 on the scan's grid). Every input is
found, and every DICOM series' headers and geometry checked, before the first prediction; every
file is written atomically.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mireg.data.dicom import DicomSeries  # pydicom itself is imported when a series is read
from mireg.data.nifti import is_nifti, nifti_files, nifti_stem, read_volume, write_label_map
from mireg.errors import DataError
from mireg.inference import InferenceOptions, Network, Preprocessing, predict_volume
from mireg.progress import Progress

__all__ = [
    "FORMATS",
    "Predictor",
    "Scan",
    "collect_inputs",
    "is_exported_model",
    "load_predictor",
    "predict_scans",
]

#: Output formats of label maps.
FORMATS = ("nifti", "seg")


@dataclass(frozen=True)
class Predictor:
    """A network and what is needed to apply it to a scan.

    Attributes:
        network: Slices ``(N, 1, H, W)`` -> logits (:data:`~mireg.inference.Network`).
        preprocessing: The training data's spacing, canvas, classes and intensity percentiles.
        batch: Slices per network call.
        options: The default test-time augmentation and largest-component settings.
        name: The model's name (its recipe's), recorded in DICOM SEG outputs.
        version: The mireg version that trained or exported it.
    """

    network: Network
    preprocessing: Preprocessing
    batch: int
    options: InferenceOptions
    name: str
    version: str


def is_exported_model(path: Path) -> bool:
    """Whether ``path`` names an exported model (``model.onnx``, or its ``model.json``)."""
    return path.suffix in (".onnx", ".json")


def load_predictor(model: Path, checkpoint: str = "best", device: str = "auto") -> Predictor:
    """The predictor of a run directory, a checkpoint file, or an exported ONNX model.

    Raises:
        CheckpointError: No such run, checkpoint or model; or one that does not load.
    """
    if is_exported_model(model):
        from mireg.portable import load_onnx_predictor

        return load_onnx_predictor(model)
    from mireg.evaluate import network_function
    from mireg.rundir import checkpoint_file
    from mireg.runtime import resolve_device
    from mireg.state import load_trained

    trained = load_trained(checkpoint_file(model, checkpoint), resolve_device(device, "--device"))
    return Predictor(
        network=network_function(trained.model, trained.recipe.train.precision),
        preprocessing=trained.preprocessing,
        batch=trained.recipe.train.eval_batch,
        options=trained.recipe.inference.options(),
        name=trained.recipe.name,
        version=str(trained.checkpoint.state.get("mireg_version", "")),
    )


# --------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Scan:
    """One input: a NIfTI file, or one DICOM series of a folder.

    Attributes:
        path: The NIfTI file, or the DICOM folder.
        series: The DICOM series (headers read and geometry checked), or None for NIfTI.
    """

    path: Path
    series: DicomSeries | None = None

    @property
    def name(self) -> str:
        """The output file name's stem: the NIfTI file's, or the DICOM folder's name."""
        return nifti_stem(self.path) if self.series is None else self.path.name

    @property
    def is_dicom(self) -> bool:
        return self.series is not None


def collect_inputs(inputs: Iterable[Path], series_uid: str | None = None) -> list[Scan]:
    """The scans named directly or found (non-recursively) in the folders given.

    A folder holding NIfTI files contributes them (hidden files skipped); any other folder is read
    as DICOM: its one series, or the one ``series_uid`` names. A file named directly must be NIfTI.

    Raises:
        DataError: A missing path, a file that is not NIfTI, a folder with neither NIfTI files nor
            DICOM, a DICOM folder with several series and none chosen (they are listed), a bad
            DICOM file or series (named), or two inputs with the same output name.
    """
    scans: list[Scan] = []
    for path in inputs:
        if path.is_dir():
            files = nifti_files(path, optional=True)
            if files:
                scans.extend(Scan(f) for f in files)
            else:
                scans.append(_dicom_scan(path, series_uid))
        elif path.is_file():
            if not is_nifti(path):
                raise DataError(
                    f"{path}: not a NIfTI file (.nii or .nii.gz)",
                    "give DICOM series as folders (one series per folder, or --series UID)",
                )
            scans.append(Scan(path))
        else:
            raise DataError(f"{path}: no such file or folder")
    names = [s.name for s in scans]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        clash = next(s for s in scans if s.name == duplicates[0])
        raise DataError(
            f"two inputs share the output name {clash.path.name!r}",
            "predict them into different output folders",
        )
    return scans


def _dicom_scan(folder: Path, series_uid: str | None) -> Scan:
    from mireg.data.dicom import dicom_files, find_series, read_series

    if not dicom_files(folder):
        raise DataError(f"{folder}: holds no .nii or .nii.gz files and no DICOM files")
    found = find_series(folder)
    listing = "; ".join(_describe(uid, members) for uid, members in found.items())
    if series_uid is not None:
        if series_uid not in found:
            raise DataError(f"{folder}: no series {series_uid} (--series); it holds {listing}")
        uid = series_uid
    elif len(found) > 1:
        raise DataError(
            f"{folder}: holds {len(found)} DICOM series: {listing}",
            "choose one with --series UID",
        )
    else:
        uid = next(iter(found))
    return Scan(folder, read_series(folder, uid, found[uid]))


def _describe(uid: str, members: list[tuple[Path, Any]]) -> str:
    """``UID (N files, description)`` of a series found in a folder."""
    description = str(members[0][1].get("SeriesDescription", "") or "")
    return f"{uid} ({len(members)} files{', ' + description if description else ''})"


# -------------------------------------------------------------------------------------- outputs


def _format_of(scan: Scan, output_format: str | None) -> str:
    if output_format is None:
        return "seg" if scan.is_dicom else "nifti"
    if output_format not in FORMATS:
        raise DataError(f"--format: {output_format!r} is not one of {', '.join(FORMATS)}")
    if output_format == "seg" and not scan.is_dicom:
        raise DataError(
            f"{scan.path}: --format seg needs a DICOM series to reference; this input is NIfTI",
            "use --format nifti for NIfTI inputs",
        )
    return output_format


def predict_scans(
    predictor: Predictor,
    scans: list[Scan],
    out_dir: Path,
    output_format: str | None = None,
    options: InferenceOptions | None = None,
    save_probabilities: bool = False,
    overlay: bool = False,
    progress: Progress | None = None,
) -> list[Path]:
    """Segment every scan into ``out_dir``; each file is written atomically.

    Args:
        predictor: The network and its preprocessing (:func:`load_predictor`).
        scans: The inputs (:func:`collect_inputs`).
        out_dir: The output folder (created if needed).
        output_format: ``nifti`` or ``seg``; default: ``seg`` for DICOM inputs, ``nifti`` for NIfTI.
        options: Test-time augmentation and largest components; default: the predictor's.
        save_probabilities: Also write the class probabilities (``<name>_probabilities.nii.gz``).
        overlay: Also write a PNG of slices with the predicted contours to ``out_dir/overlays/``.
        progress: ``progress(done, total, description)``.

    Returns:
        The label maps written.
    """
    import nibabel as nib

    formats = [_format_of(scan, output_format) for scan in scans]  # every input checked first
    options = predictor.options if options is None else options
    written = []
    for i, (scan, fmt) in enumerate(zip(scans, formats, strict=True)):
        series, datasets = scan.series, []
        if series is not None:
            datasets = series.datasets()
            image, spacing = series.volume(datasets), series.spacing
            reference = nib.Nifti1Image(np.zeros((1, 1, 1), np.uint8), series.affine)  # geometry only
        else:
            image, _, spacing = read_volume(scan.path)
            loaded = nib.load(str(scan.path))
            assert isinstance(loaded, nib.Nifti1Image)  # read_volume checked it
            reference = loaded
        result = predict_volume(
            predictor.network, image, spacing, predictor.preprocessing, predictor.batch, options
        )
        if fmt == "seg":
            from mireg.data.dicom_seg import write_segmentation

            assert series is not None  # _format_of refused seg for NIfTI
            out = out_dir / f"{scan.name}.dcm"
            write_segmentation(
                out,
                result.labels,
                series,
                datasets,
                predictor.preprocessing.classes,
                predictor.name,
                predictor.version,
            )
        else:
            out = out_dir / (f"{scan.name}.nii.gz" if series is not None else scan.path.name)
            write_label_map(out, result.labels, reference)
        if save_probabilities:
            write_label_map(
                out_dir / f"{scan.name}_probabilities.nii.gz", result.probabilities, reference, np.float32
            )
        if overlay:
            from mireg.plots import save_overlay

            save_overlay(
                out_dir / "overlays" / f"{scan.name}.png",
                image.transpose(2, 0, 1),
                result.labels.transpose(2, 0, 1),
                None,
                scan.path.name,
            )
        written.append(out)
        if progress is not None:
            progress(i + 1, len(scans), scan.path.name)
    return written
