"""Evaluation on whole volumes: segmentation, per-volume per-class metrics, and their summary.

Metrics (:mod:`mireg.evaluation.metrics`: DSC, HD95, HD, ASSD) are computed in 3D per volume and
per structure, in mm. For a run's store the grid is the preprocessed one: in-plane spacing = the
store's spacing, between slices = the scan's own slice spacing. ``evaluate_folders`` compares NIfTI
label maps on their own grids, with the spacing of their headers.

Validation during training segments on the device (:func:`segment`); reports
(:func:`evaluate_volumes`, for a run: :func:`mireg.training.evaluation.evaluate_run`) go through
:mod:`mireg.inference`, the same code as ``mireg predict``, with its options (flip test-time
augmentation, largest components).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mireg.errors import DataError
from mireg.evaluation.metrics import ClassMetrics, class_metrics, dice_per_class
from mireg.evaluation.report import METRICS
from mireg.inference import InferenceOptions, Network, keep_largest_components, segment_slices
from mireg.io.nifti import nifti_files, read_volume
from mireg.precision import arithmetic
from mireg.preprocessing.store import VolumeInfo, VolumeStore
from mireg.progress import Progress

__all__ = [
    "VolumeResult",
    "build_report",
    "evaluate_folders",
    "evaluate_volumes",
    "logits",
    "network_function",
    "score_volume",
    "segment",
    "summarize",
    "validation_dice",
]


def logits(model: nn.Module, x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """The network's float32 logits ``(N, C, H, W)`` of a batch ``(N, 1, H, W)`` (bf16: under autocast)."""
    with arithmetic(precision, x.device):
        out: torch.Tensor = model(x)
    return out.float()


@torch.no_grad()
def segment(model: nn.Module, images: torch.Tensor, batch: int, precision: str = "fp32") -> torch.Tensor:
    """Class probabilities of ``(S, H, W)`` slices, ``batch`` slices per forward pass, on the device.

    Args:
        model: The network (put in eval mode by the caller).
        images: ``(S, H, W)`` float slices on the model's device.
        batch: Slices per forward pass.
        precision: ``fp32`` or ``bf16`` (autocast for the network; probabilities in float32).

    Returns:
        ``(S, C, H, W)`` float32 probabilities on the model's device.
    """
    out = []
    for start in range(0, images.shape[0], batch):
        out.append(logits(model, images[start : start + batch, None].float(), precision).softmax(dim=1))
    return torch.cat(out)


def _device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters())).device


def network_function(model: nn.Module, precision: str = "fp32") -> Network:
    """``model`` as a :data:`~mireg.inference.Network`: numpy slices in, numpy logits out.

    The batch goes to the model's device and its logits come back to the host.
    """
    device = _device(model)

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
        out: np.ndarray = logits(model, batch, precision).cpu().numpy()
        return out

    return run


def _predictions(
    model: nn.Module, store: VolumeStore, patients: Sequence[str], batch: int, precision: str
) -> Iterator[tuple[VolumeInfo, torch.Tensor]]:
    """Yield ``(volume, predicted labels (Z, H, W))`` on the model's device for the labelled volumes
    of ``patients``, reading one volume at a time from the store."""
    device = _device(model)
    was_training = model.training
    model.eval()
    try:
        for v in store.volumes_of(patients):
            images = torch.from_numpy(store.volume_images(v)).to(device)
            yield v, segment(model, images, batch, precision).argmax(dim=1)
    finally:
        model.train(was_training)


def validation_dice(
    model: nn.Module,
    store: VolumeStore,
    patients: Sequence[str],
    batch: int,
    precision: str = "fp32",
) -> dict[str, float]:
    """Mean 3D DSC per structure, and their mean, over the volumes of ``patients`` (on the model's
    device)."""
    rows = [
        dice_per_class(
            pred, torch.from_numpy(store.volume_labels(v)).to(pred.device).long(), len(store.classes)
        )
        for v, pred in _predictions(model, store, patients, batch, precision)
    ]
    if not rows:
        return {}
    per_class = torch.stack(rows).mean(dim=0).cpu().tolist()
    out = dict(zip(store.classes[1:], per_class, strict=True))
    out["mean"] = float(np.mean(per_class))
    return out


@dataclass(frozen=True)
class VolumeResult:
    """Metrics of one volume: structure name -> :class:`~mireg.evaluation.metrics.ClassMetrics`."""

    id: str
    patient: str
    phase: str
    metrics: dict[str, ClassMetrics]


def score_volume(
    store: VolumeStore, volume: VolumeInfo, prediction: np.ndarray, truth: np.ndarray
) -> VolumeResult:
    """Every metric of one volume's predicted label map ``(Z, H, W)`` on the store's grid, against
    its ground truth: how every prediction is scored, whatever segmented it."""
    spacing = (volume.spacing[2], store.spacing, store.spacing)  # (Z, H, W) of the canvas grid
    metrics = {
        name: class_metrics(prediction == k, truth == k, spacing)
        for k, name in enumerate(store.classes)
        if k > 0
    }
    return VolumeResult(volume.id, volume.patient, volume.phase, metrics)


