"""Evaluation of a model on whole volumes of a store: 3D DSC per class per volume, summarised."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mireg.data.store import VolumeStore
from mireg.metrics import dice_per_class

__all__ = ["VolumeResult", "evaluate_volumes", "segment", "summarize", "write_report"]


@torch.no_grad()
def segment(
    model: nn.Module,
    images: torch.Tensor,
    batch: int,
    precision: str = "fp32",
) -> torch.Tensor:
    """Class probabilities of ``(S, H, W)`` slices, ``batch`` slices per forward pass.

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
        x = images[start : start + batch, None].float()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(x)
        out.append(logits.float().softmax(dim=1))
    return torch.cat(out)


@dataclass(frozen=True)
class VolumeResult:
    """DSC of one volume, one value per foreground class (store order)."""

    id: str
    patient: str
    phase: str
    dice: list[float]


def evaluate_volumes(
    model: nn.Module,
    store: VolumeStore,
    images: torch.Tensor,
    labels: torch.Tensor,
    patients: list[str],
    batch: int,
    precision: str = "fp32",
) -> list[VolumeResult]:
    """3D DSC of every labelled volume of ``patients``.

    Args:
        model: The network (switched to eval mode here and back to its previous mode after).
        store: The store describing the volumes.
        images: The store's images as a tensor on the model's device.
        labels: The store's labels as a tensor on the model's device.
        patients: Patient ids to evaluate.
        batch: Slices per forward pass.
        precision: ``fp32`` or ``bf16``.
    """
    chosen = set(patients)
    was_training = model.training
    model.eval()
    results = []
    try:
        for v in store.volumes:
            if v.patient not in chosen or not v.labeled:
                continue
            probs = segment(model, images[v.start : v.stop], batch, precision)
            dice = dice_per_class(probs.argmax(dim=1), labels[v.start : v.stop].long(),
                                  len(store.classes))
            results.append(VolumeResult(v.id, v.patient, v.phase, dice.cpu().tolist()))
    finally:
        model.train(was_training)
    return results


def summarize(results: list[VolumeResult], classes: list[str]) -> dict[str, Any]:
    """Mean and standard deviation of the DSC per structure and of the mean over structures.

    Returns:
        ``{"volumes": n, "dice": {structure: {"mean", "std"}, "mean": {...}},
        "by_phase": {phase: same}}``, structures named by ``classes[1:]``.
    """

    def stats(rows: list[VolumeResult]) -> dict[str, dict[str, float]]:
        values = np.array([r.dice for r in rows], dtype=float).reshape(len(rows), len(classes) - 1)
        per_volume_mean = values.mean(axis=1)
        out = {
            name: {"mean": float(values[:, k].mean()), "std": float(values[:, k].std())}
            for k, name in enumerate(classes[1:])
        }
        out["mean"] = {"mean": float(per_volume_mean.mean()), "std": float(per_volume_mean.std())}
        return out

    if not results:
        return {"volumes": 0, "dice": {}, "by_phase": {}}
    phases = sorted({r.phase for r in results if r.phase})
    return {
        "volumes": len(results),
        "dice": stats(results),
        "by_phase": {p: stats([r for r in results if r.phase == p]) for p in phases},
    }


def write_report(path: Path, results: list[VolumeResult], classes: list[str],
                 meta: dict[str, Any]) -> dict[str, Any]:
    """Write the JSON report (summary + per-volume values) and return it."""
    report = {
        **meta,
        "classes": classes[1:],
        "summary": summarize(results, classes),
        "volumes": [
            {**{k: v for k, v in asdict(r).items() if k != "dice"},
             "dice": dict(zip(classes[1:], r.dice, strict=True))}
            for r in results
        ],
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(path)
    return report
