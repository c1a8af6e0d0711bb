"""Inference on whole volumes, shared by evaluation, ``mireg predict`` and exported models.

Torch-free (numpy and scipy): a network is any function from a batch of slices ``(N, 1, H, W)``
(float32) to logits ``(N, C, H, W)``, whether a torch module (:meth:`mireg.state.TrainedModel.network`)
or an ONNX Runtime session (:mod:`mireg.portable`). Everything around it happens here, once:

* :func:`segment_slices`: batches, softmax, and flip test-time augmentation (``tta``): the
  probabilities of the slice and of its flips along each in-plane axis and both, flipped back and
  averaged;
* :func:`keep_largest_components`: each structure reduced to its largest connected component in 3D
  (6-connected), the rest set to background;
* :func:`predict_volume`: a scan from its own grid to the canvas (:mod:`mireg.data.preprocessing`),
  through the network, and back to a label map on its own grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from mireg.data.preprocessing import PERCENTILES, preprocess_volume, restore_probabilities

__all__ = [
    "FLIPS",
    "InferenceOptions",
    "Network",
    "Preprocessing",
    "VolumePrediction",
    "keep_largest_components",
    "predict_volume",
    "segment_slices",
    "softmax",
]

#: A network: slices ``(N, 1, H, W)`` float32 -> logits ``(N, C, H, W)`` float32.
Network = Callable[[np.ndarray], np.ndarray]

#: The views of flip test-time augmentation: the slice itself and its flips along the in-plane axes.
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


@dataclass(frozen=True)
class InferenceOptions:
    """How a volume is segmented beyond the network itself.

    Attributes:
        tta: Average the probabilities of the four flips of each slice (:data:`FLIPS`).
        keep_largest: Keep only the largest 3D connected component of each structure.
    """

    tta: bool = False
    keep_largest: bool = False

    def suffix(self) -> str:
        """``_tta``, ``_largest``, ``_tta_largest`` or ``""``: names reports made with these options."""
        return ("_tta" if self.tta else "") + ("_largest" if self.keep_largest else "")


@dataclass(frozen=True)
class Preprocessing:
    """What a network needs to know of its training data to be applied to a new scan.

    Attributes:
        spacing: The in-plane spacing (mm) slices are resampled to.
        canvas: The side of the square canvas slices are padded or cropped to.
        classes: Class names, index = label value (``classes[0]`` is the background).
        percentiles: Intensity clipping percentiles before the [0, 1] scaling.
    """

    spacing: float
    canvas: int
    classes: list[str] = field(default_factory=list)
    percentiles: tuple[float, float] = PERCENTILES


@dataclass(frozen=True)
class VolumePrediction:
    """A segmented scan on its own grid: the label map ``(X, Y, Z)`` and probabilities ``(X, Y, Z, C)``."""

    labels: np.ndarray
    probabilities: np.ndarray


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Softmax over ``axis`` in float32 (shifted by the maximum, so large logits do not overflow)."""
    shifted = logits.astype(np.float32, copy=False) - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    out: np.ndarray = exp / exp.sum(axis=axis, keepdims=True)
    return out


def segment_slices(network: Network, slices: np.ndarray, batch: int, tta: bool = False) -> np.ndarray:
    """Class probabilities of ``(S, H, W)`` slices, ``batch`` slices per network call.

    Args:
        network: Slices ``(N, 1, H, W)`` -> logits ``(N, C, H, W)``.
        slices: ``(S, H, W)`` float slices on the canvas.
        batch: Slices per call.
        tta: Average the probabilities of the flipped views (:data:`FLIPS`), each flipped back.

    Returns:
        ``(S, C, H, W)`` float32 probabilities.
    """
    out = []
    views = FLIPS if tta else FLIPS[:1]
    for start in range(0, slices.shape[0], batch):
        x = np.asarray(slices[start : start + batch, None], dtype=np.float32)
        total: np.ndarray | None = None
        for axes in views:
            view = np.ascontiguousarray(np.flip(x, axes)) if axes else x
            probs = softmax(network(view))
            probs = np.flip(probs, axes) if axes else probs
            total = probs if total is None else total + probs
        assert total is not None
        out.append(total / len(views) if len(views) > 1 else total)
    return np.concatenate(out).astype(np.float32, copy=False)


def keep_largest_components(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Keep only the largest connected component of each structure (6-connected, in 3D).

    Args:
        labels: An integer label map (3D; any axis order).
        num_classes: Classes including the background (class 0, never changed).

    Returns:
        A copy of ``labels`` in which every other component of each class is background (0). Of
        components of equal size the first in scan order is kept.
    """
    out: np.ndarray = labels.copy()
    for k in range(1, num_classes):
        mask = labels == k
        components, count = ndimage.label(mask)
        if count > 1:
            sizes = np.bincount(components.ravel())[1:]
            out[mask & (components != int(np.argmax(sizes)) + 1)] = 0
    return out


def predict_volume(
    network: Network,
    image: np.ndarray,
    spacing: tuple[float, float, float],
    preprocessing: Preprocessing,
    batch: int,
    options: InferenceOptions = InferenceOptions(),
) -> VolumePrediction:
    """Segment one scan ``(X, Y, Z)`` on its own grid.

    The scan is preprocessed as the training data was (:func:`~mireg.data.preprocessing.preprocess_volume`),
    its slices segmented (:func:`segment_slices`), the probabilities mapped back onto the scan's grid
    (:func:`~mireg.data.preprocessing.restore_probabilities`) and the argmax taken there, then
    reduced to the largest components if asked.
    """
    slices, _, geometry = preprocess_volume(
        image, spacing, preprocessing.spacing, preprocessing.canvas, percentiles=preprocessing.percentiles
    )
    probabilities = restore_probabilities(segment_slices(network, slices, batch, options.tta), geometry)
    labels = probabilities.argmax(axis=-1).astype(np.uint8)
    if options.keep_largest:
        labels = keep_largest_components(labels, probabilities.shape[-1])
    return VolumePrediction(labels, probabilities)
