"""The ``phantom`` dataset: mireg's synthetic cardiac cohort, generated once and cached.

The cohort (:mod:`mireg.data.phantom`) is written in ACDC's raw layout into a temporary folder, run
through the same preprocessing as real ACDC data, and kept as a store under the cache folder
(``$MIREG_CACHE``, default ``~/.cache/mireg``). Later runs with the same settings reuse it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from pydantic import Field

from mireg.contract import DatasetConfig, Progress
from mireg.data.acdc import preprocess_acdc
from mireg.data.phantom import generate_cohort
from mireg.preprocessing.store import VolumeStore

__all__ = ["COHORT_VERSION", "PhantomConfig", "default_cache_dir"]

#: Bump when the generator's output changes, so stale caches are not reused.
COHORT_VERSION = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("MIREG_CACHE", Path.home() / ".cache" / "mireg"))


@contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (POSIX ``flock``; no lock where it is missing)."""
    with open(lock_file, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


class PhantomConfig(DatasetConfig):
    """``[data] name = "phantom"``: a synthetic ACDC-like cohort (no download needed).

    Attributes:
        patients: Number of synthetic patients (two scans each, ED and ES).
        cohort_seed: Seed of the generator (the split has its own seed).
        spacing: In-plane spacing (mm) the cohort is resampled to.
        canvas: Side of the preprocessed slices.
        cache_dir: Where the preprocessed cohort is kept (default ``$MIREG_CACHE`` or
            ``~/.cache/mireg``).
    """

    patients: int = Field(60, ge=4)
    cohort_seed: int = 0
    spacing: float = Field(2.5, gt=0)
    canvas: int = Field(96, ge=16, multiple_of=16)
    cache_dir: Path | None = None
    val_patients: int = Field(8, ge=1)
    test_patients: int = Field(12, ge=1)

    def store_path(self) -> Path:
        cache = self.cache_dir or default_cache_dir()
        key = (
            f"phantom-v{COHORT_VERSION}-n{self.patients}-seed{self.cohort_seed}"
            f"-sp{self.spacing:g}-c{self.canvas}"
        )
        return cache / key

    def load(self, progress: Progress | None = None) -> VolumeStore:
        path = self.store_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(path.parent / f".{path.name}.lock"):  # parallel runs wait for one writer
            if not VolumeStore.exists(path):
                self._generate(path, progress)
        return VolumeStore.load(path)

    def _generate(self, path: Path, progress: Progress | None) -> None:
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".phantom-raw-") as raw:

            def generated(done: int, total: int) -> None:
                if progress is not None:
                    progress(done, 2 * total, "generating synthetic cohort")

            def preprocessed(done: int, total: int, what: str) -> None:
                if progress is not None:
                    progress(total + done, 2 * total, "preprocessing synthetic cohort")

            generate_cohort(raw, self.patients, self.cohort_seed, progress=generated)
            preprocess_acdc(
                Path(raw),
                path,
                spacing=self.spacing,
                canvas=self.canvas,
                progress=preprocessed,
                name="phantom",
            )
