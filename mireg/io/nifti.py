"""Reading and writing NIfTI volumes with errors that name the file; the NIfTI scan reader and
label-map writer of ``mireg predict`` (:mod:`mireg.io.formats`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path

import nibabel as nib
import numpy as np

from mireg.errors import DataError
from mireg.files import atomic_write
from mireg.io.cine import acdc_phases
from mireg.io.formats import Frame, LabelMapWriter, ModelInfo, Scan, ScanReader
from mireg.preprocessing.volume import RawVolume, StoreBuilder
from mireg.progress import Progress

__all__ = [
    "NIFTI_SUFFIXES",
    "NiftiReader",
    "NiftiScan",
    "NiftiWriter",
    "add_unlabeled_folder",
    "is_nifti",
    "nifti_files",
    "nifti_shape",
    "nifti_reference",
    "nifti_stem",
    "read_frames",
    "read_label_for",
    "read_scan",
    "read_volume",
    "write_label_map",
]

#: File name endings of NIfTI files (longest first, so that stripping one leaves the stem).
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _unreadable(path: Path, exc: Exception) -> DataError:
    return DataError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})")


def _open(path: Path) -> nib.Nifti1Image:
    """The file's image (its header read, its data not yet), or a :class:`DataError` naming it."""
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise _unreadable(path, exc) from exc
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise DataError(f"{path}: not a NIfTI image")
    return img


