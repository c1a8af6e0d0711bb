"""Training curves (``curves.png``) from a run's ``metrics.csv``."""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["plot_curves"]


def plot_curves(metrics_csv: Path, out: Path) -> None:
    """Plot losses, learning rate and validation DSC per epoch into ``out`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    epochs = [int(r["epoch"]) for r in rows]

    def column(name: str) -> list[float]:
        return [float(r[name]) if r.get(name) not in (None, "") else float("nan") for r in rows]

    losses = [k for k in rows[0] if k.startswith("loss/")]
    val = [k for k in rows[0] if k.startswith("val_dice/")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key in losses:
        axes[0].plot(epochs, column(key), label=key.removeprefix("loss/"))
    axes[0].set(title="training losses (epoch mean)", xlabel="epoch")
    axes[0].legend(fontsize=8)
    axes[1].plot(epochs, column("lr"))
    axes[1].set(title="learning rate", xlabel="epoch", yscale="log")
    for key in val:
        axes[2].plot(epochs, column(key), label=key.removeprefix("val_dice/"),
                     linewidth=2.5 if key.endswith("/mean") else 1)
    axes[2].set(title="validation 3D DSC", xlabel="epoch", ylim=(0, 1))
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(out)
