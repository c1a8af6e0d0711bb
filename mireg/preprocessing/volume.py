"""Volume preprocessing shared by every data set and by prediction, and its exact inverse.

A volume ``(X, Y, Z)`` becomes ``Z`` slices on a square canvas: each slice is resampled in-plane to
the target spacing (bilinear for images, nearest for labels), intensities are clipped to the
volume's [1st, 99th] percentile and min-max scaled to [0, 1], and the slice is centre padded or
cropped to the canvas. :class:`SliceGeometry` records what was done so that a prediction on the
canvas maps back onto the original voxel grid (:func:`restore_probabilities`, :func:`restore_labels`).

Everything here is numpy: training stores, ``mireg predict`` with a checkpoint and ``mireg predict``
with an exported ONNX model (which runs without torch) all go through these functions. The
resampling follows ``torch.nn.functional.interpolate`` (``bilinear`` with ``align_corners=False``,
and ``nearest-exact``), which made the stores before it; images agree with it to within float32
rounding and labels exactly.
"""

from __future__ import annotations

import multiprocessing
import pickle
import shutil
import tempfile
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mireg.errors import DataError
from mireg.interrupts import interrupts_deferred
from mireg.preprocessing.store import StoreWriter, VolumeInfo, VolumeStore, refuse_existing

__all__ = [
    "PERCENTILES",
    "RawVolume",
    "SLICE_AXIS",
    "SliceGeometry",
    "StoreBuilder",
    "normalize_intensity",
    "preprocess_volume",
    "resample_slices",
    "restore_labels",
    "restore_probabilities",
]

#: Intensities are clipped to these percentiles of each (resampled) volume, then scaled to [0, 1].
PERCENTILES = (1.0, 99.0)

#: The voxel axis that slices are taken along (the third: a volume is ``(X, Y, Z)``).
SLICE_AXIS = 2


