"""The preprocessed store: every slice of a data set in two arrays, plus per-volume records.

Layout of a store folder (version 2)::

    store.json     name, classes, target spacing, canvas, one record per volume
    images.npy     float16 (S, canvas, canvas), intensities in [0, 1]
    labels.npy     uint8   (L, canvas, canvas), the label maps of the labelled volumes only

Volume ``v`` owns image slices ``v.start:v.stop`` and, when labelled, label slices
``v.label_start:v.label_start + v.n_slices``. The arrays are memory-mapped on load: one copy lives in
memory however many readers there are, and reading a slice touches only that slice's pages.

:class:`StoreWriter` writes a store one volume at a time (memory does not grow with the data set)
into a temporary sibling folder, renamed into place at the end, so a failed or killed write never
leaves a half store behind. Stores of version 1 (labels for every slice, zeros where unlabelled) are
read as they are.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from mireg.errors import DataError
from mireg.files import new_dir_mode
from mireg.interrupts import interrupts_deferred

if TYPE_CHECKING:
    import torch

__all__ = [
    "READABLE_VERSIONS",
    "STORE_VERSION",
    "StoreWriter",
    "VolumeInfo",
    "VolumeStore",
    "refuse_existing",
]

STORE_VERSION = 2
#: Versions :meth:`VolumeStore.load` reads.
READABLE_VERSIONS = (1, 2)


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
        label_start: Row of ``labels`` holding its first label slice; ``None`` when the labels
            array is aligned with the images (stores of version 1, stores built in memory).
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
    label_start: int | None = None

    @property
    def n_slices(self) -> int:
        return self.stop - self.start

    @property
    def label_rows(self) -> slice:
        """Its rows of the store's ``labels`` (a labelled volume)."""
        first = self.start if self.label_start is None else self.label_start
        return slice(first, first + self.n_slices)


