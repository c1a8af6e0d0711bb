"""DICOM series in: the series of a folder, their geometry checked, their frames, and their volumes.

Headers are read with pydicom (``pip install 'mireg[clinic]'``); the volume's geometry comes from
them alone: ImageOrientationPatient (the row and column directions), PixelSpacing, and
ImagePositionPatient projected onto the slice normal (row x column) to order the slices and space
them. File names and InstanceNumber play no part. A series is accepted only when every file is a
single-frame greyscale image of one orientation, size and pixel spacing, and its slices are evenly
spaced along the normal with none missing; anything else is a :class:`~mireg.errors.DataError`
naming the file.

Positions are decimal strings, often rounded (a 0.625 mm CT series with positions to 0.1 mm): a
slice gap may differ from the series' gap by what rounding the two positions to the decimals they
are written with can account for (at most half a gap), or by 1 % of the gap, whichever is more. The
series' gap is then the best estimate from all positions: first to last over the number of gaps.

A cine series holds several frames (phases) at each slice position; :func:`read_frames` splits it by
TemporalPositionIdentifier, or else by TriggerTime, into one :class:`DicomSeries` per frame, in time
order, every frame with the same slice positions.

A volume is ``(X, Y, Z)`` like a NIfTI one: X along the rows (the column index), Y down the columns
(the row index), Z along the normal. :attr:`DicomSeries.affine` maps voxel indices to RAS+
millimetres, as nibabel's affines do (DICOM's patient coordinates are LPS+). Intensities are the
modality values (Rescale Slope and Intercept, or a Modality LUT, applied), flipped for MONOCHROME1
images so that they increase with brightness as MONOCHROME2 ones do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mireg.errors import DataError

__all__ = ["DicomSeries", "absence", "dicom_files", "find_series", "read_frames", "read_series"]

#: Direction cosines that differ by more than this are different orientations.
ORIENTATION_TOLERANCE = 1e-4

#: A slice gap may differ from the series' gap by this share of it, or by what rounding its two
#: positions to their decimals can account for, whichever is more.
SPACING_TOLERANCE = 0.01

#: Slices closer than this along the normal (mm) are at one position.
SAME_POSITION = 1e-3

#: Trigger times closer than this (ms) are one time.
TRIGGER_TIME_TOLERANCE = 0.01

#: The photometric interpretations read (greyscale).
GREYSCALE = ("MONOCHROME1", "MONOCHROME2")

_INSTALL_HINT = "install the DICOM support: pip install 'mireg[clinic]'"

#: Attributes of the Image Pixel module that decoding needs (all type 1).
_PIXEL_MODULE = (
    ("SamplesPerPixel", "(0028,0002)"),
    ("PhotometricInterpretation", "(0028,0004)"),
    ("BitsAllocated", "(0028,0100)"),
    ("BitsStored", "(0028,0101)"),
    ("PixelRepresentation", "(0028,0103)"),
)

_TEMPORAL_POSITION = ("TemporalPositionIdentifier", "(0020,0100)")
_TRIGGER_TIME = ("TriggerTime", "(0018,1060)")


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError:
        raise DataError("reading DICOM needs pydicom, which is not installed", _INSTALL_HINT) from None
    return pydicom


def absence(header: Any, keyword: str) -> str | None:
    """``"missing"`` or ``"empty"`` if ``header`` has no value for ``keyword``, else None."""
    if keyword not in header:
        return "missing"
    value = header.get(keyword)
    if value is None or (isinstance(value, (str, bytes, list, tuple)) and len(value) == 0):
        return "empty"
    try:
        if len(value) == 0:  # an empty MultiValue
            return "empty"
    except TypeError:
        pass
    return None


@dataclass(frozen=True)
class DicomSeries:
    """One series (or one frame of a cine series), its files sorted along the slice normal, and its
    checked geometry.

    Attributes:
        folder: The folder it was found in.
        uid: SeriesInstanceUID.
        files: The files, first slice first (increasing position along the normal).
        shape: ``(X, Y, Z)``: columns, rows, slices.
        spacing: ``(x, y, z)`` mm: column spacing, row spacing, slice gap.
        affine: Voxel index ``(x, y, z)`` -> RAS+ mm.
        description: SeriesDescription (may be empty).
        modality: Modality (may be empty).
        frame: The frame's index in time order (0 for a series of one frame).
        trigger_time: The frame's TriggerTime in ms (the median of its files'), where a cine series
            has one in every file; None otherwise.
        frames: How many frames the series has (1 unless it is a cine series).
    """

    folder: Path
    uid: str
    files: tuple[Path, ...]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray
    description: str = ""
    modality: str = ""
    frame: int = 0
    trigger_time: float | None = None
    frames: int = 1

    def headers(self) -> list[Any]:
        """The files' headers (no pixel data) as pydicom datasets, first slice first."""
        return [_read_header(path) for path in self.files]

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
        """The intensities ``(X, Y, Z)`` (float32): modality values (Rescale Slope and Intercept or
        a Modality LUT applied), increasing with brightness (MONOCHROME1 images are flipped).

        Raises:
            DataError: Naming the file and attribute: an Image Pixel attribute decoding needs is
                missing or empty, the pixel data is missing or cannot be decoded, RescaleSlope is 0,
                or the intensities are not finite.
        """
        datasets = self.datasets() if datasets is None else datasets
        slices = [_intensities(path, ds).T for path, ds in zip(self.files, datasets, strict=True)]
        volume = np.stack(slices, axis=2)  # (rows, columns) -> (X, Y) above
        if not np.isfinite(volume).all():
            raise DataError(f"{self.folder}: series {self.uid} has NaN or infinite intensities")
        return volume


