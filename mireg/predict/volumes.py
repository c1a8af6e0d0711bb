"""Structure volumes of label maps, ventricular function of cardiac cine, and their CSV tables.

A label map's structure volume is its voxel count times the voxel volume, which comes from the
scan's affine (:func:`voxel_volume_ml`): the affine, unlike ``pixdim`` or ``SliceThickness``, holds
the slice *spacing* (centre to centre), which is what a stack of slices covers, gaps included, as
in the summation of slice areas x (thickness + gap) that CMR post-processing uses.

For cine with both end-diastole (ED) and end-systole (ES) known, :func:`ejection_fractions` gives
each ventricle's end-diastolic and end-systolic volumes, stroke volume and ejection fraction, and the
left-ventricular myocardial mass. A :class:`VolumeTable` collects the volumes of many scans and
frames and writes two CSV files atomically:

``volumes.csv``: one row per scan and frame::

    scan,frame,phase,RV_ml,MYO_ml,LV_ml
    patient001,1,ED,165.33,122.40,295.51

``cardiac_function.csv``: one row per scan with both an ED and an ES row::

    scan,ED_frame,ES_frame,LV_EDV_ml,LV_ESV_ml,LV_SV_ml,LV_EF_pct,LV_mass_g,RV_EDV_ml,...
    patient001,1,12,295.51,225.73,69.78,23.6,128.52,165.33,...

Frames are numbered from 1, as in ACDC's ``Info.cfg`` (``ED: 1``) and file names
(``patient001_frame01``) and DICOM's temporal position numbers; frame ``t`` is index ``t - 1`` of a
``(X, Y, Z, T)`` array. This module needs numpy only (no torch): it runs where ``mireg predict
model.onnx`` runs.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from mireg.errors import DataError
from mireg.files import atomic_write_text

__all__ = [
    "FUNCTION_CSV",
    "MYOCARDIAL_DENSITY_G_PER_ML",
    "PHASES",
    "VENTRICLES",
    "VOLUMES_CSV",
    "VolumeTable",
    "ejection_fractions",
    "frame_volumes",
    "structure_volumes",
    "voxel_volume_ml",
]

#: Specific density of myocardium (g/ml) that turns myocardial volume into mass: the value of the
#: SCMR post-processing recommendations (Schulz-Menger et al., J Cardiovasc Magn Reson 2013;15:35
#: and its 2020 update, 2020;22:19) and of the ACDC challenge's clinical indices (Bernard et al.,
#: IEEE Trans Med Imaging 2018;37(11):2514-2525).
MYOCARDIAL_DENSITY_G_PER_ML = 1.05

#: The cardiac phases a row of a :class:`VolumeTable` may carry.
PHASES = ("ED", "ES")

#: The ventricles whose function is reported, by the class name of their cavity (blood pool).
VENTRICLES = ("LV", "RV")

#: The class of the left-ventricular myocardium, whose end-diastolic volume gives the LV mass.
MYOCARDIUM = "MYO"

#: File names :meth:`VolumeTable.write` writes.
VOLUMES_CSV = "volumes.csv"
FUNCTION_CSV = "cardiac_function.csv"

# Printed precision: 0.01 ml is below one voxel of any cardiac MRI (1.5 x 1.5 x 8 mm is 0.018 ml),
# so rounding never hides a voxel; EF at 0.1 % is finer than any clinical cut-off (whole percent).
_ML_DIGITS = 2
_PCT_DIGITS = 1
_G_DIGITS = 2


# -------------------------------------------------------------------------------------- volumes


def voxel_volume_ml(affine: npt.ArrayLike) -> float:
    """The volume of one voxel in ml: ``|det(affine[:3, :3])|`` mm^3 / 1000.

    The determinant is right for any affine: anisotropic, oblique (rotated) or flipped (a negative
    determinant, as radiological or LPS-ordered axes give, is still a positive volume), and with
    axes in any order.

    Args:
        affine: A NIfTI or DICOM voxel-to-mm affine, ``4 x 4`` (or its ``3 x 3`` part).

    Raises:
        DataError: An affine of another shape, with non-finite entries, or singular (zero volume).
    """
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape not in ((4, 4), (3, 3)):
        raise DataError(f"affine: expected a 4 x 4 (or 3 x 3) matrix, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise DataError("affine: holds non-finite entries (NaN or inf)", "check the scan's header")
    volume = abs(float(np.linalg.det(matrix[:3, :3]))) / 1000.0
    if not volume > 0.0:
        raise DataError(
            "affine: its 3 x 3 part is singular (voxels of zero volume)",
            "check the scan's header (NIfTI sform/qform, DICOM orientation and positions)",
        )
    return volume


def _check_voxel_volume(voxel_ml: float) -> float:
    voxel_ml = float(voxel_ml)
    if not (math.isfinite(voxel_ml) and voxel_ml > 0.0):
        raise DataError(
            f"voxel volume: expected a positive number of ml, got {voxel_ml!r}",
            "compute it from the scan's affine with voxel_volume_ml(affine)",
        )
    return voxel_ml


def _foreground(classes: Sequence[str]) -> list[str]:
    """The foreground classes (label 0 is background, whatever its name), checked."""
    names = list(classes)
    if len(names) < 2:
        raise ValueError(f"classes: expected background and at least one structure, got {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"classes: names must be unique, got {names}")
    return names[1:]


def _label_counts(labels: np.ndarray, num_classes: int, frames: int) -> np.ndarray:
    """Voxels per class of each frame: ``(max(frames, 1), num_classes)`` int64.

    ``labels`` holds ``frames`` frames along its last axis, or is a single frame when ``frames`` is
    0; it is checked to hold whole labels in ``[0, num_classes)``.
    """
    if labels.dtype == np.bool_:
        labels = labels.astype(np.uint8)
    elif not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.floating):
            raise DataError(f"label map: expected integer labels, got dtype {labels.dtype}")
        # nibabel's get_fdata() gives float64 label maps: accept them when every value is whole.
        if labels.size and not (np.all(np.isfinite(labels)) and np.all(labels == np.round(labels))):
            raise DataError(
                "label map: holds values that are not whole numbers",
                "is this a probability map or an image rather than a label map?",
            )
    if labels.size:
        low, high = labels.min(), labels.max()
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise DataError(
                f"label map: holds the label {bad:g}, outside 0..{num_classes - 1} "
                f"(the {num_classes} classes given)",
                "pass the classes of the model that wrote the label map",
            )
    index = labels.astype(np.intp)
    if frames:
        # One bincount for all frames: frame t's labels are shifted to t * num_classes + label.
        index = index + num_classes * np.arange(frames, dtype=np.intp)
    counts = np.bincount(index.ravel(), minlength=num_classes * max(frames, 1))
    return counts.reshape(max(frames, 1), num_classes).astype(np.int64)


def structure_volumes(labels: np.ndarray, voxel_volume_ml: float, classes: Sequence[str]) -> dict[str, float]:
    """The volume in ml of each foreground class of a 3D label map.

    Args:
        labels: ``(X, Y, Z)`` label map: integer labels (or whole-valued floats, as nibabel's
            ``get_fdata`` gives), label ``i`` meaning ``classes[i]``.
        voxel_volume_ml: The volume of one voxel (:func:`voxel_volume_ml` of the scan's affine).
        classes: Class names by label, background (label 0) first.

    Returns:
        ``{class: ml}`` for every class but the background, in label order; a class absent from
        the map has 0.0 ml.

    Raises:
        DataError: A map that is not 3D, holds non-whole values or labels outside the classes, or
            a voxel volume that is not a positive number.
        ValueError: Fewer than two classes, or repeated class names.
    """
    names = _foreground(classes)
    voxel_ml = _check_voxel_volume(voxel_volume_ml)
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise DataError(
            f"label map: expected a 3D (X, Y, Z) map, got shape {labels.shape}",
            "give cine (X, Y, Z, T) maps to frame_volumes",
        )
    counts = _label_counts(labels, len(names) + 1, 0)[0]
    return {name: float(counts[i + 1]) * voxel_ml for i, name in enumerate(names)}


def frame_volumes(
    labels: np.ndarray, voxel_volume_ml: float, classes: Sequence[str]
) -> list[dict[str, float]]:
    """The volumes in ml of each frame of a cine label map: :func:`structure_volumes` per frame.

    Args:
        labels: ``(X, Y, Z, T)`` label map of ``T`` frames.
        voxel_volume_ml: The volume of one voxel.
        classes: Class names by label, background first.

    Returns:
        One ``{class: ml}`` per frame; list index ``t`` is frame number ``t + 1``.

    Raises:
        DataError: A map that is not 4D, or the problems of :func:`structure_volumes`.
    """
    names = _foreground(classes)
    voxel_ml = _check_voxel_volume(voxel_volume_ml)
    labels = np.asarray(labels)
    if labels.ndim != 4:
        raise DataError(f"cine label map: expected a 4D (X, Y, Z, T) map, got shape {labels.shape}")
    if labels.shape[3] == 0:
        raise DataError("cine label map: holds no frames (T = 0)")
    counts = _label_counts(labels, len(names) + 1, labels.shape[3])
    return [{name: float(row[i + 1]) * voxel_ml for i, name in enumerate(names)} for row in counts]


# -------------------------------------------------------------------------- ventricular function


def _check_volumes(volumes: Mapping[str, float], what: str) -> None:
    for name, value in volumes.items():
        if not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"{what} volume of {name}: expected a finite number >= 0, got {value!r}")


def ejection_fractions(
    ed: Mapping[str, float],
    es: Mapping[str, float],
    myocardial_density: float = MYOCARDIAL_DENSITY_G_PER_ML,
) -> dict[str, float]:
    """End-diastolic and end-systolic volumes, stroke volume and ejection fraction of each ventricle.

    For each ventricle whose cavity class (``LV``, ``RV``) is in both ``ed`` and ``es``:
    ``<V>_EDV_ml``, ``<V>_ESV_ml``, ``<V>_SV_ml`` (stroke volume EDV - ESV) and ``<V>_EF_pct``
    (``(EDV - ESV) / EDV * 100``). An EDV of 0 ml (no cavity segmented at ED) gives an EF of NaN,
    never a division error; the CSV shows it as an empty cell. An ESV above the EDV (an implausible
    segmentation, or ED and ES swapped) gives a negative SV and EF, reported as computed so that it
    is seen rather than hidden.

    When ``MYO`` is in ``ed``: ``LV_mass_g``, the left-ventricular myocardial mass, which is the
    myocardial volume at end-diastole times the density of myocardium, 1.05 g/ml by convention
    (SCMR: Schulz-Menger et al., J Cardiovasc Magn Reson 2013;15:35 and 2020;22:19; the ACDC
    challenge: Bernard et al., IEEE Trans Med Imaging 2018;37:2514). Papillary muscles count as
    mass only where the segmentation labels them myocardium.

    Args:
        ed: ``{class: ml}`` at end-diastole (:func:`structure_volumes`).
        es: ``{class: ml}`` at end-systole.
        myocardial_density: g/ml (some laboratories use 1.055).

    Returns:
        The values above, keyed by their CSV column names: LV first, then RV.

    Raises:
        ValueError: A negative or non-finite volume, or a non-positive density.
    """
    _check_volumes(ed, "ED")
    _check_volumes(es, "ES")
    if not (math.isfinite(myocardial_density) and myocardial_density > 0.0):
        raise ValueError(
            f"myocardial_density: expected a positive number of g/ml, got {myocardial_density!r}"
        )
    out: dict[str, float] = {}
    for ventricle in VENTRICLES:
        if ventricle in ed and ventricle in es:
            edv, esv = float(ed[ventricle]), float(es[ventricle])
            out[f"{ventricle}_EDV_ml"] = edv
            out[f"{ventricle}_ESV_ml"] = esv
            out[f"{ventricle}_SV_ml"] = edv - esv
            # No cavity at ED leaves EF undefined: NaN, which the CSV writes as an empty cell.
            out[f"{ventricle}_EF_pct"] = (edv - esv) / edv * 100.0 if edv > 0.0 else math.nan
        if ventricle == "LV" and MYOCARDIUM in ed:  # the LV's own row group, even without an LV class
            out["LV_mass_g"] = float(ed[MYOCARDIUM]) * myocardial_density
    return out


def _function_columns(classes: Sequence[str]) -> list[str]:
    """The columns :func:`ejection_fractions` gives for volumes of ``classes``, in its order."""
    zeros = {name: 0.0 for name in classes}
    return list(ejection_fractions(zeros, zeros))


# ----------------------------------------------------------------------------------------- table


def _number(value: float, digits: int) -> str:
    """``value`` to ``digits`` decimals; NaN as an empty cell (undefined, as mireg's reports write
    None), and never ``-0.00`` (a stroke volume of 1e-17 ml is zero, not negative)."""
    if math.isnan(value):
        return ""
    return f"{round(value, digits) + 0.0:.{digits}f}"


def _digits(column: str) -> int:
    if column.endswith("_pct"):
        return _PCT_DIGITS
    return _G_DIGITS if column.endswith("_g") else _ML_DIGITS


def _csv(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = io.StringIO()
    # csv's default dialect: comma-separated, quoted only where needed, CRLF line ends (RFC 4180),
    # which csv.DictReader and spreadsheets read alike.
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


class VolumeTable:
    """Structure volumes of scans and frames, and the ventricular function of each ED/ES pair.

    Rows are added per scan and frame (:meth:`add`, :meth:`add_cine`); a scan with one row marked
    ``ED`` and one marked ``ES`` also gets a row of :func:`ejection_fractions`. Scans are paired by
    name, so the ED and ES frames of a patient stored as two files (ACDC's ``patient001_frame01``
    and ``_frame12``) are added under one scan name (``patient001``).

    Two CSV files rather than one, because the two tables have different rows: volumes per frame
    (30 rows for a 30-frame cine, to plot a volume curve) and function per scan (one row, as a
    clinical report reads); EF columns on the frame rows would be blank on all but one row each.

    Args:
        classes: Class names by label, background (label 0) first: one ``<class>_ml`` column each.
    """

    def __init__(self, classes: Sequence[str]) -> None:
        self.structures = _foreground(classes)
        self.classes = list(classes)
        self._rows: list[tuple[str, int | None, str | None, dict[str, float]]] = []

    # ---- columns

    @property
    def volume_header(self) -> list[str]:
        """``scan, frame, phase`` and one ``<class>_ml`` column per foreground class."""
        return ["scan", "frame", "phase", *(f"{name}_ml" for name in self.structures)]

    @property
    def function_header(self) -> list[str]:
        """``scan, ED_frame, ES_frame`` and the columns of :func:`ejection_fractions`."""
        return ["scan", "ED_frame", "ES_frame", *_function_columns(self.structures)]

    @property
    def has_function(self) -> bool:
        """Whether the classes include a ventricular cavity or the myocardium (else no function table)."""
        return len(self.function_header) > 3

    # ---- rows

    def add(
        self,
        scan: str,
        volumes: Mapping[str, float],
        frame: int | None = None,
        phase: str | None = None,
    ) -> None:
        """Add the volumes of one scan (or one frame of it).

        Args:
            scan: The scan's name (the output file's stem); the ED and ES rows of one patient share it.
            volumes: ``{class: ml}`` of every foreground class (:func:`structure_volumes`).
            frame: The frame number, counted from 1 as ACDC's ``Info.cfg`` does; None for a single
                3D scan, or where it is unknown.
            phase: ``ED``, ``ES`` or None.

        Raises:
            DataError: A frame number below 1, or a scan that already has a row of that frame, of
                that phase, or (without either) a row at all.
            ValueError: Volumes of other classes than the table's, negative or non-finite ones, or
                a phase other than ``ED``/``ES``.
        """
        if phase is not None and phase not in PHASES:
            raise ValueError(f"phase: expected one of {', '.join(PHASES)} or None, got {phase!r}")
        if sorted(volumes) != sorted(self.structures):
            raise ValueError(f"volumes: expected the classes {self.structures}, got {list(volumes)}")
        _check_volumes(volumes, "scan")
        if frame is not None and (isinstance(frame, bool) or int(frame) != frame or frame < 1):
            raise DataError(f"{scan}: frame numbers count from 1, got {frame!r}")
        for name, f, p, _ in self._rows:
            if name != scan:
                continue
            if (frame is not None and f == frame) or (phase is not None and p == phase):
                what = f"frame {frame}" if frame is not None and f == frame else f"an {phase} row"
                raise DataError(f"{scan}: already has {what} in the volume table")
            if (frame is None and phase is None) or (f is None and p is None):
                raise DataError(
                    f"{scan}: a scan without frame or phase has one row only",
                    "give each frame's number, or name the scans apart",
                )
        self._rows.append((scan, None if frame is None else int(frame), phase, dict(volumes)))

    def add_cine(
        self,
        scan: str,
        labels: np.ndarray,
        voxel_volume_ml: float,
        ed: int | None = None,
        es: int | None = None,
    ) -> None:
        """Add every frame of a cine label map, marking the ED and ES frames when they are known.

        Args:
            scan: The scan's name.
            labels: ``(X, Y, Z, T)`` label map.
            voxel_volume_ml: The volume of one voxel (:func:`voxel_volume_ml`).
            ed: The end-diastolic frame number, from 1 (ACDC's ``Info.cfg`` ``ED``), or None.
            es: The end-systolic frame number, or None.

        Raises:
            DataError: An ED or ES frame outside ``1..T``, ED equal to ES, the problems of
                :func:`frame_volumes`, or rows of this scan already in the table.
        """
        labels = np.asarray(labels)
        frames = labels.shape[3] if labels.ndim == 4 else 0
        for key, value in (("ED", ed), ("ES", es)):
            if value is not None and frames and not 1 <= value <= frames:
                raise DataError(
                    f"{scan}: {key} frame {value} is outside the cine's frames 1..{frames}",
                    "frame numbers count from 1, as in ACDC's Info.cfg",
                )
        if ed is not None and ed == es:
            raise DataError(f"{scan}: ED and ES are the same frame ({ed})")
        volumes = frame_volumes(labels, voxel_volume_ml, self.classes)
        if any(name == scan for name, *_ in self._rows):
            raise DataError(f"{scan}: already in the volume table")
        phases = {ed: "ED", es: "ES"}
        for t, row in enumerate(volumes, 1):
            self.add(scan, row, t, phases.get(t))

    # ---- tables

    def volume_rows(self) -> list[list[str]]:
        """The rows of ``volumes.csv`` as text cells, in the order added."""
        return [
            [
                scan,
                "" if frame is None else str(frame),
                phase or "",
                *(_number(volumes[name], _ML_DIGITS) for name in self.structures),
            ]
            for scan, frame, phase, volumes in self._rows
        ]

    def function_values(self) -> list[tuple[str, int | None, int | None, dict[str, float]]]:
        """Per scan with an ED and an ES row, in order of first appearance: its name, ED and ES
        frame numbers and :func:`ejection_fractions` (unrounded)."""
        pairs: dict[str, dict[str, tuple[int | None, dict[str, float]]]] = {}
        for scan, frame, phase, volumes in self._rows:
            pairs.setdefault(scan, {})
            if phase is not None:
                pairs[scan][phase] = (frame, volumes)
        out = []
        for scan, phases in pairs.items():
            if "ED" in phases and "ES" in phases:
                (ed_frame, ed), (es_frame, es) = phases["ED"], phases["ES"]
                out.append((scan, ed_frame, es_frame, ejection_fractions(ed, es)))
        return out

    def function_rows(self) -> list[list[str]]:
        """The rows of ``cardiac_function.csv`` as text cells."""
        columns = self.function_header[3:]
        return [
            [
                scan,
                "" if ed is None else str(ed),
                "" if es is None else str(es),
                *(_number(values[c], _digits(c)) for c in columns),
            ]
            for scan, ed, es, values in self.function_values()
        ]

    def volumes_csv(self) -> str:
        """``volumes.csv`` as text."""
        return _csv(self.volume_header, self.volume_rows())

    def function_csv(self) -> str:
        """``cardiac_function.csv`` as text (a header only when no scan has an ED/ES pair)."""
        return _csv(self.function_header, self.function_rows())

    def write(self, folder: Path) -> list[Path]:
        """Write ``volumes.csv`` and, for classes with a ventricle or myocardium,
        ``cardiac_function.csv`` into ``folder``, each atomically.

        The function table is written even when no scan has an ED/ES pair (a header only), so that
        a file from an earlier run in the same folder is never left to be mistaken for this one's.

        Returns:
            The files written.
        """
        folder = Path(folder)
        paths = [folder / VOLUMES_CSV]
        atomic_write_text(paths[0], self.volumes_csv())
        if self.has_function:
            paths.append(folder / FUNCTION_CSV)
            atomic_write_text(paths[1], self.function_csv())
        return paths
