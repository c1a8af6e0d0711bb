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

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mireg.data.store import VolumeInfo, VolumeStore
from mireg.errors import DataError

__all__ = [
    "PERCENTILES",
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


class StoreBuilder:
    """Collects preprocessed volumes and writes them as one :class:`~mireg.data.store.VolumeStore`.

    Dataset plugins add volumes (``add``); the caller writes the store once at the end (``save``),
    atomically, so a failure anywhere leaves no partial output.

    Args:
        name: Data set name recorded in the store.
        spacing: Target in-plane spacing (mm).
        canvas: Side of the square slices.
    """

    def __init__(self, name: str, spacing: float, canvas: int) -> None:
        self.name, self.spacing, self.canvas = name, spacing, canvas
        self.classes: list[str] = []
        self._images: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self.volumes: list[VolumeInfo] = []
        self._slices = 0

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
        """Preprocess one ``(X, Y, Z)`` volume (and its label map, if any) and keep it."""
        if any(v.id == id for v in self.volumes):
            raise DataError(f"{source or id}: volume id {id!r} appears twice")
        slices, lab, _ = preprocess_volume(image, spacing, self.spacing, self.canvas, label)
        n = slices.shape[0]
        self._images.append(slices.astype(np.float16))
        self._labels.append(lab if lab is not None else np.zeros(slices.shape, np.uint8))
        self.volumes.append(
            VolumeInfo(
                id=id,
                patient=patient,
                phase=phase,
                group=group,
                start=self._slices,
                stop=self._slices + n,
                labeled=lab is not None,
                spacing=spacing,
                shape=(int(image.shape[0]), int(image.shape[1]), int(image.shape[2])),
                affine=np.asarray(affine, dtype=float).tolist(),
                source=source,
            )
        )
        self._slices += n

    def save(self, out: Path, provenance: dict[str, object] | None = None) -> VolumeStore:
        """Write the store to ``out`` (which must not exist) and open it."""
        if not self.volumes:
            raise DataError(f"{out}: no volumes were found to preprocess")
        if not self.classes:
            raise ValueError("the dataset did not set StoreBuilder.classes")
        store = VolumeStore(
            self.name,
            list(self.classes),
            self.spacing,
            self.canvas,
            np.concatenate(self._images),
            np.concatenate(self._labels),
            self.volumes,
            dict(provenance or {}),
        )
        store.save(out)
        return VolumeStore.load(out)