def _load(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """The file's array (float32) and image, or a :class:`DataError` naming the file."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    img = _open(path)
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for truncated files
        raise _unreadable(path, exc) from exc
    return data, img


def _checked(path: Path, data: np.ndarray, img: nib.Nifti1Image) -> tuple[float, float, float]:
    """Check the values and the spacing of a read array; return the voxel spacing."""
    if data.size == 0:
        raise DataError(f"{path}: empty volume (shape {data.shape})")
    if not np.isfinite(data).all():
        raise DataError(f"{path}: contains NaN or infinite values")
    zooms = [float(z) for z in img.header.get_zooms()[:3]] + [1.0] * 3
    spacing = (zooms[0], zooms[1], zooms[2])
    if any(s <= 0 for s in spacing):
        raise DataError(f"{path}: invalid voxel spacing {spacing} in the header")
    return spacing


def read_volume(
    path: Path, *, label: bool = False, channel: int | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read a 3D NIfTI file.

    Args:
        path: The ``.nii`` or ``.nii.gz`` file.
        label: Whether it is a label map (values must then be non-negative integers).
        channel: For a 4D (multi-channel) file, the channel to take.

    Returns:
        The array ``(X, Y, Z)`` (float32, or int64 for labels), the affine and the voxel spacing.

    Raises:
        DataError: Missing, unreadable or truncated file, wrong dimension, an empty volume,
            non-integer labels.
    """
    data, img = _load(path)
    if data.ndim == 4 and channel is not None:
        if not 0 <= channel < data.shape[3]:
            raise DataError(f"{path}: has {data.shape[3]} channels, channel {channel} requested")
        data = data[..., channel]
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {data.shape}")
    spacing = _checked(path, data, img)
    if label:
        if data.min() < 0 or not np.array_equal(data, np.round(data)):
            raise DataError(f"{path}: label map has non-integer or negative values")
        return data.astype(np.int64), img.affine, spacing
    return data, img.affine, spacing


def read_frames(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read a NIfTI scan as frames in time: a 4D file ``(X, Y, Z, T)`` (cine), or a 3D one as one frame.

    Returns:
        The array ``(X, Y, Z, T)`` (float32), the affine and the voxel spacing.

    Raises:
        DataError: Missing, unreadable or truncated file, more than 4 dimensions, an empty volume.
    """
    data, img = _load(path)
    while data.ndim > 4 and data.shape[-1] == 1:  # (X, Y, Z, T, 1): trailing axes of one
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise DataError(f"{path}: expected a 3D volume or a 4D cine (X, Y, Z, T), got shape {data.shape}")
    return data, img.affine, _checked(path, data, img)


def nifti_shape(path: Path) -> tuple[int, ...]:
    """The array shape a NIfTI file's header declares (the data is not read), without trailing axes of
    one beyond the fourth (``(X, Y, Z, T, 1)`` is ``(X, Y, Z, T)``)."""
    shape = [int(n) for n in _open(path).shape]
    while len(shape) > 4 and shape[-1] == 1:
        shape.pop()
    return tuple(shape)


def read_label_for(
    path: Path, image: np.ndarray, affine: np.ndarray, image_path: Path, num_classes: int
) -> np.ndarray:
    """Read the label map of ``image`` and check that it fits: same shape and affine, known labels."""
    label, label_affine, _ = read_volume(path, label=True)
    if label.shape != image.shape:
        raise DataError(
            f"{path}: shape {label.shape} differs from the image's {image.shape} ({image_path.name})"
        )
    if not np.allclose(label_affine, affine, atol=1e-3):
        raise DataError(f"{path}: affine differs from the image's ({image_path.name})")
    if label.max() >= num_classes:
        raise DataError(f"{path}: label value {int(label.max())} outside the classes 0..{num_classes - 1}")
    return label


def read_scan(
    image_file: Path,
    label_file: Path | None = None,
    num_classes: int = 256,
    channel: int | None = None,
) -> RawVolume:
    """Read a scan, and its label map when given (checked with :func:`read_label_for`): the reader
    that datasets hand to :meth:`StoreBuilder.add_file <mireg.preprocessing.volume.StoreBuilder.add_file>`
    (through ``functools.partial``)."""
    image, affine, spacing = read_volume(image_file, channel=channel)
    label = None
    if label_file is not None:
        label = read_label_for(label_file, image, affine, image_file, num_classes)
    return RawVolume(image, affine, spacing, label)


def write_label_map(
    path: Path, labels: np.ndarray, reference: nib.Nifti1Image, dtype: type = np.uint8
) -> None:
    """Write ``labels`` with the geometry (affine and header) of ``reference``, atomically.

    ``dtype`` is the stored type: ``uint8`` for label maps, ``float32`` for probabilities (a 4th
    axis then holds the classes).
    """
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    out = nib.Nifti1Image(labels.astype(dtype), reference.affine, header)
    atomic_write(path, lambda tmp: nib.save(out, str(tmp)))


def is_nifti(path: Path) -> bool:
    """Whether ``path`` is named like a NIfTI file (``.nii`` or ``.nii.gz``)."""
    return path.name.endswith(NIFTI_SUFFIXES)


def nifti_stem(path: Path) -> str:
    """File name without ``.nii`` / ``.nii.gz`` (``case.nii.gz`` -> ``case``)."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name.removesuffix(suffix)
    return path.name


def nifti_files(folder: Path, *, optional: bool = False) -> list[Path]:
    """The NIfTI files directly in ``folder`` (not in its subfolders), sorted by name.

    Hidden files are skipped: archives made on macOS carry ``._CASE.nii.gz`` resource forks next to
    the real scans, named like NIfTI files but holding none.

    Args:
        folder: The folder to list.
        optional: Whether a missing folder, or one holding no NIfTI file, gives ``[]``.

    Raises:
        DataError: ``folder`` does not exist or holds no NIfTI file (unless ``optional``).
    """
    if not folder.is_dir():
        if optional:
            return []
        raise DataError(f"{folder}: folder not found")
    files = sorted(
        (p for p in folder.iterdir() if is_nifti(p) and not p.name.startswith(".") and p.is_file()),
        key=lambda p: p.name,
    )
    if not files and not optional:
        raise DataError(f"{folder}: holds no .nii or .nii.gz files")
    return files


def add_unlabeled_folder(folder: Path, builder: StoreBuilder, progress: Progress | None = None) -> None:
    """Add every NIfTI scan in ``folder`` as an unlabelled volume (its own patient ``folder/stem``)."""
    files = nifti_files(folder)
    for i, path in enumerate(files):
        patient = f"{folder.name}/{nifti_stem(path)}"
        builder.add_file(id=patient, patient=patient, read=partial(read_scan, path), source=str(path))
        if progress is not None:
            progress(i + 1, len(files), f"reading unlabelled scans of {folder.name}")


# ------------------------------------------------------------------------ mireg predict's format


@dataclass(frozen=True)
class NiftiScan(Scan):
    """A NIfTI file: one volume ``(X, Y, Z)``, or a cine scan ``(X, Y, Z, T)``."""

    kind = "NIfTI"
    path: Path

    @cached_property
    def shape(self) -> tuple[int, ...]:
        """The array shape its header declares (read once, the data not read).

        Raises:
            DataError: An unreadable file, or one of more than 4 dimensions.
        """
        shape = nifti_shape(self.path)
        if len(shape) > 4:
            raise DataError(
                f"{self.path}: {len(shape)} dimensions {shape}; a scan is 3D, or 4D (X, Y, Z, T) for cine"
            )
        return shape

    @property
    def name(self) -> str:
        return nifti_stem(self.path)

    @property
    def n_frames(self) -> int:
        return self.shape[3] if len(self.shape) == 4 else 1

    @property
    def affine(self) -> np.ndarray:
        affine: np.ndarray = _open(self.path).affine
        return affine

    @property
    def input_files(self) -> list[Path]:
        return [self.path]

    def read(self, frames: Sequence[int]) -> Iterator[Frame]:
        data, affine, spacing = read_frames(self.path)
        for t in frames:
            yield Frame(t, data[..., t], affine, spacing)

    def phases(self) -> tuple[int, int] | None:
        """From ACDC's ``Info.cfg`` beside the file, where the phases segmented are known."""
        return acdc_phases(self.path)


class NiftiReader(ScanReader):
    """NIfTI files (``.nii``, ``.nii.gz``), named or found directly in a folder."""

    name = "nifti"
    file_kind = "a NIfTI file (.nii or .nii.gz)"
    contents = ".nii or .nii.gz files"

    def find(self, path: Path) -> list[Path]:
        if path.is_dir():
            return nifti_files(path, optional=True)
        return [path] if is_nifti(path) else []

    def output_name(self, path: Path) -> str:
        return nifti_stem(path)

    def open(self, path: Path, series: str | None = None) -> NiftiScan:
        return NiftiScan(path)


def nifti_reference(scan: Scan) -> nib.Nifti1Image:
    """The image whose affine and header NIfTI outputs of ``scan`` take: a NIfTI input's own, else
    one with the scan's geometry only."""
    if isinstance(scan, NiftiScan):
        return _open(scan.path)
    return nib.Nifti1Image(np.zeros((1, 1, 1), np.uint8), scan.affine)


class NiftiWriter(LabelMapWriter):
    """Label maps as NIfTI (uint8) on the scan's grid, with its geometry: one file per scan, 4D for
    the frames segmented of a cine scan. A NIfTI input's label map takes its file name."""

    name = "nifti"

    def paths(self, scan: Scan, out_dir: Path, tags: Sequence[str]) -> tuple[Path, ...]:
        return (out_dir / (scan.path.name if isinstance(scan, NiftiScan) else f"{scan.name}.nii.gz"),)

    def write(
        self, path: Path, labels: np.ndarray, scan: Scan, frame: Frame | None, model: ModelInfo
    ) -> None:
        write_label_map(path, labels, nifti_reference(scan))
