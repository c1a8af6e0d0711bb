"""DICOM series as ``mireg predict``'s input scans (:mod:`mireg.io.formats`): a folder is one scan,
its one series or the one ``--series`` names; a cine series' frames are its frames in time."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mireg.errors import DataError
from mireg.io.dicom import DicomSeries, dicom_files, find_series, read_frames
from mireg.io.formats import Frame, Scan, ScanReader

__all__ = ["DicomReader", "DicomScan", "folder_name"]


def folder_name(folder: Path) -> str:
    """A DICOM folder's name, ``.`` and ``..`` included (named after the folder they stand for)."""
    return Path(os.path.abspath(folder)).name or "dicom"


@dataclass(frozen=True)
class DicomScan(Scan):
    """One DICOM series of a folder (headers read and geometry checked).

    Attributes:
        path: The folder.
        series: The series (a cine's first frame).
        frames: A cine series' series of each frame, in time order (empty for one volume).
    """

    kind = "DICOM"
    default_writer = "seg"
    path: Path
    series: DicomSeries
    frames: tuple[DicomSeries, ...] = ()

    @property
    def name(self) -> str:
        return folder_name(self.path)

    @property
    def is_dicom(self) -> bool:
        return True

    @property
    def n_frames(self) -> int:
        return max(1, len(self.frames))

    @property
    def affine(self) -> np.ndarray:
        return self.series.affine

    @property
    def frame_series(self) -> tuple[DicomSeries, ...]:
        """The series of each frame, in time order (one for a plain series)."""
        return self.frames or (self.series,)

    @property
    def input_files(self) -> list[Path]:
        return [f for s in self.frame_series for f in s.files]

    def read(self, frames: Sequence[int]) -> Iterator[Frame]:
        """Each frame with its series and datasets as its source, which its SEG references."""
        for t in frames:
            series = self.frame_series[t]
            datasets = series.datasets()
            yield Frame(t, series.volume(datasets), series.affine, series.spacing, (series, datasets))


class DicomReader(ScanReader):
    """A folder of DICOM files, one series (or the one ``--series`` names); read last of all
    readers, it takes any folder with files in it."""

    name = "dicom"
    contents = "DICOM files"
    reads_folders = True

    def find(self, path: Path) -> list[Path]:
        return [path] if path.is_dir() and dicom_files(path) else []

    def output_name(self, path: Path) -> str:
        return folder_name(path)

    def open(self, path: Path, series: str | None = None) -> DicomScan:
        found = find_series(path)
        listing = "; ".join(_describe(uid, members) for uid, members in found.items())
        if series is not None:
            if series not in found:
                raise DataError(f"{path}: no series {series} (--series); it holds {listing}")
            uid = series
        elif len(found) > 1:
            raise DataError(
                f"{path}: holds {len(found)} DICOM series: {listing}",
                "choose one with --series UID",
            )
        else:
            uid = next(iter(found))
        frames = read_frames(path, uid, found[uid])
        return DicomScan(path, frames[0], tuple(frames) if len(frames) > 1 else ())


def _describe(uid: str, members: list[tuple[Path, Any]]) -> str:
    """``UID (N files, description)`` of a series found in a folder."""
    description = str(members[0][1].get("SeriesDescription", "") or "")
    return f"{uid} ({len(members)} files{', ' + description if description else ''})"
