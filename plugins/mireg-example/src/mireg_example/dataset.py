"""``ellipses``: a synthetic two-class data set generated in memory (no files, no preprocessing)."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from mireg.contract import DatasetConfig, Progress, VolumeInfo, VolumeStore


class EllipsesConfig(DatasetConfig):
    """``[data] name = "ellipses"``: ``patients`` volumes of ``slices`` noisy ellipse slices."""

    patients: int = Field(12, ge=3)
    slices: int = Field(4, ge=1)
    canvas: int = Field(32, ge=16, multiple_of=16)
    seed: int = 0
    val_patients: int = Field(2, ge=1)
    test_patients: int = Field(2, ge=1)

    def load(self, progress: Progress | None = None) -> VolumeStore:
        rng = np.random.default_rng(self.seed)
        n = self.patients * self.slices
        yy, xx = np.mgrid[: self.canvas, : self.canvas] / self.canvas
        centre = rng.uniform(0.3, 0.7, (n, 2, 1, 1))
        radii = rng.uniform(0.1, 0.25, (n, 2, 1, 1))
        inside = ((yy - centre[:, 0]) / radii[:, 0]) ** 2 + ((xx - centre[:, 1]) / radii[:, 1]) ** 2 < 1
        images = np.clip(0.3 + 0.4 * inside + rng.normal(0, 0.1, inside.shape), 0, 1)
        volumes = [
            VolumeInfo(
                id=f"case{i:03d}",
                patient=f"case{i:03d}",
                phase="",
                group="",
                start=i * self.slices,
                stop=(i + 1) * self.slices,
                labeled=True,
                spacing=(1.0, 1.0, 1.0),
                shape=(self.canvas, self.canvas, self.slices),
            )
            for i in range(self.patients)
        ]
        return VolumeStore(
            "ellipses",
            ["background", "ellipse"],
            1.0,
            self.canvas,
            images.astype(np.float16),
            inside.astype(np.uint8),
            volumes,
        )
