"""DICOM series in: the series of a folder, their geometry checked, and their volumes.

Headers are read with pydicom (``pip install 'mireg[clinic]'``); the volume's geometry comes from
them alone: ImageOrientationPatient (the row and column directions), PixelSpacing, and
ImagePositionPatient projected onto the slice normal (row x column) to order the slices and space
them. File names and InstanceNumber play no part. A series is accepted only when every file is a
single-frame greyscale image of one orientation, size and pixel spacing, and its slices are evenly
spaced along the normal with none missing; anything else is a :class:`~mireg.errors.DataError`
naming the file.

A volume is ``(X, Y, Z)`` like a NIfTI one: X along the rows (the column index), Y down the columns
(the row index), Z along the normal. :attr:`DicomSeries.affine` maps voxel indices to RAS+
millimetres, as nibabel's affines do (DICOM's patient coordinates are LPS+).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mireg.errors import DataError

__all__ = ["DicomSeries", "dicom_files", "find_series", "read_series"]

#: Direction cosines that differ by more than this are different orientations.
ORIENTATION_TOLERANCE = 1e-4

#: A slice gap may differ from the series' median gap by this share of it (positions are decimal
#: strings of limited precision).
SPACING_TOLERANCE = 0.01

_INSTALL_HINT = "install the DICOM support: pip install 'mireg[clinic]'"


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError:
        raise DataError("reading DICOM needs pydicom, which is not installed", _INSTALL_HINT) from None
    return pydicom


@dataclass(frozen=True)
class DicomSeries:
    """One series, its files sorted along the slice normal, and its checked geometry.

    Attributes:
        folder: The folder it was found in.
        uid: SeriesInstanceUID.
        files: The files, first slice first (increasing position along the normal).
        shape: ``(X, Y, Z)``: columns, rows, slices.
        spacing: ``(x, y, z)`` mm: column spacing, row spacing, slice gap.
        affine: Voxel index ``(x, y, z)`` -> RAS+ mm.
        description: SeriesDescription (may be empty).
        modality: Modality (may be empty).
    """

    folder: Path
    uid: str
    files: tuple[Path, ...]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray
    description: str = ""
    modality: str = ""

    def datasets(self) -> list[Any]:
        """The files read whole (pixel data included) as pydicom datasets, first slice first."""
        pydicom = _pydicom()
        out = []
        for path in self.files:
            try:
                out.append(pydicom.dcmread(path))
            except Exception as exc:  # pydicom raises many types for damaged files
                raise DataError(f"{path}: cannot read DICOM file ({type(exc).__name__}: {exc})") from exc
        return out

    def volume(self, datasets: Sequence[Any] | None = None) -> np.ndarray:
        """The intensities ``(X, Y, Z)`` (float32, Rescale Slope and Intercept applied)."""
        from pydicom.pixels.processing import apply_modality_lut

        datasets = self.datasets() if datasets is None else datasets
        slices = []
        for path, ds in zip(self.files, datasets, strict=True):
            try:
                pixels = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float32)
            except Exception as exc:  # missing decoder, truncated pixel data, ...
                raise DataError(
                    f"{path}: cannot decode its pixel data ({type(exc).__name__}: {exc})"
                ) from exc
            slices.append(pixels.T)  # (rows, columns) -> (X, Y)
        volume = np.stack(slices, axis=2)
        if not np.isfinite(volume).all():
            raise DataError(f"{self.folder}: series {self.uid} has NaN or infinite intensities")
        return volume


def dicom_files(folder: Path) -> list[Path]:
    """The candidate files of a DICOM folder: every regular, non-hidden file in it, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _read_header(path: Path) -> Any:
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except pydicom.errors.InvalidDicomError:
        raise DataError(
            f"{path}: not a DICOM file", "a DICOM folder may hold only the images of its series"
        ) from None
    except Exception as exc:
        raise DataError(f"{path}: cannot read DICOM file ({type(exc).__name__}: {exc})") from exc


def find_series(folder: Path) -> dict[str, list[tuple[Path, Any]]]:
    """The series of a folder: SeriesInstanceUID -> ``(file, header)`` of each of its files.

    Raises:
        DataError: A file is not DICOM, or not a single-frame greyscale image with a position and
            orientation (a report, a segmentation, a multi-frame image...), or has no
            SeriesInstanceUID.
    """
    series: dict[str, list[tuple[Path, Any]]] = {}
    for path in dicom_files(folder):
        header = _read_header(path)
        _check_image(path, header)
        uid = str(getattr(header, "SeriesInstanceUID", "") or "")
        if not uid:
            raise DataError(f"{path}: no SeriesInstanceUID (0020,000E)")
        series.setdefault(uid, []).append((path, header))
    return series


def _require(path: Path, header: Any, keyword: str, tag: str) -> Any:
    value = getattr(header, keyword, None)
    if value is None or value == "":
        sop = getattr(header, "SOPClassUID", None)
        kind = f" ({sop.name})" if sop is not None and hasattr(sop, "name") else ""
        raise DataError(
            f"{path}: not an image slice with a position{kind}: {keyword} {tag} is missing",
            "a DICOM folder may hold only the single-frame images of its series",
        )
    return value


