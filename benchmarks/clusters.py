"""How well a run's MI cluster heads match the labels: the share of the label entropy they explain.

    python benchmarks/clusters.py RUN_DIR [RUN_DIR ...] [--checkpoint best.pt] [--split test]

For each run trained with the `mutual_information` regulariser, segments the labelled slices of one
split's patients with the checkpoint's network, and prints, for the network's prediction and for
every sub-head of every decoder (local) head, the uncertainty coefficient over all pixels

    U(label | cluster) = I(cluster; label) / H(label)

(0: the clusters say nothing about the labels; 1: they determine them). Labels are taken at each
head's resolution (nearest). A head with more clusters than classes can score above the prediction:
it may split a structure into several clusters without losing information about it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mireg.errors import MiregError
from mireg.network import build_network
from mireg.regularizers.mutual_information import MutualInformation
from mireg.training.data import load_data
from mireg.training.rundir import RunDir
from mireg.training.state import Checkpoint, TrainState
from mireg.training.step import TappedNetwork


def uncertainty_coefficient(counts: np.ndarray) -> float:
    """``I(a; b) / H(b)`` of a ``(A, B)`` contingency table of counts (columns: the labels)."""
    joint = counts / counts.sum()
    pa, pb = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    mi = float((joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])).sum())
    h = float(-(pb[pb > 0] * np.log(pb[pb > 0])).sum())
    return mi / h if h > 0 else 0.0


def _count(counts: np.ndarray, a: torch.Tensor, b: torch.Tensor) -> None:
    """Add the pairs of two equally shaped integer maps to a contingency table."""
    n_b = counts.shape[1]
    pairs = torch.bincount((a * n_b + b).flatten(), minlength=counts.size)
    counts += pairs.numpy().reshape(counts.shape)


def cluster_scores(
    run_dir: Path, checkpoint: str = "best.pt", split: str = "test", batch: int = 32
) -> dict[str, list[float]]:
    """``{"prediction": [U], "<layer>": [U per sub-head], ...}`` of one run (see the module doc)."""
    saved = Checkpoint.read(RunDir(run_dir).checkpoint(checkpoint))
    cpu = torch.device("cpu")
    on_cpu = saved.recipe.train.model_copy(update={"device": "cpu"})
    recipe = saved.recipe.model_copy(update={"train": on_cpu})
    data = load_data(recipe)
    store = data.store
    model, terms = build_network(recipe)
    state = TrainState.create(recipe, saved.data, model, terms, cpu)
    # The heads were trained on the features of the optimised network (a mean teacher's student).
    state.load_state_dict(saved.state)
    heads = [r for r in state.regularizers if isinstance(r, MutualInformation)]
    if not heads:
        raise SystemExit(f"{run_dir}: the recipe has no mutual_information regulariser")
    mi = heads[0]
    model.eval()
    mi.eval()
    tapped = TappedNetwork(model, mi.taps)
    index = store.slice_indices(getattr(data.split, split))
    label_rows = store.label_rows()[index]
    classes = len(data.store.classes)
    local = [name for name in mi.taps if mi.kinds[name] == "decoder"]
    counts = {"prediction": [np.zeros((classes, classes), dtype=np.int64)]}
    with torch.no_grad():
        for start in range(0, len(index), batch):
            x = torch.from_numpy(store.images[index[start : start + batch]])[:, None].float()
            y = torch.from_numpy(store.labels[label_rows[start : start + batch]]).long()
            logits, features = tapped(x)
            _count(counts["prediction"][0], logits.argmax(dim=1), y)
            for name in local:
                z = mi.heads[name](features[name])  # (N, S, K, H, W)
                y_at = F.interpolate(y[:, None].float(), size=z.shape[-2:], mode="nearest")[:, 0].long()
                tables = counts.setdefault(
                    name, [np.zeros((z.shape[2], classes), dtype=np.int64) for _ in range(z.shape[1])]
                )
                for s, table in enumerate(tables):
                    _count(table, z[:, s].argmax(dim=1), y_at)
    return {name: [uncertainty_coefficient(t) for t in tables] for name, tables in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--checkpoint", default="best.pt")
    parser.add_argument("--split", default="test", choices=["validation", "test"])
    args = parser.parse_args()
    for run in args.runs:
        try:
            scores = cluster_scores(run, args.checkpoint, args.split)
        except MiregError as exc:
            raise SystemExit(f"error: {exc}") from None
        parts = [f"{name} " + " ".join(f"{u:.2f}" for u in values) for name, values in scores.items()]
        print(f"{run.name}: " + "; ".join(parts), flush=True)


if __name__ == "__main__":
    main()