@dataclass(frozen=True)
class SliceGeometry:
    """How the in-plane grid of a volume maps onto the canvas.

    Attributes:
        shape: Original in-plane shape ``(X, Y)``.
        resampled: Shape after resampling to the target spacing.
        canvas: Canvas side.
        offset: Per axis, canvas index minus resampled index (positive: padded, negative: cropped).
    """

    shape: tuple[int, int]
    resampled: tuple[int, int]
    canvas: int

    @property
    def offset(self) -> tuple[int, int]:
        return ((self.canvas - self.resampled[0]) // 2, (self.canvas - self.resampled[1]) // 2)

    @classmethod
    def for_volume(
        cls, shape: tuple[int, int], spacing: tuple[float, float], target: float, canvas: int
    ) -> SliceGeometry:
        resampled = tuple(max(1, round(n * s / target)) for n, s in zip(shape, spacing, strict=True))
        return cls((int(shape[0]), int(shape[1])), (resampled[0], resampled[1]), canvas)

    def to_canvas(self, slices: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Place ``(Z, *, RX, RY)`` resampled slices on the ``(Z, *, canvas, canvas)`` canvas."""
        out = np.full((*slices.shape[:-2], self.canvas, self.canvas), fill, dtype=slices.dtype)
        (src_x, dst_x), (src_y, dst_y) = (
            _overlap(o, n, self.canvas) for o, n in zip(self.offset, self.resampled, strict=True)
        )
        out[..., dst_x, dst_y] = slices[..., src_x, src_y]
        return out

    def from_canvas(self, slices: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Inverse of :meth:`to_canvas`: ``(Z, *, canvas, canvas)`` -> ``(Z, *, RX, RY)``."""
        out = np.full((*slices.shape[:-2], *self.resampled), fill, dtype=slices.dtype)
        (src_x, dst_x), (src_y, dst_y) = (
            _overlap(o, n, self.canvas) for o, n in zip(self.offset, self.resampled, strict=True)
        )
        out[..., src_x, src_y] = slices[..., dst_x, dst_y]
        return out


def _overlap(offset: int, n: int, canvas: int) -> tuple[slice, slice]:
    """Slices of the resampled axis (length n) and of the canvas axis that coincide."""
    start = max(0, -offset)
    stop = min(n, canvas - offset)
    return slice(start, stop), slice(start + offset, stop + offset)


def normalize_intensity(
    volume: np.ndarray, low: float = PERCENTILES[0], high: float = PERCENTILES[1]
) -> np.ndarray:
    """Clip to the volume's [low, high] percentiles and scale to [0, 1] (float32)."""
    volume = volume.astype(np.float32, copy=False)
    lo, hi = np.percentile(volume, [low, high])
    if hi <= lo:
        return np.zeros_like(volume)
    scaled: np.ndarray = ((np.clip(volume, lo, hi) - lo) / (hi - lo)).astype(
        np.float32
    )  # computed in float64
    return scaled


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of linear interpolation along one axis (half-pixel centres).

    Output sample ``i`` sits at source coordinate ``(i + 0.5) * n_in / n_out - 0.5`` (clamped at 0)
    and mixes its two neighbours: ``w * x[i1] + (1 - w) * x[i0]``.
    """
    scale = float(np.float32(n_in / n_out))
    src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0).astype(np.float32).astype(np.float64)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def _nearest_taps(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output sample for nearest-neighbour resampling (half-pixel centres)."""
    scale = float(np.float32(n_in / n_out))
    src = ((np.arange(n_out) + 0.5) * scale).astype(np.float32)
    return np.minimum(np.floor(src).astype(np.int64), n_in - 1)


def resample_slices(slices: np.ndarray, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """Resample ``(..., X, Y)`` in-plane to ``size``.

    Args:
        slices: Any leading axes, then the two in-plane axes.
        size: The output in-plane shape.
        mode: ``bilinear`` (images, probabilities; computed in float64, returned as float32) or
            ``nearest`` (labels; the input's dtype).
    """
    if tuple(slices.shape[-2:]) == tuple(size):
        return slices
    if mode == "nearest":
        rows, cols = _nearest_taps(slices.shape[-2], size[0]), _nearest_taps(slices.shape[-1], size[1])
        return slices[..., rows[:, None], cols[None, :]]
    if mode != "bilinear":
        raise ValueError(f"unknown resampling mode {mode!r}")
    r0, r1, wr = _linear_taps(slices.shape[-2], size[0])
    c0, c1, wc = _linear_taps(slices.shape[-1], size[1])
    out = np.empty((*slices.shape[:-2], *size), dtype=np.float32)
    for index in np.ndindex(slices.shape[:-2]):  # one slice at a time: float64 for one slice only
        x = slices[index].astype(np.float64)
        rows = x[r0, :] * (1.0 - wr[:, None]) + x[r1, :] * wr[:, None]
        out[index] = rows[:, c0] * (1.0 - wc) + rows[:, c1] * wc
    return out


def preprocess_volume(
    image: np.ndarray,
    spacing: tuple[float, float, float],
    target_spacing: float,
    canvas: int,
    label: np.ndarray | None = None,
    percentiles: tuple[float, float] = PERCENTILES,
) -> tuple[np.ndarray, np.ndarray | None, SliceGeometry]:
    """Turn an ``(X, Y, Z)`` volume into ``(Z, canvas, canvas)`` slices.

    Args:
        image: Intensities ``(X, Y, Z)``.
        spacing: Voxel spacing in mm.
        target_spacing: In-plane spacing (mm) to resample to.
        canvas: Output slice side.
        label: Optional integer label map of the image's shape.
        percentiles: The intensity clipping percentiles (:func:`normalize_intensity`).

    Returns:
        Image slices (float32 in [0, 1]), label slices (uint8) or None, and the geometry.
    """
    geometry = SliceGeometry.for_volume(image.shape[:2], spacing[:2], target_spacing, canvas)
    img = np.moveaxis(np.asarray(image, dtype=np.float32), SLICE_AXIS, 0)
    img = resample_slices(img, geometry.resampled, "bilinear")
    img = normalize_intensity(img, *percentiles)  # percentiles over the resampled volume
    slices = np.ascontiguousarray(geometry.to_canvas(img))
    if label is None:
        return slices, None, geometry
    lab = np.moveaxis(np.asarray(label), SLICE_AXIS, 0).astype(np.uint8)
    lab = geometry.to_canvas(resample_slices(lab, geometry.resampled, "nearest"))
    return slices, np.ascontiguousarray(lab), geometry


def restore_probabilities(probs: np.ndarray, geometry: SliceGeometry) -> np.ndarray:
    """Map canvas probabilities ``(Z, C, canvas, canvas)`` back onto the original ``(X, Y, Z, C)`` grid.

    Probabilities (not labels) are resampled bilinearly; whatever fell outside the canvas is
    background (probability 1 for class 0).
    """
    background = np.zeros((probs.shape[1], 1, 1), dtype=np.float32)
    background[0] = 1.0
    inside = geometry.from_canvas(np.ones((1, geometry.canvas, geometry.canvas), dtype=bool), fill=False)
    resampled = np.where(inside, geometry.from_canvas(probs.astype(np.float32, copy=False)), background)
    original = resample_slices(resampled, geometry.shape, "bilinear")
    return np.ascontiguousarray(original.transpose(2, 3, 0, 1))


def restore_labels(probs: np.ndarray, geometry: SliceGeometry) -> np.ndarray:
    """Map canvas probabilities ``(Z, C, canvas, canvas)`` back to an ``(X, Y, Z)`` label map (uint8).

    The argmax is taken on the original grid, after :func:`restore_probabilities`.
    """
    labels: np.ndarray = restore_probabilities(probs, geometry).argmax(axis=-1).astype(np.uint8)
    return labels


class RawVolume(NamedTuple):
    """A volume as read from its files: what a reader given to :meth:`StoreBuilder.add_file` returns.

    Attributes:
        image: Intensities ``(X, Y, Z)``.
        affine: The 4x4 voxel-to-world matrix.
        spacing: Voxel spacing in mm ``(x, y, z)``.
        label: Integer label map of the image's shape, or None.
    """

    image: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    label: np.ndarray | None = None


@dataclass(frozen=True)
class _Prepared:
    """A volume preprocessed onto the canvas, ready to append to the store."""

    images: np.ndarray  # (Z, canvas, canvas) float16
    labels: np.ndarray | None  # (Z, canvas, canvas) uint8
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    affine: list[list[float]]


def _prepare(raw: RawVolume, spacing: float, canvas: int) -> _Prepared:
    slices, labels, _ = preprocess_volume(raw.image, raw.spacing, spacing, canvas, raw.label)
    shape = raw.image.shape
    affine = np.asarray(raw.affine, dtype=float).tolist()
    return _Prepared(slices.astype(np.float16), labels, raw.spacing, (shape[0], shape[1], shape[2]), affine)


def _read_and_prepare(read: Callable[[], RawVolume], spacing: float, canvas: int) -> _Prepared:
    return _prepare(read(), spacing, canvas)


@dataclass(frozen=True)
class _Entry:
    """A volume in the order it was added: its record's fields, and its slices (or their future)."""

    id: str
    patient: str
    phase: str
    group: str
    source: str
    prepared: _Prepared | Future[_Prepared]


class StoreBuilder:
    """Preprocesses volumes and writes them, in the order they are added, into a new store.

    Dataset plugins add volumes: :meth:`add` with arrays already read, or :meth:`add_file` with a
    reader, which ``workers`` processes run in parallel (``mireg preprocess -j N``). Either way
    each volume is written to the store's folder as soon as it is ready and its turn comes, so memory
    does not grow with the data set; the store is the same, byte for byte, for any ``workers``. The
    caller publishes the store with :meth:`save` (atomically, so a failure anywhere, or a builder
    left without saving, leaves no partial output).

    Args:
        name: Data set name recorded in the store.
        spacing: Target in-plane spacing (mm).
        canvas: Side of the square slices.
        out: The store folder to create (must not exist); by default a temporary folder, moved to
            the folder given to :meth:`save`.
        workers: Processes that read and preprocess :meth:`add_file` volumes (1: this process).
    """

    def __init__(
        self, name: str, spacing: float, canvas: int, out: Path | None = None, workers: int = 1
    ) -> None:
        self.name, self.spacing, self.canvas = name, spacing, canvas
        self.classes: list[str] = []
        self.volumes: list[VolumeInfo] = []
        self.out = Path(out) if out is not None else None
        # Without ``out`` the store is written in a private folder, made by the first write and
        # moved to where save() is told.
        self._scratch: Path | None = None
        self._writer = StoreWriter(self.out, canvas) if self.out is not None else None
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._pending: deque[_Entry] = deque()
        self._ids: set[str] = set()

    def __enter__(self) -> StoreBuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    # --------------------------------------------------------------------------------------- adding

    def add(
        self,
        *,
        id: str,
        patient: str,
        image: np.ndarray,
        affine: np.ndarray,
        spacing: tuple[float, float, float],
        label: np.ndarray | None = None,
        phase: str = "",
        group: str = "",
        source: str = "",
    ) -> None:
        """Preprocess one ``(X, Y, Z)`` volume (and its label map, if any), here and now."""
        self._check_id(id, source)
        prepared = _prepare(RawVolume(image, affine, spacing, label), self.spacing, self.canvas)
        self._queue(_Entry(id, patient, phase, group, source, prepared))

    def add_file(
        self,
        *,
        id: str,
        patient: str,
        read: Callable[[], RawVolume],
        phase: str = "",
        group: str = "",
        source: str = "",
    ) -> None:
        """Add the volume that ``read()`` returns; it runs in a worker process when there are
        workers and ``read`` can be pickled (a module-level function, or a ``functools.partial`` of
        one), here otherwise. Errors it raises (a :class:`~mireg.errors.DataError` naming the file)
        reach the caller of :meth:`add_file` or :meth:`save`."""
        self._check_id(id, source)
        prepared: _Prepared | Future[_Prepared]
        if self.workers > 1 and _picklable(read):
            if self._pool is None:
                context = multiprocessing.get_context("spawn")
                self._pool = ProcessPoolExecutor(self.workers, context)
            prepared = self._pool.submit(_read_and_prepare, read, self.spacing, self.canvas)
        else:
            prepared = _read_and_prepare(read, self.spacing, self.canvas)
        self._queue(_Entry(id, patient, phase, group, source, prepared))

    def _check_id(self, id: str, source: str) -> None:
        if id in self._ids:
            raise DataError(f"{source or id}: volume id {id!r} appears twice")
        self._ids.add(id)

    def _queue(self, entry: _Entry) -> None:
        self._pending.append(entry)
        # Volumes being read are bounded too: each worker's, and one more each waiting its turn.
        while len(self._pending) > (2 * self.workers if self.workers > 1 else 0):
            self._write_next()

    def _write_next(self) -> None:
        entry = self._pending.popleft()
        prepared = entry.prepared.result() if isinstance(entry.prepared, Future) else entry.prepared
        start, label_start = self._store_writer().append(prepared.images, prepared.labels)
        self.volumes.append(
            VolumeInfo(
                id=entry.id,
                patient=entry.patient,
                phase=entry.phase,
                group=entry.group,
                start=start,
                stop=start + prepared.images.shape[0],
                labeled=prepared.labels is not None,
                spacing=prepared.spacing,
                shape=prepared.shape,
                affine=prepared.affine,
                source=entry.source,
                label_start=label_start,
            )
        )

    def _store_writer(self) -> StoreWriter:
        if self._writer is None:
            with interrupts_deferred():  # an interrupt now is raised once discard() can find it
                self._scratch = Path(tempfile.mkdtemp(prefix="mireg-store-"))
            self._writer = StoreWriter(self._scratch / "store", self.canvas)
        return self._writer

    # ----------------------------------------------------------------------------------- publishing

    def save(self, out: Path | None = None, provenance: dict[str, object] | None = None) -> VolumeStore:
        """Write the remaining volumes, publish the store and open it.

        Args:
            out: Where to publish a store built without ``out`` (ignored otherwise).
            provenance: How the store was made, recorded for idempotent reruns.
        """
        target = self.out if self.out is not None else out
        if target is None:
            raise ValueError("StoreBuilder.save needs the store folder")
        while self._pending:
            self._write_next()
        if not self.volumes:
            raise DataError(f"{target}: no volumes were found to preprocess")
        if not self.classes:
            raise ValueError("the dataset did not set StoreBuilder.classes")
        if self.out is None:
            refuse_existing(target)
        writer = self._store_writer()
        writer.publish(self.name, list(self.classes), self.spacing, self.volumes, dict(provenance or {}))
        if self._scratch is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(writer.path, target)
        self.discard()
        return VolumeStore.load(target)

    def discard(self) -> None:
        """Stop the workers and remove whatever was written but not published (safe to repeat)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()
        if self._writer is not None:
            self._writer.discard()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)


def _picklable(obj: object) -> bool:
    try:
        pickle.dumps(obj)
    except Exception:
        return False
    return True
