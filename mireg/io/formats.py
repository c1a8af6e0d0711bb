"""The extension points of ``mireg predict``'s file formats: scan readers and label-map writers.

A :class:`ScanReader` finds the scans a path given on the command line is or holds, in its format,
and opens each as a :class:`Scan`: its name, frames and geometry, read from headers only; the
scan's :meth:`Scan.read` gives each :class:`Frame` (image, affine, spacing) when its turn comes. A
:class:`LabelMapWriter` writes a scan's predicted labels in its format, one file per scan or one per
frame. mireg's own formats (NIfTI and DICOM series in; NIfTI and DICOM SEG out) are entries of the
registries of :mod:`mireg.registry`, and a package adds one through the entry-point groups
``mireg.readers`` and ``mireg.writers`` (name -> class); the plugin guide
(``plugins/mireg-example``) adds a reader.

A format plugin imports nothing of mireg but this module, which needs neither torch nor a trained
model: the torch-free ``mireg-runtime`` install reads and writes the plugin's formats too.

Every array is on the scan's own grid, axes ``(X, Y, Z)`` as NIfTI stores them, and every affine
maps voxel indices to RAS+ millimetres (NIfTI's convention; a reader of an LPS format flips X and
Y).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np

from mireg.errors import DataError

# DataError is here for format plugins: this module is all of mireg they need.
__all__ = ["DataError", "Frame", "LabelMapWriter", "ModelInfo", "Scan", "ScanReader"]


class Frame(NamedTuple):
    """One frame of a scan, read.

    Attributes:
        t: Its index in time (0 for a scan of one volume).
        image: The intensities, ``(X, Y, Z)`` float32.
        affine: Voxel indices to RAS+ millimetres (4 x 4).
        spacing: Voxel size along X, Y and Z in mm.
        source: What a writer that references the input needs of this frame, if any (DICOM: the
            frame's series and its datasets, which a SEG references).
    """

    t: int
    image: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    source: Any = None


class Scan(ABC):
    """One input scan, its headers read: a volume, or a cine scan of several frames in time.

    Attributes:
        path: The file or folder given (or found in a folder given).
    """

    #: How messages name the scan's format (``NIfTI``).
    kind: ClassVar[str]
    #: The writer of label maps when none is asked for (``nifti``).
    default_writer: ClassVar[str] = "nifti"

    path: Path

    @property
    @abstractmethod
    def name(self) -> str:
        """The stem of the outputs' file names (unique among the inputs of one prediction)."""

    @property
    @abstractmethod
    def n_frames(self) -> int:
        """Frames in time: more than one for a cine scan."""

    @property
    @abstractmethod
    def affine(self) -> np.ndarray:
        """The scan's geometry: voxel indices to RAS+ millimetres (4 x 4)."""

    @property
    @abstractmethod
    def input_files(self) -> list[Path]:
        """The user's files this scan is read from (none of them is ever written)."""

    @abstractmethod
    def read(self, frames: Sequence[int]) -> Iterator[Frame]:
        """Each of ``frames`` (indices from 0, in the order given), read when its turn comes.

        Raises:
            DataError: A file that cannot be read, naming it.
        """

    def phases(self) -> tuple[int, int] | None:
        """The end-diastole and end-systole frames (numbered from 1) of a cine scan, where its
        files say them; None where they do not."""
        return None

    @property
    def is_dicom(self) -> bool:
        """Whether the scan is a DICOM series (which a DICOM SEG can reference)."""
        return False


class ScanReader(ABC):
    """A format of input scans: finds them, and opens each as a :class:`Scan`.

    A *file* format (NIfTI) reads files, named directly or found in a folder; a *folder* format
    (DICOM) reads a folder as one scan. A folder is read by the first reader that finds something in
    it, file formats first, so a folder format whose :meth:`find` takes any folder goes last.
    """

    #: The name registered (``nifti``).
    name: ClassVar[str]
    #: Its files, as an error names them when a file is not one: ``a NIfTI file (.nii or .nii.gz)``;
    #: None for a folder format.
    file_kind: ClassVar[str | None] = None
    #: What a folder holds for it, as an error names it: ``.nii or .nii.gz files``.
    contents: ClassVar[str]
    #: Whether a folder is one scan of this format (DICOM) rather than a folder of scans.
    reads_folders: ClassVar[bool] = False

    @abstractmethod
    def find(self, path: Path) -> list[Path]:
        """The scans ``path`` is or holds in this format: ``[path]`` for a file of the format (or,
        for a folder format, a folder holding its files), the format's files directly in a folder
        (a file format), or ``[]``. Reads as little as it can: names, or a file's first bytes."""

    @abstractmethod
    def output_name(self, path: Path) -> str:
        """The stem of the outputs of the scan at ``path`` (found by :meth:`find`)."""

    @abstractmethod
    def open(self, path: Path, series: str | None = None) -> Scan:
        """The scan at ``path``, headers read and checked.

        Args:
            path: What :meth:`find` returned.
            series: The DICOM SeriesInstanceUID asked for (``--series``), for formats with several
                series in one folder; others ignore it.

        Raises:
            DataError: A file that is not of the format or cannot be read, naming it.
        """


@dataclass(frozen=True)
class ModelInfo:
    """What a label map may record of the model that made it.

    Attributes:
        classes: The class names, background first.
        name: The recipe's name.
        identity: The model's identity (checkpoint, epoch and weights' checksum), or its version.
    """

    classes: tuple[str, ...]
    name: str
    identity: str


class LabelMapWriter(ABC):
    """A format of predicted label maps (``mireg predict --format NAME``)."""

    #: The name registered, which ``--format`` takes (``nifti``).
    name: ClassVar[str]
    #: Whether each frame of a cine scan gets a file of its own, written as soon as the frame is
    #: segmented (its :class:`Frame` at hand); otherwise one file holds every frame segmented.
    per_frame: ClassVar[bool] = False

    def check(self, scan: Scan, frames: Sequence[int]) -> None:  # noqa: B027 (optional: most hold any scan)
        """Whether this format can hold ``scan``'s ``frames``, found from headers before anything is
        read or written.

        Raises:
            DataError: Naming the file, and why (a SEG needs a DICOM series to reference, say).
        """

    @abstractmethod
    def paths(self, scan: Scan, out_dir: Path, tags: Sequence[str]) -> tuple[Path, ...]:
        """The files written for ``scan`` in ``out_dir``: one per frame (``tags`` holds each frame's
        file name tag, ``_frame03``, or ``""`` for a scan of one volume) if :attr:`per_frame`, else
        one."""

    @abstractmethod
    def write(
        self, path: Path, labels: np.ndarray, scan: Scan, frame: Frame | None, model: ModelInfo
    ) -> None:
        """Write ``labels`` to ``path``, atomically.

        Args:
            path: One of :meth:`paths`.
            labels: One frame's labels ``(X, Y, Z)`` uint8 (per frame), or the scan's: ``(X, Y, Z)``,
                or ``(X, Y, Z, T)`` for the frames segmented of a cine scan.
            scan: The input.
            frame: The frame (per frame), or None.
            model: What the file may record of the model.
        """