def _check_pixel_module(path: Path, header: Any) -> str:
    """Raise unless ``header`` has what decoding its pixels needs; its PhotometricInterpretation."""
    for keyword, tag in _PIXEL_MODULE:
        absent = absence(header, keyword)
        if absent:
            raise DataError(
                f"{path}: {keyword} {tag} is {absent}; the pixel data cannot be read without it",
                "the file's Image Pixel module is incomplete; export the series again from its source",
            )
    samples = int(header.SamplesPerPixel)
    if samples != 1:
        raise DataError(f"{path}: SamplesPerPixel (0028,0002) is {samples}; only greyscale images are read")
    photometric = str(header.PhotometricInterpretation).strip()
    if photometric not in GREYSCALE:
        raise DataError(
            f"{path}: PhotometricInterpretation (0028,0004) is {photometric!r}; only greyscale images "
            f"({', '.join(GREYSCALE)}) are read"
        )
    return photometric


def _number(path: Path, header: Any, keyword: str, tag: str, integer: bool = False) -> float | None:
    """A numeric attribute's value, None where it is missing or empty; a :class:`DataError` naming
    the file and attribute where it is not a number (an integer, if ``integer``)."""
    if absence(header, keyword):
        return None
    value = header.get(keyword)
    try:
        return int(value) if integer else float(value)
    except (TypeError, ValueError):
        raise DataError(
            f"{path}: {keyword} {tag} is {value!r}, not {'an integer' if integer else 'a number'}"
        ) from None


def _rescale(path: Path, ds: Any, keyword: str, tag: str, default: float) -> float:
    """RescaleSlope or RescaleIntercept, ``default`` where missing or empty."""
    value = _number(path, ds, keyword, tag)
    return default if value is None else value


