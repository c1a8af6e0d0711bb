"""The authors' preprocessed ACDC slices as PNG files, and the ``acdc-png`` dataset.

Layout: ``SRC/{train,val}/{img,gt}/patientNNN_PP_SS.png`` with ``PP`` the phase (``00`` ED,
``01`` ES) and ``SS`` the slice index. Slices are grouped into one volume per patient and phase.
Ground-truth PNGs hold the class index (0..3), or the same scaled to 0..255 (0, 85, 170, 255).
The PNGs carry no spacing: they are taken as already resampled to 1 mm, with a 10 mm slice gap.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mireg.contract import Progress, reject_options
from mireg.data.acdc import ACDC_CLASSES
from mireg.data.stored import StoredDatasetConfig
from mireg.errors import DataError
from mireg.preprocessing.volume import StoreBuilder

__all__ = ["ACDCPngConfig", "add_acdc_png"]

_NAME = re.compile(r"^(patient\d+)_(\d+)_(\d+)\.png$")
_PHASES = {0: "ED", 1: "ES"}
PNG_SPACING = (1.0, 1.0, 10.0)


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L"))
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: not a readable PNG ({exc})") from exc


def _gt_classes(gt: np.ndarray, path: Path) -> np.ndarray:
    values = set(np.unique(gt).tolist())
    if values <= set(range(len(ACDC_CLASSES))):
        return gt.astype(np.int64)
    step = 255 // (len(ACDC_CLASSES) - 1)
    if values <= {k * step for k in range(len(ACDC_CLASSES))}:
        return (gt // step).astype(np.int64)
    raise DataError(f"{path}: label values {sorted(values)[:6]} are neither 0..3 nor 0/85/170/255")


def add_acdc_png(src: Path, builder: StoreBuilder, progress: Progress | None = None) -> None:
    """Add one volume per (patient, phase) from the PNG slices under ``src/train`` and ``src/val``."""
    builder.classes = list(ACDC_CLASSES)
    if not src.is_dir():
        raise DataError(f"{src}: folder not found")
    groups: dict[tuple[str, int], list[tuple[int, Path, Path]]] = {}
    for part in ("train", "val"):
        img_dir = src / part / "img"
        if not img_dir.is_dir():
            continue
        for path in sorted(img_dir.glob("*.png")):
            match = _NAME.match(path.name)
            if not match:
                raise DataError(f"{path}: name does not follow patientNNN_PP_SS.png")
            gt = src / part / "gt" / path.name
            if not gt.is_file():
                raise DataError(f"{gt}: missing ground truth of {path}")
            groups.setdefault((match[1], int(match[2])), []).append((int(match[3]), path, gt))
    if not groups:
        raise DataError(f"{src}: no PNG slices found under train/img or val/img")
    for i, ((patient, phase), slices) in enumerate(sorted(groups.items())):
        slices.sort()
        images = [_read_png(p) for _, p, _ in slices]
        labels = [_gt_classes(_read_png(g), g) for _, _, g in slices]
        shapes = {a.shape for a in images + labels}
        if len(shapes) != 1:
            raise DataError(
                f"{slices[0][1].parent}: slices of {patient} phase {phase:02d} differ in "
                f"size {sorted(shapes)}"
            )
        builder.add(
            id=f"{patient}_{_PHASES.get(phase, f'{phase:02d}')}",
            patient=patient,
            image=np.stack(images, axis=-1).astype(np.float32),
            affine=np.diag([*PNG_SPACING, 1]),
            spacing=PNG_SPACING,
            label=np.stack(labels, axis=-1),
            phase=_PHASES.get(phase, f"{phase:02d}"),
            source=str(slices[0][1]),
        )
        if progress is not None:
            progress(i + 1, len(groups), "reading PNG volumes")


class ACDCPngConfig(StoredDatasetConfig):
    """``[data] name = "acdc-png"``: a store made by ``mireg preprocess acdc-png SRC ROOT``."""

    @classmethod
    def preprocess(
        cls, raw: Path, builder: StoreBuilder, options: dict[str, str], progress: Progress | None = None
    ) -> None:
        reject_options("acdc-png", options, set())
        add_acdc_png(raw, builder, progress)