def _check_image(path: Path, header: Any) -> None:
    """Raise a :class:`DataError` naming ``path`` unless it is a slice that can join a volume."""
    for keyword, tag in (
        ("ImageOrientationPatient", "(0020,0037)"),
        ("ImagePositionPatient", "(0020,0032)"),
        ("PixelSpacing", "(0028,0030)"),
        ("Rows", "(0028,0010)"),
        ("Columns", "(0028,0011)"),
    ):
        _require(path, header, keyword, tag)
    frames = int(getattr(header, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(f"{path}: NumberOfFrames (0028,0008) is {frames}; only single-frame images are read")
    samples = int(getattr(header, "SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise DataError(f"{path}: SamplesPerPixel (0028,0002) is {samples}; only greyscale images are read")


def read_series(folder: Path, uid: str, members: list[tuple[Path, Any]]) -> DicomSeries:
    """Check the geometry of one series and sort its files along the slice normal.

    Args:
        folder: The folder the series was found in (for messages).
        uid: Its SeriesInstanceUID.
        members: ``(file, header)`` of each of its files (:func:`find_series`).

    Raises:
        DataError: Naming the file at fault: not an image, multi-frame or colour, another
            orientation, size or pixel spacing than the series' first file, two slices at one
            position, slices off the normal, a missing slice, or uneven slice spacing.
    """
    first_path, first = members[0]
    geometry = []
    for path, header in members:
        orientation = np.array(_require(path, header, "ImageOrientationPatient", "(0020,0037)"), float)
        position = np.array(_require(path, header, "ImagePositionPatient", "(0020,0032)"), float)
        pixel = np.array(_require(path, header, "PixelSpacing", "(0028,0030)"), float)
        size = (
            int(_require(path, header, "Rows", "(0028,0010)")),
            int(_require(path, header, "Columns", "(0028,0011)")),
        )
        if orientation.shape != (6,) or position.shape != (3,) or pixel.shape != (2,) or (pixel <= 0).any():
            raise DataError(
                f"{path}: malformed ImageOrientationPatient, ImagePositionPatient or PixelSpacing"
            )
        geometry.append((path, orientation, position, pixel, size))
    _, orientation0, _, pixel0, size0 = geometry[0]
    for path, orientation, _, pixel, size in geometry[1:]:
        if np.abs(orientation - orientation0).max() > ORIENTATION_TOLERANCE:
            raise DataError(
                f"{path}: ImageOrientationPatient {orientation.round(5).tolist()} differs from "
                f"{first_path.name}'s {orientation0.round(5).tolist()} (series {uid})",
                "a series must have one orientation; split it into one folder per orientation",
            )
        if size != size0:
            raise DataError(
                f"{path}: Rows x Columns {size[0]}x{size[1]}, {first_path.name} has "
                f"{size0[0]}x{size0[1]} (series {uid})"
            )
        if np.abs(pixel - pixel0).max() > 1e-4 * pixel0.max():
            raise DataError(
                f"{path}: PixelSpacing {pixel.tolist()} differs from {first_path.name}'s {pixel0.tolist()}"
            )
    row, column = orientation0[:3], orientation0[3:]
    normal = np.cross(row, column)
    if abs(np.linalg.norm(normal) - 1) > 1e-3 or abs(row @ column) > 1e-3:
        raise DataError(
            f"{first_path}: ImageOrientationPatient {orientation0.tolist()} is not two orthogonal "
            "unit vectors"
        )
    order = sorted(range(len(geometry)), key=lambda i: float(geometry[i][2] @ normal))
    files = [geometry[i][0] for i in order]
    positions = np.array([geometry[i][2] for i in order])
    along = positions @ normal
    gap = _slice_gap(files, along, first)
    offsets = positions - positions[0]
    off_normal = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1)
    worst = int(np.argmax(off_normal))
    if off_normal[worst] > max(1e-2, SPACING_TOLERANCE * gap):
        raise DataError(
            f"{files[worst]}: ImagePositionPatient is {off_normal[worst]:.3g} mm off the slice normal "
            f"through {files[0].name} (a tilted or sheared series)",
            "resample the series onto a regular grid first",
        )
    lps = np.eye(4)
    lps[:3, 0] = row * pixel0[1]
    lps[:3, 1] = column * pixel0[0]
    lps[:3, 2] = normal * gap
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS+ -> RAS+
    return DicomSeries(
        folder=folder,
        uid=uid,
        files=tuple(files),
        shape=(size0[1], size0[0], len(files)),
        spacing=(float(pixel0[1]), float(pixel0[0]), gap),
        affine=affine,
        description=str(getattr(first, "SeriesDescription", "") or ""),
        modality=str(getattr(first, "Modality", "") or ""),
    )


def _slice_gap(files: list[Path], along: np.ndarray, first: Any) -> float:
    """The series' slice gap in mm, after checking that the slices are evenly spaced."""
    if len(files) == 1:
        thickness = float(
            getattr(first, "SpacingBetweenSlices", 0) or getattr(first, "SliceThickness", 0) or 1
        )
        return thickness
    gaps = np.diff(along)
    for i, g in enumerate(gaps):
        if g < 1e-3:
            raise DataError(f"{files[i + 1]}: at the same position along the slice normal as {files[i].name}")
    gap = float(np.median(gaps))
    for i, g in enumerate(gaps):
        if abs(g - gap) > SPACING_TOLERANCE * gap:
            ratio = g / gap
            if ratio > 1.5 and abs(ratio - round(ratio)) < 0.1:
                raise DataError(
                    f"{files[i + 1]}: {round(ratio) - 1} slice(s) missing before it: {g:.4g} mm from "
                    f"{files[i].name}, the series' slices are {gap:.4g} mm apart"
                )
            raise DataError(
                f"{files[i + 1]}: non-uniform slice spacing: {g:.4g} mm from {files[i].name}, "
                f"{gap:.4g} mm between the series' other slices"
            )
    return gap