def _modality_values(path: Path, ds: Any, stored: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The modality values of ``stored`` pixels, and the lowest and highest the file can hold."""
    from pydicom.pixels.processing import apply_modality_lut

    bits, signed = int(ds.BitsStored), int(ds.PixelRepresentation) == 1
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if ds.get("ModalityLUTSequence"):
        descriptor = ds.ModalityLUTSequence[0].LUTDescriptor
        entries, first = int(descriptor[0]) or 1 << 16, int(descriptor[1])
        table = np.asarray(apply_modality_lut(np.arange(first, first + entries), ds), np.float64)
        values = np.asarray(apply_modality_lut(stored, ds), np.float64)
        return values, float(table.min()), float(table.max())
    slope = _rescale(path, ds, "RescaleSlope", "(0028,1053)", 1.0)
    intercept = _rescale(path, ds, "RescaleIntercept", "(0028,1052)", 0.0)
    if slope == 0:
        raise DataError(f"{path}: RescaleSlope (0028,1053) is 0; every pixel would have one value")
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return stored.astype(np.float64) * slope + intercept, ends[0], ends[1]


def _intensities(path: Path, ds: Any) -> np.ndarray:
    """One file's intensities ``(rows, columns)`` (float32), increasing with brightness."""
    photometric = _check_pixel_module(path, ds)
    for keyword, tag in (
        ("PixelData", "(7FE0,0010)"),
        ("FloatPixelData", "(7FE0,0008)"),
        ("DoubleFloatPixelData", "(7FE0,0009)"),
    ):
        if keyword in ds:
            absent = absence(ds, keyword)
            if absent:
                raise DataError(f"{path}: {keyword} {tag} is {absent}; the file holds no image")
            break
    else:
        raise DataError(f"{path}: PixelData (7FE0,0010) is missing; the file holds no image")
    try:
        stored = np.asarray(ds.pixel_array)
    except Exception as exc:  # missing decoder, truncated pixel data, ...
        raise DataError(f"{path}: cannot decode its pixel data ({type(exc).__name__}: {exc})") from exc
    values, low, high = _modality_values(path, ds, stored)
    if photometric == "MONOCHROME1":  # the lowest value is the brightest: flip within the range
        values = (low + high) - values
    return values.astype(np.float32)


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
            orientation (a report, a segmentation, a multi-frame image...), lacks an Image Pixel
            attribute that decoding needs, or has no SeriesInstanceUID.
    """
    series: dict[str, list[tuple[Path, Any]]] = {}
    for path in dicom_files(folder):
        header = _read_header(path)
        _check_image(path, header)
        absent = absence(header, "SeriesInstanceUID")
        if absent:
            raise DataError(
                f"{path}: no SeriesInstanceUID (0020,000E) (it is {absent}); the files of a series are "
                "told apart from others' by it"
            )
        uid = str(header.SeriesInstanceUID)
        series.setdefault(uid, []).append((path, header))
    return series


def _require(path: Path, header: Any, keyword: str, tag: str) -> Any:
    absent = absence(header, keyword)
    if absent:
        sop = getattr(header, "SOPClassUID", None)
        kind = f" ({sop.name})" if sop is not None and hasattr(sop, "name") else ""
        raise DataError(
            f"{path}: not an image slice with a position{kind}: {keyword} {tag} is {absent}",
            "a DICOM folder may hold only the single-frame images of its series",
        )
    return header.get(keyword)


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
    _check_pixel_module(path, header)


def _half_unit(value: Any) -> float:
    """Half a unit in the last decimal place of a decimal string (``"-12.5"``: 0.05): how far
    rounding to the decimals it is written with may have moved it."""
    text = str(getattr(value, "original_string", None) or value).strip().lower()
    mantissa, _, exponent = text.partition("e")
    decimals = len(mantissa.partition(".")[2])
    try:
        shift = int(exponent) if exponent else 0
    except ValueError:
        shift = 0
    return 0.5 * 10.0 ** (shift - decimals)


@dataclass(frozen=True)
class _Slice:
    path: Path
    header: Any
    position: np.ndarray  # ImagePositionPatient, LPS+ mm
    rounding: np.ndarray  # how far rounding may have moved each coordinate (mm)


@dataclass(frozen=True)
class _Grid:
    """What every slice of a series shares: orientation, pixel spacing, size."""

    orientation: np.ndarray  # (6,): row direction, column direction
    pixel: np.ndarray  # PixelSpacing: row spacing, column spacing
    size: tuple[int, int]  # rows, columns
    normal: np.ndarray

    def along(self, s: _Slice) -> float:
        return float(s.position @ self.normal)

    def along_rounding(self, s: _Slice) -> float:
        """How far rounding its position's coordinates may have moved a slice along the normal."""
        return float(np.abs(self.normal) @ s.rounding)


def _slices(uid: str, members: list[tuple[Path, Any]]) -> tuple[list[_Slice], _Grid]:
    """Every file's position, checked to share the first file's orientation, size and spacing."""
    first_path = members[0][0]
    slices, grids = [], []
    for path, header in members:
        orientation = np.array(_require(path, header, "ImageOrientationPatient", "(0020,0037)"), float)
        raw_position = _require(path, header, "ImagePositionPatient", "(0020,0032)")
        position = np.array(raw_position, float)
        pixel = np.array(_require(path, header, "PixelSpacing", "(0028,0030)"), float)
        size = (
            int(_require(path, header, "Rows", "(0028,0010)")),
            int(_require(path, header, "Columns", "(0028,0011)")),
        )
        if orientation.shape != (6,) or position.shape != (3,) or pixel.shape != (2,) or (pixel <= 0).any():
            raise DataError(
                f"{path}: malformed ImageOrientationPatient, ImagePositionPatient or PixelSpacing"
            )
        slices.append(_Slice(path, header, position, np.array([_half_unit(v) for v in raw_position])))
        grids.append((orientation, pixel, size))
    orientation0, pixel0, size0 = grids[0]
    for s, (orientation, pixel, size) in zip(slices[1:], grids[1:], strict=True):
        if np.abs(orientation - orientation0).max() > ORIENTATION_TOLERANCE:
            raise DataError(
                f"{s.path}: ImageOrientationPatient {orientation.round(5).tolist()} differs from "
                f"{first_path.name}'s {orientation0.round(5).tolist()} (series {uid})",
                "a series must have one orientation; split it into one folder per orientation",
            )
        if size != size0:
            raise DataError(
                f"{s.path}: Rows x Columns {size[0]}x{size[1]}, {first_path.name} has "
                f"{size0[0]}x{size0[1]} (series {uid})"
            )
        if np.abs(pixel - pixel0).max() > 1e-4 * pixel0.max():
            raise DataError(
                f"{s.path}: PixelSpacing {pixel.tolist()} differs from {first_path.name}'s {pixel0.tolist()}"
            )
    row, column = orientation0[:3], orientation0[3:]
    normal = np.cross(row, column)
    if abs(np.linalg.norm(normal) - 1) > 1e-3 or abs(row @ column) > 1e-3:
        raise DataError(
            f"{first_path}: ImageOrientationPatient {orientation0.tolist()} is not two orthogonal "
            "unit vectors"
        )
    return slices, _Grid(orientation0, pixel0, size0, normal)


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
    slices, grid = _slices(uid, members)
    return _series(folder, uid, slices, grid)


def _series(
    folder: Path,
    uid: str,
    slices: list[_Slice],
    grid: _Grid,
    frame: int = 0,
    frames: int = 1,
    trigger_time: float | None = None,
) -> DicomSeries:
    """The volume of ``slices`` (one series, or one frame of a cine): sorted, spaced and checked."""
    ordered = sorted(slices, key=grid.along)
    files = [s.path for s in ordered]
    along = np.array([grid.along(s) for s in ordered])
    rounding = np.array([grid.along_rounding(s) for s in ordered])
    gap = _slice_gap(files, along, rounding, ordered[0].header)
    positions = np.array([s.position for s in ordered])
    offsets = positions - positions[0]
    off_normal = np.linalg.norm(offsets - np.outer(offsets @ grid.normal, grid.normal), axis=1)
    # Rounding each coordinate of a position and of the first one moves them this far at most.
    allowed = np.array([np.linalg.norm(s.rounding) + np.linalg.norm(ordered[0].rounding) for s in ordered])
    allowed = np.maximum(allowed, max(1e-2, SPACING_TOLERANCE * gap))
    worst = int(np.argmax(off_normal - allowed))
    if off_normal[worst] > allowed[worst]:
        raise DataError(
            f"{files[worst]}: ImagePositionPatient is {off_normal[worst]:.3g} mm off the slice normal "
            f"through {files[0].name} (a tilted or sheared series)",
            "resample the series onto a regular grid first",
        )
    row, column = grid.orientation[:3], grid.orientation[3:]
    lps = np.eye(4)
    lps[:3, 0] = row * grid.pixel[1]
    lps[:3, 1] = column * grid.pixel[0]
    lps[:3, 2] = grid.normal * gap
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS+ -> RAS+
    first = ordered[0].header
    return DicomSeries(
        folder=folder,
        uid=uid,
        files=tuple(files),
        shape=(grid.size[1], grid.size[0], len(files)),
        spacing=(float(grid.pixel[1]), float(grid.pixel[0]), gap),
        affine=affine,
        description=str(getattr(first, "SeriesDescription", "") or ""),
        modality=str(getattr(first, "Modality", "") or ""),
        frame=frame,
        trigger_time=trigger_time,
        frames=frames,
    )


def _slice_gap(files: list[Path], along: np.ndarray, rounding: np.ndarray, first: Any) -> float:
    """The series' slice gap in mm, after checking that the slices are evenly spaced.

    Args:
        files: The files, sorted along the normal.
        along: Their positions along the normal (mm).
        rounding: How far rounding may have moved each position along the normal (mm).
        first: The first file's header (a single slice's gap is its SpacingBetweenSlices or
            SliceThickness, else 1 mm).
    """
    if len(files) == 1:
        thickness = float(
            getattr(first, "SpacingBetweenSlices", 0) or getattr(first, "SliceThickness", 0) or 1
        )
        return thickness
    gaps = np.diff(along)
    for i, g in enumerate(gaps):
        if g < SAME_POSITION:
            raise DataError(f"{files[i + 1]}: at the same position along the slice normal as {files[i].name}")
    median = float(np.median(gaps))
    pair = rounding[:-1] + rounding[1:]  # what rounding the two positions of each gap can make
    # The median is itself a rounded gap: take the mean of the gaps near it as the reference.
    near = np.abs(gaps - median) <= np.maximum(SPACING_TOLERANCE * median, 2 * np.minimum(pair, 0.5 * median))
    reference = float(gaps[near].mean()) if near.any() else median
    allowed = np.maximum(SPACING_TOLERANCE * reference, np.minimum(pair, 0.5 * reference)) + 1e-9
    for i, g in enumerate(gaps):
        if abs(g - reference) <= allowed[i]:
            continue
        steps = round(g / reference)
        if steps >= 2 and abs(g - steps * reference) <= max(0.1 * reference, allowed[i]):
            raise DataError(
                f"{files[i + 1]}: {steps - 1} slice(s) missing before it: {g:.4g} mm from "
                f"{files[i].name}, the series' slices are {reference:.4g} mm apart"
            )
        raise DataError(
            f"{files[i + 1]}: non-uniform slice spacing: {g:.4g} mm from {files[i].name}, "
            f"{reference:.4g} mm between the series' other slices"
        )
    return float((along[-1] - along[0]) / (len(files) - 1))


# ------------------------------------------------------------------------------------------ cine


def read_frames(folder: Path, uid: str, members: list[tuple[Path, Any]]) -> list[DicomSeries]:
    """The frames of one series, in time order: one for a plain series, several for a cine one.

    A plain series (one file at each position) gives ``[read_series(folder, uid, members)]``. A
    series with several files at a position is a cine series: its files are grouped into frames by
    TemporalPositionIdentifier (0020,0100) where every file has one and no two files at a position
    share one, else by TriggerTime (0018,1060) where every file has one and no two files at a
    position share one (within :data:`TRIGGER_TIME_TOLERANCE`): at each position, the earliest file
    is in the first frame, the next in the second, and so on. Every frame must have a slice at each
    position of the series, and one only.

    Args:
        folder: The folder the series was found in (for messages).
        uid: Its SeriesInstanceUID.
        members: ``(file, header)`` of each of its files (:func:`find_series`).

    Raises:
        DataError: As :func:`read_series` for each frame; or files at one position that neither
            attribute tells apart (naming one); or a frame without a slice at a position of the
            series, or with an extra slice (naming the frame and a file).
    """
    slices, grid = _slices(uid, members)
    ordered = sorted(slices, key=grid.along)
    positions: list[list[_Slice]] = [[ordered[0]]]
    for previous, s in zip(ordered, ordered[1:], strict=False):
        if grid.along(s) - grid.along(previous) < SAME_POSITION:
            positions[-1].append(s)
        else:
            positions.append([s])
    if len(positions) == len(ordered):
        return [_series(folder, uid, slices, grid)]
    temporal, why_not_temporal = _values(positions, "TemporalPositionIdentifier")
    if why_not_temporal is None:
        grouped = _by_temporal_position(folder, uid, positions, temporal)
    else:
        times, why_not_time = _values(positions, "TriggerTime")
        if why_not_time is not None:
            group = next(g for g in positions if len(g) > 1)
            raise DataError(
                f"{group[1].path}: at the same position along the slice normal as {group[0].path.name}, "
                f"and neither {' '.join(_TEMPORAL_POSITION)} nor {' '.join(_TRIGGER_TIME)} tells the "
                f"frames of series {uid} apart ({why_not_temporal}; {why_not_time})",
                "a cine series needs either attribute in every file, different for the files at one "
                "position; any other series may have one slice at each position only",
            )
        grouped = _by_trigger_time(folder, uid, positions, times)
    return [
        _series(folder, uid, frame, grid, t, len(grouped), _median_trigger_time(frame))
        for t, frame in enumerate(grouped)
    ]


def _median_trigger_time(frame: list[_Slice]) -> float | None:
    times = [_trigger_time(s) for s in frame]
    present = [t for t in times if t is not None]
    return float(np.median(present)) if len(present) == len(times) else None


def _trigger_time(s: _Slice) -> float | None:
    return _number(s.path, s.header, *_TRIGGER_TIME)


def _temporal_position(s: _Slice) -> float | None:
    return _number(s.path, s.header, *_TEMPORAL_POSITION, integer=True)


_FRAME_HINT = "every frame of a cine series must have one slice at each position"


def _values(positions: list[list[_Slice]], keyword: str) -> tuple[dict[Path, Any], str | None]:
    """Each file's TemporalPositionIdentifier or TriggerTime, or why they cannot tell the frames
    apart: absent from a file, or one value for two files at one position."""
    read = _temporal_position if keyword == "TemporalPositionIdentifier" else _trigger_time
    tolerance = 0.5 if keyword == "TemporalPositionIdentifier" else TRIGGER_TIME_TOLERANCE
    values: dict[Path, Any] = {}
    for group in positions:
        for s in group:
            value = read(s)
            if value is None:
                absent = absence(s.header, keyword)
                return (
                    values,
                    f"{keyword} is {absent} {'from' if absent == 'missing' else 'in'} {s.path.name}",
                )
            values[s.path] = value
    for group in positions:
        timed = sorted(group, key=lambda s: values[s.path])
        for a, b in zip(timed, timed[1:], strict=False):
            if values[b.path] - values[a.path] < tolerance:
                unit = "" if keyword == "TemporalPositionIdentifier" else " ms"
                return (
                    values,
                    f"{keyword} is {values[a.path]:g}{unit} in both {a.path.name} and {b.path.name}",
                )
    return values, None


def _by_temporal_position(
    folder: Path, uid: str, positions: list[list[_Slice]], values: dict[Path, Any]
) -> list[list[_Slice]]:
    """The frames by TemporalPositionIdentifier (``values``), in its order."""
    order = sorted({values[s.path] for group in positions for s in group})
    membership: list[list[_Slice | None]] = []
    for group in positions:
        at = {values[s.path]: s for s in group}
        membership.append([at.get(v) for v in order])
    return _complete(folder, uid, membership, [f"TemporalPositionIdentifier {v}" for v in order])


def _by_trigger_time(
    folder: Path, uid: str, positions: list[list[_Slice]], values: dict[Path, Any]
) -> list[list[_Slice]]:
    """The frames by TriggerTime (``values``): the k-th earliest file at each position is in frame k;
    at a position with more or fewer files than most, each file goes to the frame whose median
    trigger time at the full positions is nearest its own."""
    timed = [sorted(group, key=lambda s: values[s.path]) for group in positions]
    counts = Counter(len(group) for group in timed)
    n_frames = max(counts, key=lambda c: (counts[c], c))  # the most common count (the larger on a tie)
    full = [group for group in timed if len(group) == n_frames]
    reference = [float(np.median([values[g[k].path] for g in full])) for k in range(n_frames)]
    labels = [f"TriggerTime about {t:g} ms" for t in reference]
    membership: list[list[_Slice | None]] = []
    for group in timed:
        row: list[_Slice | None] = list(group) if len(group) == n_frames else [None] * n_frames
        if len(group) != n_frames:
            for s in group:
                k = int(np.argmin([abs(values[s.path] - t) for t in reference]))
                kept = row[k]
                if kept is not None:
                    extra = max((kept, s), key=lambda x: abs(values[x.path] - reference[k]))
                    other = kept if extra is s else s
                    raise DataError(
                        f"{extra.path}: an extra slice in frame {k + 1} ({labels[k]}) of series {uid}, at "
                        f"the position of {other.path.name}: {len(group)} files there, {n_frames} at the "
                        "series' other positions",
                        _FRAME_HINT,
                    )
                row[k] = s
        membership.append(row)
    return _complete(folder, uid, membership, labels)


def _complete(
    folder: Path, uid: str, membership: list[list[_Slice | None]], labels: list[str]
) -> list[list[_Slice]]:
    """The frames' files, after checking that every frame has a slice at every position.

    Args:
        membership: For each position (along the normal), each frame's file there, or None.
        labels: How each frame was told apart (for messages).
    """
    n_frames = len(labels)
    for row in membership:
        present = [s for s in row if s is not None]
        if len(present) == n_frames:
            continue
        here = next(k for k, s in enumerate(row) if s is not None)
        example = present[0]
        if 2 * len(present) >= n_frames:  # most frames have this position: the others miss a slice
            k = next(k for k, s in enumerate(row) if s is None)
            raise DataError(
                f"{folder}: frame {k + 1} ({labels[k]}) of series {uid} has no slice at the position of "
                f"{example.path.name} (frame {here + 1}), which {len(present)} of its {n_frames} frames "
                "have",
                _FRAME_HINT,
            )
        raise DataError(
            f"{example.path}: an extra slice in frame {here + 1} ({labels[here]}) of series {uid}: only "
            f"{len(present)} of its {n_frames} frames have a slice at this position",
            _FRAME_HINT,
        )
    return [[s for row in membership if (s := row[k]) is not None] for k in range(n_frames)]
