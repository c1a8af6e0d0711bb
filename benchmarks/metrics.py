"""Time the 3D metrics (DSC, HD95, HD, ASSD) on a 10-slice 256x256 volume with 3 classes.

    python benchmarks/metrics.py [--repeats 5]

Prints one JSON line with the median and minimum seconds per volume.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from scipy import ndimage

from mireg.evaluation.metrics import volume_metrics


def blobs(seed: int, shape: tuple[int, int, int] = (10, 256, 256)) -> np.ndarray:
    """Three nested smooth structures, like a heart's cavities and wall."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma=(1, 12, 12))
    field = (field - field.min()) / (field.max() - field.min())
    return np.digitize(field, [0.55, 0.65, 0.75]).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    pred, gt = blobs(0), blobs(1)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        volume_metrics(pred, gt, [1, 2, 3], (10.0, 1.5, 1.5))
        times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "benchmark": "metrics",
                "shape": list(pred.shape),
                "classes": 3,
                "median_s": round(statistics.median(times), 4),
                "min_s": round(min(times), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
