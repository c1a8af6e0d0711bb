"""Datasets trained from a store on disk: the base of every dataset that ``mireg preprocess`` fills.

This lives apart from :mod:`mireg.preprocessing.store` so that the store format depends on nothing above it,
while dataset configs (which subclass the plugin contract's :class:`~mireg.contract.DatasetConfig`)
may use it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from mireg.contract import DatasetConfig
from mireg.errors import DataError
from mireg.preprocessing.store import VolumeStore
from mireg.progress import Progress

__all__ = ["StoredDatasetConfig"]


class StoredDatasetConfig(DatasetConfig):
    """Base of datasets trained from a store that ``mireg preprocess NAME RAW ROOT`` made."""

    can_preprocess = True

    root: Path = Field(description="preprocessed store folder")

    def load(self, progress: Progress | None = None) -> VolumeStore:
        if not self.root.exists():
            raise DataError(
                f"data.root: {self.root} does not exist",
                f"preprocess the data first: mireg preprocess {self.name} RAW_DIR {self.root}",
            )
        return VolumeStore.load(self.root)
