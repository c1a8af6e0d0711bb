"""Medical Segmentation Decathlon and nnU-Net raw layouts, and the ``msd`` dataset.

Both layouts hold ``imagesTr/``, ``labelsTr/`` and ``dataset.json``:

* MSD (e.g. ``Task05_Prostate``): ``imagesTr/CASE.nii.gz`` holds every channel (4D for
  multi-modal tasks), channels named in ``dataset.json``'s ``modality``; labels as
  ``{"0": "background", "1": "PZ", ...}``; ``imagesTs/`` holds unlabelled test cases.
* nnU-Net raw: ``imagesTr/CASE_0000.nii.gz`` one file per channel, channels named in
  ``channel_names`` (or ``modality``); labels as ``{"background": 0, "PZ": 1}`` (or the MSD form).

Options (``mireg preprocess msd TASK OUT -O key=value``): ``channel`` (index or name, default T2 when
there is one, else the first), ``keep_labels`` (``false`` by default: every foreground label merges
into one class, the paper's two-class setting for prostate; ``true`` keeps them apart).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from mireg.contract import Progress, reject_options
from mireg.data.stored import StoredDatasetConfig
from mireg.errors import DataError
from mireg.io.nifti import NIFTI_SUFFIXES, nifti_files, nifti_stem, read_scan
from mireg.preprocessing.volume import RawVolume, StoreBuilder

__all__ = ["MSDConfig", "add_msd", "read_dataset_json"]


def read_dataset_json(task: Path) -> dict[str, Any]:
    """Parse ``task/dataset.json``; errors name the file."""
    path = task / "dataset.json"
    if not task.is_dir():
        raise DataError(f"{task}: folder not found")
    if not path.is_file():
        raise DataError(f"{path}: not found (an MSD or nnU-Net raw task folder has one)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), dict):
        raise DataError(f"{path}: missing 'labels' object")
    return meta


def _labels(meta: dict[str, Any], path: Path) -> dict[int, str]:
    """Label value -> name, from either the MSD form or the nnU-Net v2 form."""
    out: dict[int, str] = {}
    for key, value in meta["labels"].items():
        try:
            number, name = (int(key), str(value)) if str(key).isdigit() else (int(value), str(key))
        except (TypeError, ValueError):
            raise DataError(f"{path}: labels entry {key!r}: {value!r} is not a label value") from None
        out[number] = name
    if 0 not in out:
        raise DataError(f"{path}: labels has no background (0)")
    return dict(sorted(out.items()))


def _channel_index(meta: dict[str, Any], wanted: str | None, path: Path) -> int:
    names = meta.get("channel_names") or meta.get("modality") or {"0": "image"}
    channels = {int(k): str(v) for k, v in names.items()}
    if wanted is None:
        return next((k for k, v in channels.items() if v.upper() == "T2"), min(channels))
    if wanted.isdigit() and int(wanted) in channels:
        return int(wanted)
    for k, v in channels.items():
        if v.lower() == wanted.lower():
            return k
    raise DataError(
        f"{path}: no channel {wanted!r}; channels: "
        + ", ".join(f"{k} ({v})" for k, v in sorted(channels.items()))
    )


def _cases(task: Path, sub: str, channel: int) -> dict[str, Path]:
    """Case id -> image file of ``task/sub`` for the chosen channel, in either layout."""
    # imagesTs is optional, and an empty imagesTr gets its own error from the caller.
    files = nifti_files(task / sub, optional=True)
    channel_files = [p for p in files if nifti_stem(p)[-5:-4] == "_" and nifti_stem(p)[-4:].isdigit()]
    if channel_files and len(channel_files) == len(files):  # nnU-Net: CASE_0000.nii.gz
        suffix = f"_{channel:04d}"
        return {nifti_stem(p)[:-5]: p for p in files if nifti_stem(p).endswith(suffix)}
    return {nifti_stem(p): p for p in files}


def add_msd(
    task: Path, builder: StoreBuilder, options: dict[str, str], progress: Progress | None = None
) -> None:
    """Add the labelled training cases (and the unlabelled test cases) of an MSD/nnU-Net task."""
    reject_options("msd", options, {"channel", "keep_labels"})
    keep = options.get("keep_labels", "false").lower()
    if keep not in ("true", "false"):
        raise DataError(f"preprocess msd: keep_labels must be true or false, got {keep!r}")
    meta = read_dataset_json(task)
    json_path = task / "dataset.json"
    labels = _labels(meta, json_path)
    channel = _channel_index(meta, options.get("channel"), json_path)
    if keep == "true" or len(labels) == 2:
        builder.classes = [labels.get(k, f"label{k}") for k in range(max(labels) + 1)]
    else:
        builder.classes = ["background", str(meta.get("name", "foreground")).lower()]
    training = _cases(task, "imagesTr", channel)
    if not training:
        raise DataError(f"{task / 'imagesTr'}: no training images found")
    unlabelled = _cases(task, "imagesTs", channel)
    total = len(training) + len(unlabelled)
    for i, (case, image_file) in enumerate([*training.items(), *unlabelled.items()]):
        label_file = _label_file(task, case) if i < len(training) else None
        read = partial(
            _read_case, image_file, label_file, channel, sorted(labels), json_path, keep == "false"
        )
        builder.add_file(id=case, patient=case, read=read, source=str(image_file))
        if progress is not None:
            progress(i + 1, total, f"reading {task.name}")


def _read_case(
    image_file: Path,
    label_file: Path | None,
    channel: int,
    declared: list[int],
    json_path: Path,
    binary: bool,
) -> RawVolume:
    """One case: its image channel and, for a training case, its label map (only declared values;
    foreground/background when ``binary``)."""
    raw = read_scan(image_file, label_file, max(declared) + 1, channel)
    if raw.label is None:
        return raw
    unknown = sorted(set(np.unique(raw.label).tolist()) - set(declared))
    if unknown:
        raise DataError(f"{label_file}: label value {unknown[0]} is not declared in {json_path}")
    return raw._replace(label=(raw.label > 0).astype(np.int64)) if binary else raw


def _label_file(task: Path, case: str) -> Path:
    for ext in NIFTI_SUFFIXES:
        path = task / "labelsTr" / f"{case}{ext}"
        if path.is_file():
            return path
    raise DataError(f"{task / 'labelsTr' / (case + '.nii.gz')}: missing label map of training case {case!r}")


class MSDConfig(StoredDatasetConfig):
    """``[data] name = "msd"``: a store made by ``mireg preprocess msd TASK_DIR ROOT``."""

    val_patients: int = Field(4, ge=1)
    test_patients: int = Field(8, ge=1)

    @classmethod
    def preprocess(
        cls, raw: Path, builder: StoreBuilder, options: dict[str, str], progress: Progress | None = None
    ) -> None:
        add_msd(raw, builder, options, progress)
