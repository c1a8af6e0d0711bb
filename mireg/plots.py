"""Figures: training curves (``curves.png``) and label overlays of volumes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from mireg.files import atomic_write

__all__ = ["plot_curves", "save_overlay"]


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
        axes[2].plot(
            epochs,
            column(key),
            label=key.removeprefix("val_dice/"),
            linewidth=2.5 if key.endswith("/mean") else 1,
        )
    axes[2].set(title="validation 3D DSC", xlabel="epoch", ylim=(0, 1))
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=90))
    plt.close(fig)


#: Contour colours by label value (1 RV red, 2 MYO green, 3 LV blue, then more).
_COLOURS = ["#e41a1c", "#4daf4a", "#377eb8", "#ff7f00", "#984ea3", "#ffff33", "#a65628"]


def save_overlay(
    out: Path,
    image: np.ndarray,
    prediction: np.ndarray,
    ground_truth: np.ndarray | None = None,
    title: str = "",
    max_slices: int = 12,
) -> None:
    """Draw slices of a volume with label contours into a PNG.

    Args:
        out: PNG file to write.
        image: ``(Z, H, W)`` intensities.
        prediction: ``(Z, H, W)`` integer labels (solid contours).
        ground_truth: Optional ``(Z, H, W)`` labels (dashed contours).
        title: Figure title.
        max_slices: At most this many slices, evenly spaced, are drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = image.shape[0]
    picks = np.unique(np.linspace(0, z - 1, min(z, max_slices)).round().astype(int))
    cols = min(len(picks), 6)
    rows = (len(picks) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows + 0.4), squeeze=False)
    present = np.unique(prediction) if ground_truth is None else np.union1d(prediction, ground_truth)
    labels = [int(v) for v in present if v != 0]
    for ax in axes.flat:
        ax.axis("off")
    for ax, k in zip(axes.flat, picks, strict=False):
        ax.imshow(image[k], cmap="gray", interpolation="nearest")
        for value in labels:
            colour = _COLOURS[(int(value) - 1) % len(_COLOURS)]
            if (prediction[k] == value).any():
                ax.contour(prediction[k] == value, levels=[0.5], colors=[colour], linewidths=1.0)
            if ground_truth is not None and (ground_truth[k] == value).any():
                ax.contour(
                    ground_truth[k] == value,
                    levels=[0.5],
                    colors=[colour],
                    linewidths=0.8,
                    linestyles="dashed",
                )
        ax.set_title(f"slice {k}", fontsize=8)
    legend = "solid: prediction" + (", dashed: ground truth" if ground_truth is not None else "")
    fig.suptitle(f"{title}  ({legend})", fontsize=9)
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=80))
    plt.close(fig)