def evaluate_volumes(
    model: nn.Module,
    store: VolumeStore,
    patients: Sequence[str],
    batch: int,
    precision: str = "fp32",
    on_volume: Callable[[VolumeInfo, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
    options: InferenceOptions | None = None,
) -> list[VolumeResult]:
    """All metrics of every labelled volume of ``patients``.

    Args:
        model: The network (switched to eval mode here, and back after).
        store: The store (read one volume at a time).
        patients: Patient ids to evaluate.
        batch: Slices per forward pass.
        precision: ``fp32`` or ``bf16``.
        on_volume: Called as ``on_volume(volume, images, prediction, ground_truth)`` with
            ``(Z, H, W)`` arrays, e.g. to draw overlays.
        options: Test-time augmentation and largest components (:mod:`mireg.inference`; default none).
    """
    options = options or InferenceOptions()
    results = []
    network = network_function(model, precision)
    was_training = model.training
    model.eval()
    try:
        for v in store.volumes_of(patients):
            image_np = np.asarray(store.volume_images(v), dtype=np.float32)
            pred_np = segment_slices(network, image_np, batch, options.tta).argmax(axis=1)
            if options.keep_largest:
                pred_np = keep_largest_components(pred_np, len(store.classes))
            gt_np = np.asarray(store.volume_labels(v))
            results.append(score_volume(store, v, pred_np, gt_np))
            if on_volume is not None:
                on_volume(v, image_np, pred_np, gt_np)
    finally:
        model.train(was_training)
    return results


def _stats(values: list[float | None]) -> dict[str, Any]:
    defined = [x for x in values if x is not None]
    return {
        "mean": float(np.mean(defined)) if defined else None,
        "std": float(np.std(defined)) if defined else None,
        "n": len(defined),
        "undefined": len(values) - len(defined),
    }


def _volume_mean(result: VolumeResult, metric: str) -> float | None:
    """Mean of a metric over the structures of one volume where it is defined."""
    values = [getattr(m, metric) for m in result.metrics.values()]
    defined = [x for x in values if x is not None]
    return float(np.mean(defined)) if defined else None


def summarize(results: list[VolumeResult], structures: Sequence[str]) -> dict[str, Any]:
    """Mean, std, count and undefined count of each metric.

    Returns:
        ``{metric: {phase: {structure: stats}}}`` with phases ``ED``/``ES`` (where present) and
        ``all``, structures plus ``mean`` (per volume, the mean over its structures). Undefined
        values (a structure missing from exactly one of prediction and ground truth) are counted,
        never silently dropped.
    """
    phases = sorted({r.phase for r in results if r.phase})
    groups = {p: [r for r in results if r.phase == p] for p in phases}
    groups["all"] = results
    out: dict[str, Any] = {}
    for metric in METRICS:
        out[metric] = {
            phase: {
                **{s: _stats([getattr(r.metrics[s], metric) for r in rows]) for s in structures},
                "mean": _stats([_volume_mean(r, metric) for r in rows]),
            }
            for phase, rows in groups.items()
        }
    return out


def build_report(
    results: list[VolumeResult], structures: Sequence[str], meta: dict[str, Any]
) -> dict[str, Any]:
    """The report as plain data: ``meta`` + structures + summary + per-volume metrics."""
    return {
        **meta,
        "structures": list(structures),
        "summary": summarize(results, structures),
        "volumes": [
            {
                "id": r.id,
                "patient": r.patient,
                "phase": r.phase,
                "metrics": {s: vars(m) for s, m in r.metrics.items()},
            }
            for r in results
        ],
    }


# --------------------------------------------------------------------------------------------------
# Folders of NIfTI label maps


def evaluate_folders(
    pred_dir: Path, gt_dir: Path, labels: Sequence[int] | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Compare predicted label maps with ground-truth label maps of the same file names.

    Args:
        pred_dir: Folder of predicted NIfTI label maps.
        gt_dir: Folder of ground-truth NIfTI label maps (file names match ``pred_dir``'s).
        labels: Label values to evaluate (default: every non-zero value found in either folder).
        progress: Optional ``progress(done, total, description)``.

    Returns:
        ``{"labels": [...], "cases": [{"case", "labels": {"1": {dice, hd95, hd, assd}}}],
        "mean": {"1": {metric: stats}}}``.

    Raises:
        DataError: Missing partners, mismatched shapes, unreadable or non-integer label maps.
    """
    preds = {p.name: p for p in nifti_files(pred_dir)}
    gts = {p.name: p for p in nifti_files(gt_dir)}
    missing_pred = sorted(set(gts) - set(preds))
    missing_gt = sorted(set(preds) - set(gts))
    if missing_pred:
        raise DataError(
            f"{gt_dir / missing_pred[0]}: no prediction of that name in {pred_dir}"
            + (f" (and {len(missing_pred) - 1} more)" if len(missing_pred) > 1 else "")
        )
    if missing_gt:
        raise DataError(
            f"{pred_dir / missing_gt[0]}: no ground truth of that name in {gt_dir}"
            + (f" (and {len(missing_gt) - 1} more)" if len(missing_gt) > 1 else "")
        )
    pairs = []
    for name in sorted(gts):
        pred, _, _ = read_volume(preds[name], label=True)
        gt, _, spacing = read_volume(gts[name], label=True)
        if pred.shape != gt.shape:
            raise DataError(
                f"{preds[name]}: shape {pred.shape} differs from the ground truth's {gt.shape} ({gts[name]})"
            )
        pairs.append((name, pred, gt, spacing))
    if labels is None:
        labels = sorted(
            {int(x) for _, p, g, _ in pairs for x in np.union1d(np.unique(p), np.unique(g))} - {0}
        )
    cases: list[dict[str, Any]] = []
    for i, (name, pred, gt, spacing) in enumerate(pairs):
        per_label = {str(k): vars(class_metrics(pred == k, gt == k, spacing)) for k in labels}
        cases.append({"case": name, "labels": per_label})
        if progress is not None:
            progress(i + 1, len(pairs), "evaluating")
    mean = {str(k): {m: _stats([c["labels"][str(k)][m] for c in cases]) for m in METRICS} for k in labels}
    return {"labels": [str(k) for k in labels], "cases": cases, "mean": mean}
