"""Inference on whole volumes, shared by evaluation, ``mireg predict`` and exported models.

Torch-free (numpy and scipy): a network is any function from a batch of slices ``(N, 1, H, W)``
(float32) to logits ``(N, C, H, W)``, whether a torch module
(:meth:`mireg.training.state.TrainedModel.network`) or an ONNX Runtime session
(:mod:`mireg.export.portable`). Everything around it happens here, once:

* :func:`segment_slices`: batches, softmax, and flip test-time augmentation (``tta``): the
  probabilities of the slice and of its flips along each in-plane axis and both, flipped back and
  averaged; slices larger than the network's window are covered by overlapping windows
  (:func:`window_starts`) whose probabilities are blended with a Gaussian weight (:func:`window_weight`);
* :func:`keep_largest_components`: each structure reduced to its largest connected component in 3D
  (6-connected), the rest set to background;
* :func:`predict_volume`: a scan from its own grid to the canvas (:mod:`mireg.preprocessing.volume`),
  through the network, and back to a label map on its own grid. The whole field of view is
  segmented: a slice that the training canvas cannot hold at the training spacing is placed on a
  larger canvas and segmented window by window, each window the training canvas's size (which any
  network, an export of fixed input size included, accepts).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from mireg.preprocessing.volume import PERCENTILES, SliceGeometry, preprocess_volume, restore_probabilities

__all__ = [
    "FLIPS",
    "InferenceOptions",
    "Network",
    "Predictor",
    "Preprocessing",
    "VolumePrediction",
    "keep_largest_components",
    "model_identity",
    "predict_volume",
    "segment_slices",
    "softmax",
    "window_starts",
    "window_weight",
]

#: Share of a window that overlaps its neighbour when a slice is segmented window by window.
WINDOW_OVERLAP = 0.5

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

    def overridden(self, tta: bool | None = None, keep_largest: bool | None = None) -> InferenceOptions:
        """These options, with each one given (not None) in its place (a command line's choices
        over a recipe's)."""
        return InferenceOptions(
            tta=self.tta if tta is None else tta,
            keep_largest=self.keep_largest if keep_largest is None else keep_largest,
        )

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


@dataclass(frozen=True)
class Predictor:
    """A network and what is needed to apply it to a scan.

    Attributes:
        network: Slices ``(N, 1, H, W)`` -> logits (:data:`Network`).
        preprocessing: The training data's spacing, canvas, classes and intensity percentiles.
        batch: Slices per network call.
        options: The default test-time augmentation and largest-component settings.
        name: The model's name (its recipe's), recorded in DICOM SEG outputs.
        version: The mireg version that trained or exported it.
        identity: What identifies the weights (checkpoint, epoch and the weights' SHA-256, equal for
            a run and its exports), recorded in DICOM SEG outputs as the algorithm's version.
    """

    network: Network
    preprocessing: Preprocessing
    batch: int
    options: InferenceOptions
    name: str
    version: str
    identity: str = ""


def model_identity(checkpoint: str, epoch: int, weights_sha256: str) -> str:
    """``best.pt e87 sha256:0123456789abcdef``: the checkpoint, its epoch and the weights' checksum
    (its first 16 hex digits; the full one is in the model card), within DICOM's 64 characters."""
    return f"{checkpoint} e{epoch} sha256:{weights_sha256[:16]}"[:64]


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Softmax over ``axis`` in float32 (shifted by the maximum, so large logits do not overflow)."""
    shifted = logits.astype(np.float32, copy=False) - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    out: np.ndarray = exp / exp.sum(axis=axis, keepdims=True)
    return out


def window_starts(size: int, window: int, overlap: float = WINDOW_OVERLAP) -> list[int]:
    """Where the windows of side ``window`` start along an axis of ``size`` pixels: evenly spaced,
    the first at 0 and the last at ``size - window``, neighbours overlapping by at least ``overlap``
    of a window (one window, at 0, when it holds the whole axis)."""
    if size <= window:
        return [0]
    count = math.ceil((size - window) / (window * (1 - overlap))) + 1
    return [round(i * (size - window) / (count - 1)) for i in range(count)]


def window_weight(window: int) -> np.ndarray:
    """``(window, window)`` blending weights: a Gaussian of standard deviation ``window / 8`` about the
    centre, as nnU-Net weights its sliding windows (Isensee et al., 2021), so that each pixel is
    decided mostly by the windows that see it far from their borders; never zero."""
    x = np.arange(window, dtype=np.float64) - (window - 1) / 2
    g = np.exp(-0.5 * (x / (window / 8)) ** 2)
    weight = np.outer(g, g)
    weight /= weight.max()
    out: np.ndarray = np.maximum(weight, weight[weight > 0].min()).astype(np.float32)
    return out


def _probabilities(network: Network, x: np.ndarray, views: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """``(N, C, H, W)`` probabilities of ``x`` ``(N, 1, H, W)``, averaged over the flipped ``views``."""
    total: np.ndarray | None = None
    for axes in views:
        view = np.ascontiguousarray(np.flip(x, axes)) if axes else x
        probs = softmax(network(view))
        probs = np.flip(probs, axes) if axes else probs
        total = probs if total is None else total + probs
    assert total is not None
    return total / len(views) if len(views) > 1 else total


def segment_slices(
    network: Network, slices: np.ndarray, batch: int, tta: bool = False, window: int | None = None
) -> np.ndarray:
    """Class probabilities of ``(S, H, W)`` slices, ``batch`` slices per network call.

    Args:
        network: Slices ``(N, 1, h, w)`` -> logits ``(N, C, h, w)``.
        slices: ``(S, H, W)`` float slices on the canvas.
        batch: Slices per call.
        tta: Average the probabilities of the flipped views (:data:`FLIPS`), each flipped back.
        window: The network's input side. Slices larger than it are segmented in overlapping
            ``window`` x ``window`` windows (:func:`window_starts`) whose probabilities are blended
            (:func:`window_weight`); ``None``: whole slices.

    Returns:
        ``(S, C, H, W)`` float32 probabilities.
    """
    views = FLIPS if tta else FLIPS[:1]
    height, width = slices.shape[1:]
    if window is None or (height <= window and width <= window):
        out = [
            _probabilities(network, np.asarray(slices[i : i + batch, None], dtype=np.float32), views)
            for i in range(0, slices.shape[0], batch)
        ]
        return np.concatenate(out).astype(np.float32, copy=False)
    rows, cols = window_starts(height, window), window_starts(width, window)
    weight = window_weight(window)
    total: np.ndarray | None = None
    weights = np.zeros((height, width), dtype=np.float32)
    for r in rows:
        for c in cols:
            tile = np.asarray(slices[:, None, r : r + window, c : c + window], dtype=np.float32)
            probs = np.concatenate(
                [_probabilities(network, tile[i : i + batch], views) for i in range(0, len(tile), batch)]
            )
            if total is None:
                total = np.zeros((slices.shape[0], probs.shape[1], height, width), dtype=np.float32)
            total[:, :, r : r + window, c : c + window] += probs * weight
            weights[r : r + window, c : c + window] += weight
    assert total is not None
    out_probs: np.ndarray = total / weights
    return out_probs


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

    The scan is preprocessed as the training data was (:func:`~mireg.preprocessing.volume.preprocess_volume`),
    its slices segmented (:func:`segment_slices`), the probabilities mapped back onto the scan's grid
    (:func:`~mireg.preprocessing.volume.restore_probabilities`) and the argmax taken there, then
    reduced to the largest components if asked. A slice larger than the training canvas at the
    training spacing goes on a canvas that holds it whole and is segmented window by window.
    """
    canvas = preprocessing.canvas
    whole = SliceGeometry.for_volume(image.shape[:2], spacing[:2], preprocessing.spacing, canvas)
    side = max(canvas, *whole.resampled)
    slices, _, geometry = preprocess_volume(
        image, spacing, preprocessing.spacing, side, percentiles=preprocessing.percentiles
    )
    probs = segment_slices(network, slices, batch, options.tta, window=canvas)
    probabilities = restore_probabilities(probs, geometry)
    labels = probabilities.argmax(axis=-1).astype(np.uint8)
    if options.keep_largest:
        labels = keep_largest_components(labels, probabilities.shape[-1])
    return VolumePrediction(labels, probabilities)