@dataclass
class VolumeStore:
    """Slices of all volumes of a data set, preprocessed to one spacing and canvas.

    Attributes:
        name: Data set name.
        classes: Class names, index = label value (``classes[0]`` is the background).
        spacing: In-plane spacing (mm) the slices were resampled to.
        canvas: Height and width of every slice.
        images: ``(S, canvas, canvas)`` float16 in [0, 1].
        labels: ``(L, canvas, canvas)`` uint8, the rows :attr:`VolumeInfo.label_rows` of the
            labelled volumes.
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

    def volume_images(self, volume: VolumeInfo) -> np.ndarray:
        """The ``(Z, canvas, canvas)`` float16 slices of one volume (read from the memory map)."""
        return np.asarray(self.images[volume.start : volume.stop])

    def volume_labels(self, volume: VolumeInfo) -> np.ndarray:
        """The ``(Z, canvas, canvas)`` uint8 label slices of one labelled volume."""
        if not volume.labeled:
            raise ValueError(f"volume {volume.id} has no label map")
        return np.asarray(self.labels[volume.label_rows])

    def label_rows(self) -> np.ndarray:
        """Per slice of ``images``, the row of ``labels`` holding its label map (-1: unlabelled)."""
        rows = np.full(self.images.shape[0], -1, dtype=np.int64)
        for v in self.volumes:
            if v.labeled:
                rows[v.start : v.stop] = np.arange(v.label_rows.start, v.label_rows.stop)
        return rows

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
        writer = StoreWriter(path, self.canvas)
        try:
            volumes = []
            for v in self.volumes:
                labels = self.volume_labels(v) if v.labeled else None
                start, label_start = writer.append(self.volume_images(v), labels)
                volumes.append(replace(v, start=start, stop=start + v.n_slices, label_start=label_start))
            writer.publish(self.name, self.classes, self.spacing, volumes, self.provenance)
        except BaseException:
            writer.discard()
            raise

    #: The store's description (classes, grid, volumes, provenance), written last: a folder that
    #: has it holds a complete store.
    META = "store.json"

    @classmethod
    def exists(cls, path: Path) -> bool:
        """Whether ``path`` holds a complete store."""
        return (path / cls.META).is_file()

    @classmethod
    def load(cls, path: Path) -> VolumeStore:
        """Open a store folder (arrays memory-mapped read-only)."""
        meta_file = path / cls.META
        if not meta_file.is_file():
            raise DataError(
                f"{path}: not a preprocessed mireg store (no store.json)",
                "create one with `mireg preprocess DATASET RAW_DIR OUT_DIR`",
            )
        try:
            meta = json.loads(meta_file.read_text())
            version = meta.get("version")
            if version not in READABLE_VERSIONS:
                raise DataError(
                    f"{meta_file}: store version {version} is not supported "
                    f"(this mireg reads versions {', '.join(map(str, READABLE_VERSIONS))})",
                    "preprocess the data again with this version of mireg",
                )
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
        except DataError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: corrupt store ({exc})", "preprocess the data again") from exc
        slices = sum(v.n_slices for v in volumes)
        label_slices = slices if version == 1 else sum(v.n_slices for v in volumes if v.labeled)
        expected = ((slices, store.canvas, store.canvas), (label_slices, store.canvas, store.canvas))
        if (images.shape, labels.shape) != expected:
            raise DataError(
                f"{path}: arrays have shape {images.shape}/{labels.shape}, store.json describes "
                f"{expected[0]}/{expected[1]}",
                "preprocess the data again",
            )
        return store


class StoreWriter:
    """Writes a store folder one volume at a time, in bounded memory.

    The arrays grow on disk as volumes are appended (their ``.npy`` headers are written last, into a
    fixed-size space at the start of each file), in a temporary sibling folder made by the first
    write; :meth:`publish` writes ``store.json`` and renames that folder into place. :meth:`discard`
    (or any failure before publishing) leaves nothing behind. Making the writer writes nothing, so a
    caller need only hold it from its ``try`` (or ``with``) on, and call :meth:`discard` on failure.

    Args:
        path: The store folder to create (must not exist).
        canvas: Side of the square slices.
    """

    def __init__(self, path: Path, canvas: int) -> None:
        self.path, self.canvas = Path(path), canvas
        refuse_existing(self.path)
        self.slices = self.label_slices = 0
        self.tmp: Path | None = None
        self._files: list[BinaryIO] = []

    def _arrays(self) -> tuple[BinaryIO, BinaryIO]:
        """The image and label array files, in a new temporary folder on first use."""
        if self.tmp is None:
            with interrupts_deferred():  # an interrupt now is raised once discard() can find it
                self.tmp = _temporary_sibling(self.path)
            for name in ("images.npy", "labels.npy"):
                self._files.append(open(self.tmp / name, "wb"))  # noqa: SIM115 (closed by publish/discard)
                self._files[-1].write(b"\0" * _NPY_HEADER)
        images, labels = self._files
        return images, labels

    def append(self, images: np.ndarray, labels: np.ndarray | None) -> tuple[int, int | None]:
        """Append one volume's ``(Z, canvas, canvas)`` image slices and, if labelled, label slices.

        Returns:
            The volume's first image slice and first label slice (``None`` when unlabelled).
        """
        if images.shape[1:] != (self.canvas, self.canvas):
            raise ValueError(f"slices of shape {images.shape[1:]} on a canvas of {self.canvas}")
        if labels is not None and labels.shape != images.shape:
            raise ValueError(f"label slices {labels.shape} differ from image slices {images.shape}")
        image_file, label_file = self._arrays()
        start, label_start = self.slices, None
        image_file.write(np.ascontiguousarray(images, dtype="<f2").tobytes())
        self.slices += images.shape[0]
        if labels is not None:
            label_start = self.label_slices
            label_file.write(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
            self.label_slices += labels.shape[0]
        return start, label_start

    def publish(
        self,
        name: str,
        classes: list[str],
        spacing: float,
        volumes: list[VolumeInfo],
        provenance: dict[str, object],
    ) -> None:
        """Finish the arrays, write ``store.json`` and rename the folder into place."""
        side = (self.canvas, self.canvas)
        images, labels = self._arrays()
        for fh, dtype, n in ((images, "<f2", self.slices), (labels, "|u1", self.label_slices)):
            fh.seek(0)
            fh.write(_npy_header(dtype, (n, *side)))
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        assert self.tmp is not None  # made by _arrays()
        meta = {
            "version": STORE_VERSION,
            "name": name,
            "classes": classes,
            "spacing": spacing,
            "canvas": self.canvas,
            "volumes": [asdict(v) for v in volumes],
            "provenance": provenance,
        }
        (self.tmp / VolumeStore.META).write_text(json.dumps(meta, indent=1))
        _publish(self.tmp, self.path)

    def discard(self) -> None:
        """Remove everything written so far (safe to repeat)."""
        for fh in self._files:
            fh.close()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


#: Bytes reserved for the ``.npy`` header of a store array (a multiple of 64, as the format asks).
_NPY_HEADER = 128


def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """A ``.npy`` (format 1.0) header of exactly :data:`_NPY_HEADER` bytes."""
    text = repr({"descr": dtype, "fortran_order": False, "shape": shape})
    room = _NPY_HEADER - 10  # magic (6), version (2), header length (2)
    if len(text) + 1 > room:
        raise ValueError(f"array shape {shape} does not fit a {_NPY_HEADER}-byte header")
    body = text.ljust(room - 1).encode("latin1") + b"\n"
    return b"\x93NUMPY\x01\x00" + room.to_bytes(2, "little") + body


def refuse_existing(path: Path) -> None:
    """Refuse to write a store to ``path`` if something is there already (it is never overwritten)."""
    if path.exists():
        raise DataError(
            f"{path}: already exists; refusing to overwrite it",
            "choose another output folder or remove this one",
        )


def _temporary_sibling(path: Path) -> Path:
    """A new hidden folder next to ``path`` (which must not exist) to fill before renaming."""
    refuse_existing(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))


def _publish(tmp: Path, path: Path) -> None:
    """Make the files of ``tmp`` durable and rename it to ``path``, with the mode of a new folder (the
    temporary one was created private)."""
    for f in tmp.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    os.chmod(tmp, new_dir_mode())
    os.replace(tmp, path)
