"""The preprocessed store: every slice of a data set in two arrays, plus per-volume records.

Layout of a store folder::

    store.json     name, classes, target spacing, canvas, one record per volume
    images.npy     float16 (S, canvas, canvas), intensities in [0, 1]
    labels.npy     uint8   (S, canvas, canvas), zeros for volumes without labels

Volume ``v`` owns slices ``v.start:v.stop``. The arrays are memory-mapped on load, so one copy lives
in memory however many readers there are. A store is written into a temporary sibling folder and
renamed into place at the end, so a failed or killed write never leaves a half store behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mireg.errors import DataError

if TYPE_CHECKING:
    import torch

__all__ = ["STORE_VERSION", "VolumeInfo", "VolumeStore", "write_atomic_dir"]

STORE_VERSION = 1


@dataclass(frozen=True)
class VolumeInfo:
    """One 3D scan in the store.

    Attributes:
        id: Unique volume id, e.g. ``patient001_ED``.
        patient: Patient id; splits are made over patients, never over volumes.
        phase: Cardiac phase (``ED``/``ES``) or ``""``.
        group: Pathology group (ACDC) or ``""``; used to stratify the test split.
        start: First slice index in the store arrays.
        stop: One past the last slice index.
        labeled: Whether the volume has a ground-truth label map.
        spacing: Original voxel spacing in mm ``(x, y, z)``.
        shape: Original array shape ``(X, Y, Z)``.
        affine: Original 4x4 voxel-to-world matrix.
        source: File the volume was read from.
    """

    id: str
    patient: str
    phase: str
    group: str
    start: int
    stop: int
    labeled: bool
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    affine: list[list[float]] = field(default_factory=list)
    source: str = ""

    @property
    def n_slices(self) -> int:
        return self.stop - self.start


@dataclass
class VolumeStore:
    """Slices of all volumes of a data set, preprocessed to one spacing and canvas.

    Attributes:
        name: Data set name.
        classes: Class names, index = label value (``classes[0]`` is the background).
        spacing: In-plane spacing (mm) the slices were resampled to.
        canvas: Height and width of every slice.
        images: ``(S, canvas, canvas)`` float16 in [0, 1].
        labels: ``(S, canvas, canvas)`` uint8.
        volumes: One record per volume.
    """

    name: str
    classes: list[str]
    spacing: float
    canvas: int
    images: np.ndarray
    labels: np.ndarray
    volumes: list[VolumeInfo]
    #: How the store was made (dataset, raw folder, spacing, canvas, options), for idempotent reruns.
    provenance: dict[str, object] = field(default_factory=dict)

    def volume(self, volume_id: str) -> VolumeInfo:
        for v in self.volumes:
            if v.id == volume_id:
                return v
        raise KeyError(volume_id)

    @property
    def patients(self) -> list[str]:
        """Patient ids in store order, each once."""
        return list(dict.fromkeys(v.patient for v in self.volumes))

    def summary(self) -> str:
        """One line: patients, volumes, slices, grid, classes and the original voxel spacings."""
        labeled = sum(v.labeled for v in self.volumes)
        spacings = [v.spacing for v in self.volumes]
        return (
            f"{len(self.patients)} patients, {len(self.volumes)} volumes ({labeled} labelled), "
            f"{self.images.shape[0]} slices of {self.canvas}x{self.canvas} at {self.spacing:g} mm; "
            f"classes {', '.join(self.classes)}; original spacing "
            f"{min(s[0] for s in spacings):.2f}-{max(s[0] for s in spacings):.2f} mm in-plane, "
            f"{min(s[2] for s in spacings):.1f}-{max(s[2] for s in spacings):.1f} mm between slices"
        )

    def volumes_of(self, patients: Iterable[str], *, labeled_only: bool = True) -> list[VolumeInfo]:
        """The volumes of ``patients``, in store order (not in the order of ``patients``).

        Args:
            patients: Patient ids; ids the store does not hold select nothing.
            labeled_only: Keep only volumes with a label map (evaluation, supervised training);
                ``False`` keeps every volume of those patients (unlabelled training).
        """
        chosen = set(patients)
        return [v for v in self.volumes if v.patient in chosen and (v.labeled or not labeled_only)]

    def slice_indices(self, patients: Iterable[str], *, labeled_only: bool = True) -> np.ndarray:
        """Indices into ``images``/``labels`` of every slice of :meth:`volumes_of`, in store order.

        Returns:
            A 1D int64 array (empty when no volume is selected).
        """
        ranges = [
            np.arange(v.start, v.stop, dtype=np.int64)
            for v in self.volumes_of(patients, labeled_only=labeled_only)
        ]
        return np.concatenate(ranges) if ranges else np.zeros(0, dtype=np.int64)

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (float16) and labels (uint8) as tensors on ``device``.

        On the CPU they share the read-only memory map (one copy in memory for every process); on a
        GPU they are copied there once.
        """
        import torch  # here, not at the top: reading a store (and prediction) needs no torch

        with warnings.catch_warnings():
            # torch warns that the memory map is read-only; nothing ever writes to these tensors.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            images = torch.from_numpy(np.asarray(self.images))
            labels = torch.from_numpy(np.asarray(self.labels))
        return images.to(device), labels.to(device)

    def save(self, path: Path) -> None:
        """Write the store to ``path`` atomically (the folder must not exist yet)."""

        def write(tmp: Path) -> None:
            np.save(tmp / "images.npy", self.images.astype(np.float16, copy=False))
            np.save(tmp / "labels.npy", self.labels.astype(np.uint8, copy=False))
            meta = {
                "version": STORE_VERSION,
                "name": self.name,
                "classes": self.classes,
                "spacing": self.spacing,
                "canvas": self.canvas,
                "volumes": [asdict(v) for v in self.volumes],
                "provenance": self.provenance,
            }
            (tmp / "store.json").write_text(json.dumps(meta, indent=1))

        write_atomic_dir(path, write)

    @classmethod
    def load(cls, path: Path) -> VolumeStore:
        """Open a store folder (arrays memory-mapped read-only)."""
        meta_file = path / "store.json"
        if not meta_file.is_file():
            raise DataError(
                f"{path}: not a preprocessed mireg store (no store.json)",
                "create one with `mireg preprocess DATASET RAW_DIR OUT_DIR`",
            )
        try:
            meta = json.loads(meta_file.read_text())
            images = np.load(path / "images.npy", mmap_mode="r")
            labels = np.load(path / "labels.npy", mmap_mode="r")
            volumes = [
                VolumeInfo(
                    **{
                        **v,
                        "spacing": tuple(v["spacing"]),
                        "shape": tuple(v["shape"]),
                    }
                )
                for v in meta["volumes"]
            ]
            store = cls(
                meta["name"],
                list(meta["classes"]),
                float(meta["spacing"]),
                int(meta["canvas"]),
                images,
                labels,
                volumes,
                dict(meta.get("provenance", {})),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: corrupt store ({exc})", "preprocess the data again") from exc
        if meta.get("version") != STORE_VERSION:
            raise DataError(
                f"{meta_file}: store version {meta.get('version')} is not supported "
                f"(expected {STORE_VERSION})",
                "preprocess the data again",
            )
        expected = (sum(v.n_slices for v in volumes), store.canvas, store.canvas)
        if images.shape != expected or labels.shape != expected:
            raise DataError(
                f"{path}: arrays have shape {images.shape}/{labels.shape}, store.json describes {expected}",
                "preprocess the data again",
            )
        return store


def write_atomic_dir(path: Path, write: Callable[[Path], None]) -> None:
    """Create folder ``path`` by filling a temporary sibling with ``write(tmp)`` and renaming it.

    Nothing is left behind if ``write`` fails; an existing ``path`` is never touched.
    """
    path = Path(path)
    if path.exists():
        raise DataError(
            f"{path}: already exists; refusing to overwrite it",
            "choose another output folder or remove this one",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        write(tmp)
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
