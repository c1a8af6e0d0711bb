"""Volume preprocessing shared by every data set and by prediction, and its exact inverse.

A volume ``(X, Y, Z)`` becomes ``Z`` slices on a square canvas: each slice is resampled in-plane to
the target spacing (bilinear for images, nearest for labels), intensities are clipped to the
volume's [1st, 99th] percentile and min-max scaled to [0, 1], and the slice is centre padded or
cropped to the canvas. :class:`SliceGeometry` records what was done so that a prediction on the
canvas maps back onto the original voxel grid (:func:`restore_labels`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mireg.data.store import VolumeInfo, VolumeStore
from mireg.errors import DataError

__all__ = [
    "SliceGeometry",
    "StoreBuilder",
    "normalize_intensity",
    "preprocess_volume",
    "restore_labels",
]


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

    def to_canvas(self, slices: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Place ``(Z, *, RX, RY)`` resampled slices on the ``(Z, *, canvas, canvas)`` canvas."""
        out = slices.new_full((*slices.shape[:-2], self.canvas, self.canvas), fill)
        (src_x, dst_x), (src_y, dst_y) = (
            _overlap(o, n, self.canvas) for o, n in zip(self.offset, self.resampled, strict=True)
        )
        out[..., dst_x, dst_y] = slices[..., src_x, src_y]
        return out

    def from_canvas(self, slices: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Inverse of :meth:`to_canvas`: ``(Z, *, canvas, canvas)`` -> ``(Z, *, RX, RY)``."""
        out = slices.new_full((*slices.shape[:-2], *self.resampled), fill)
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


def normalize_intensity(volume: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Clip to the volume's [low, high] percentiles and scale to [0, 1] (float32)."""
    volume = volume.astype(np.float32, copy=False)
    lo, hi = np.percentile(volume, [low, high])
    if hi <= lo:
        return np.zeros_like(volume)
    scaled: np.ndarray = (np.clip(volume, lo, hi) - lo) / (hi - lo)
    return scaled


def _resample(slices: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resample ``(Z, C, X, Y)`` in-plane to ``size``."""
    if tuple(slices.shape[-2:]) == size:
        return slices
    if mode == "nearest":
        return F.interpolate(slices, size=size, mode="nearest-exact")
    return F.interpolate(slices, size=size, mode="bilinear", align_corners=False)


def preprocess_volume(
    image: np.ndarray,
    spacing: tuple[float, float, float],
    target_spacing: float,
    canvas: int,
    label: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, SliceGeometry]:
    """Turn an ``(X, Y, Z)`` volume into ``(Z, canvas, canvas)`` slices.

    Args:
        image: Intensities ``(X, Y, Z)``.
        spacing: Voxel spacing in mm.
        target_spacing: In-plane spacing (mm) to resample to.
        canvas: Output slice side.
        label: Optional integer label map of the image's shape.

    Returns:
        Image slices (float32 in [0, 1]), label slices (uint8) or None, and the geometry.
    """
    geometry = SliceGeometry.for_volume(image.shape[:2], spacing[:2], target_spacing, canvas)
    img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[:, None]
    img = _resample(img, geometry.resampled, "bilinear")
    img_np = normalize_intensity(img.numpy())  # percentiles over the resampled volume
    slices = geometry.to_canvas(torch.from_numpy(img_np))[:, 0].numpy()
    if label is None:
        return slices, None, geometry
    lab = torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32)).permute(2, 0, 1)[:, None]
    lab = geometry.to_canvas(_resample(lab, geometry.resampled, "nearest"))[:, 0]
    return slices, lab.round().to(torch.uint8).numpy(), geometry


def restore_labels(probs: torch.Tensor, geometry: SliceGeometry) -> np.ndarray:
    """Map canvas probabilities ``(Z, C, canvas, canvas)`` back to an ``(X, Y, Z)`` label map.

    Probabilities (not labels) are resampled bilinearly, then the argmax is taken on the original
    grid; whatever fell outside the canvas is background.
    """
    background = torch.zeros(probs.shape[1], 1, 1, dtype=probs.dtype, device=probs.device)
    background[0] = 1.0
    canvas = torch.ones(1, geometry.canvas, geometry.canvas, dtype=torch.bool, device=probs.device)
    inside = geometry.from_canvas(canvas, fill=False)
    resampled = torch.where(inside, geometry.from_canvas(probs), background)
    original = _resample(resampled.float(), geometry.shape, "bilinear")
    return original.argmax(dim=1).permute(1, 2, 0).to(torch.uint8).cpu().numpy()


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
