"""Prediction on new NIfTI scans: the training preprocessing, slice-wise 2D inference, and back.

Each scan is resampled in-plane to the training spacing, normalised and placed on the training canvas
exactly as at preprocessing; the network segments its slices in batches; probabilities are mapped
back onto the original voxel grid, so the label map has the input's exact shape, affine and header.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from mireg.contract import Progress
from mireg.data.nifti import is_nifti, nifti_files, nifti_stem, read_volume, write_label_map
from mireg.data.preprocessing import preprocess_volume, restore_labels
from mireg.errors import DataError
from mireg.evaluate import segment
from mireg.plots import save_overlay
from mireg.state import TrainedModel

__all__ = ["collect_inputs", "predict_file", "predict_files"]


def collect_inputs(inputs: Iterable[Path]) -> list[Path]:
    """NIfTI files named directly or found (non-recursively) in the folders given.

    A folder contributes its files as :func:`~mireg.data.nifti.nifti_files` lists them (hidden files
    skipped); a file named directly is taken as it is, if its name ends in ``.nii`` or ``.nii.gz``.
    """
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            files.extend(nifti_files(path))
        elif path.is_file():
            if not is_nifti(path):
                raise DataError(f"{path}: not a NIfTI file (.nii or .nii.gz)")
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    names = [f.name for f in files]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(
            f"two inputs share the output name {duplicates[0]!r}",
            "predict them into different output folders",
        )
    return files


def predict_file(trained: TrainedModel, path: Path, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Label map ``(X, Y, Z)`` (uint8) of the scan at ``path``, and the scan itself."""
    image, _, spacing = read_volume(path)
    slices, _, geometry = preprocess_volume(image, spacing, trained.spacing, trained.canvas)
    device = next(trained.model.parameters()).device
    probs = segment(trained.model, torch.from_numpy(slices).to(device), batch, trained.recipe.train.precision)
    return restore_labels(probs, geometry), image


def predict_files(
    trained: TrainedModel,
    files: list[Path],
    out_dir: Path,
    batch: int = 32,
    progress: Progress | None = None,
    overlay: bool = False,
) -> list[Path]:
    """Predict every file into ``out_dir/<input name>``; each output is written atomically.

    With ``overlay``, a PNG of slices with the predicted contours goes to ``out_dir/overlays/``.
    """
    written = []
    for i, path in enumerate(files):
        labels, image = predict_file(trained, path, batch)
        out = out_dir / path.name
        if overlay:
            save_overlay(
                out_dir / "overlays" / f"{nifti_stem(path)}.png",
                image.transpose(2, 0, 1),
                labels.transpose(2, 0, 1),
                None,
                path.name,
            )
        reference = nib.load(str(path))
        assert isinstance(reference, nib.Nifti1Image)  # read_volume checked it
        write_label_map(out, labels, reference)
        written.append(out)
        if progress is not None:
            progress(i + 1, len(files), path.name)
    return written
