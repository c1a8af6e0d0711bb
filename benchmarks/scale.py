"""Stores larger than memory: preprocessing in bounded memory, and training streamed from disk.

    python benchmarks/scale.py --scratch /big/disk/folder [--pool-gb 36] [--device cpu]

Scans are 512x512x150 (``--side``, ``--depth``) at 1 x 1 x 2.5 mm, generated from their index (an
ellipse on noise, the labelled ones with its mask as the label map) by a reader that mireg's
preprocessing runs like any dataset's, so what is measured is mireg's preprocessing and writing,
not NIfTI decoding. Stores are at the scans' own spacing on a canvas of their side (78.6 MB of
float16 per 512x512x150 scan). Prints one JSON line per measurement:

- ``rate``: ``--rate-scans`` scans preprocessed with ``-j 1`` and ``-j 2`` (scans/s), and whether
  the two stores are identical byte for byte;
- ``pool``: a pool of at least ``--pool-gb`` GB of store (20 labelled scans, the rest unlabelled)
  preprocessed with ``-j 1`` in a child process: its peak RSS, scans/s, store size and the
  machine's memory;
- ``steps``: training steps (``recipes/acdc_partial.toml`` on 224x224 crops, 4 + 10 slices) from
  the pool's store, streamed (its page cache dropped first), against the same recipe on a store of
  the same kind of scans that fits in memory, resident; two alternating rounds after one uncounted
  round, ms/step of each and the ratio of the totals. Without ``pool`` in ``--only``, the store that
  fits is streamed too (page cache dropped): the two paths on one store, as on a GPU, where
  "resident" means in the GPU's memory;
- ``gather``: reading one step's 14 slices from a store that fits, from the memory map (mireg's
  format) and, when zarr is installed, from a zarr array of one chunk per slice.

Stores are deleted at the end unless ``--keep``. Needs about ``--pool-gb`` GB free under ``--scratch``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

from mireg.preprocessing.store import VolumeStore
from mireg.preprocessing.volume import RawVolume, StoreBuilder

SPACING = (1.0, 1.0, 2.5)
LABELLED = 20


def synthetic_scan(index: int, labelled: bool, side: int, depth: int) -> RawVolume:
    """Scan ``index``: an ellipse (the structure) on noise; its mask is the label map if labelled."""
    rng = np.random.default_rng(index)
    x = np.linspace(-1, 1, side, dtype=np.float32)[:, None]
    y = np.linspace(-1, 1, side, dtype=np.float32)[None, :]
    a, b = rng.uniform(0.2, 0.6, 2)
    mask = (x / a) ** 2 + (y / b) ** 2 < 1
    image = rng.random((side, side, depth), dtype=np.float32) * 100
    image[mask] += 300
    label = np.broadcast_to(mask[:, :, None], image.shape).astype(np.int64) if labelled else None
    return RawVolume(image, np.diag([*SPACING, 1.0]), SPACING, label)


def build(out: Path, scans: int, workers: int, side: int, depth: int) -> tuple[VolumeStore, float]:
    """Preprocess ``scans`` scans (the first :data:`LABELLED` labelled) into ``out``; seconds taken."""
    started = time.perf_counter()
    with StoreBuilder("scale", 1.0, side, out, workers) as builder:
        builder.classes = ["background", "structure"]
        for i in range(scans):
            read = partial(synthetic_scan, i, i < LABELLED, side, depth)
            builder.add_file(id=f"scan{i:05d}", patient=f"scan{i:05d}", read=read)
        store = builder.save()
    return store, time.perf_counter() - started


def _same_files(a: Path, b: Path) -> bool:
    for name in ("store.json", "labels.npy", "images.npy"):
        with open(a / name, "rb") as fa, open(b / name, "rb") as fb:
            while True:
                x, y = fa.read(1 << 24), fb.read(1 << 24)
                if x != y:
                    return False
                if not x:
                    break
    return True


def measure_rate(scratch: Path, scans: int, side: int, depth: int) -> dict[str, object]:
    seconds = {}
    for workers in (1, 2):
        _, seconds[workers] = build(scratch / f"rate-j{workers}", scans, workers, side, depth)
    identical = _same_files(scratch / "rate-j1", scratch / "rate-j2")
    for workers in (1, 2):
        shutil.rmtree(scratch / f"rate-j{workers}")
    return {
        "measurement": "rate",
        "scans": scans,
        "scans_per_s_j1": round(scans / seconds[1], 2),
        "scans_per_s_j2": round(scans / seconds[2], 2),
        "identical_stores": identical,
    }


def measure_pool(scratch: Path, pool_gb: float, side: int, depth: int) -> dict[str, object]:
    scan_mb = side * side * depth * 2 / 2**20  # float16 in the store
    scans = max(LABELLED + 20, int(np.ceil(pool_gb * 1024 / scan_mb)))
    command = [sys.executable, __file__, "--build-pool", str(scratch / "pool"), "--scans", str(scans)]
    command += ["--side", str(side), "--depth", str(depth)]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    store = VolumeStore.load(scratch / "pool")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    size = store.images.nbytes + store.labels.nbytes
    return {
        "measurement": "pool",
        "scans": scans,
        "store_gb": round(size / 2**30, 2),
        "machine_ram_gb": round(ram / 2**30, 2),
        "store_over_ram": round(size / ram, 2),
        "peak_rss_mb": round(peak_mb, 1),
        "scans_per_s_j1": round(scans / seconds, 2),
    }


def _steps(store: Path, placement: str, device: str, steps: int, warmup: int) -> float:
    """Seconds per training step of acdc_partial on ``store``."""
    from mireg.progress import Observer
    from mireg.recipe import load_recipe
    from mireg.training.loop import Trainer

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    overrides = [
        f'data={{name = "msd", root = "{store}", val_patients = 2, test_patients = 2, labeled_patients = 8}}',
        "backbone.num_classes=2",
        f"augment.crop={min(224, VolumeStore.load(store).canvas)}",
        "train.labeled_batch=4",
        "train.unlabeled_batch=10",
        f'train.device="{device}"',
        f'train.data_placement="{placement}"',
    ]
    trainer = Trainer(load_recipe(recipes / "acdc_partial.toml", overrides), observer=Observer())
    trainer.setup()
    assert trainer.step.feed.placement == placement
    trainer.state.model.train()
    for _ in range(warmup):
        trainer.step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    _sync(device)
    seconds = (time.perf_counter() - started) / steps
    trainer.step.feed.close()
    return seconds


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _drop_page_cache(path: Path) -> None:
    """Ask the kernel to forget the cached pages of the store's files (no root needed)."""
    for f in path.iterdir():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure_steps(
    scratch: Path, device: str, steps: int, warmup: int, side: int, depth: int, rounds: int = 2
) -> dict[str, object]:
    """Alternating rounds of the two paths (resident first), each in a fresh trainer, after a round
    that is not counted (the process's heap grows to its peak during its first steps)."""
    from mireg.host_memory import keep_freed_memory

    keep_freed_memory()  # as `mireg train` does
    small, _ = build(scratch / "fits", LABELLED + 20, min(4, os.cpu_count() or 1), side, depth)
    pool = scratch / "pool" if (scratch / "pool").is_dir() else scratch / "fits"
    _steps(scratch / "fits", "resident", device, steps, warmup)
    resident, streamed = [], []
    for _ in range(rounds):
        resident.append(_steps(scratch / "fits", "resident", device, steps, warmup))
        _drop_page_cache(pool)
        streamed.append(_steps(pool, "streamed", device, steps, warmup))
    return {
        "measurement": "steps",
        "device": device,
        "method": "partial",
        "streamed_store": pool.name,
        "ms_per_step_resident_fits": [round(1000 * x, 1) for x in resident],
        "ms_per_step_streamed_pool": [round(1000 * x, 1) for x in streamed],
        "streamed_over_resident": round(sum(streamed) / sum(resident), 3),
        "fits_store_gb": round((small.images.nbytes + small.labels.nbytes) / 2**30, 2),
        "steps": steps,
    }


def measure_gather(scratch: Path, repeats: int = 200) -> dict[str, object]:
    store = VolumeStore.load(scratch / "fits")
    rng = np.random.default_rng(0)
    draws = [np.sort(rng.choice(store.images.shape[0], 14, replace=False)) for _ in range(repeats)]
    started = time.perf_counter()
    for index in draws:
        np.asarray(store.images[index])
    row: dict[str, object] = {
        "measurement": "gather",
        "slices": 14,
        "ms_memory_map": round(1000 * (time.perf_counter() - started) / repeats, 3),
    }
    try:
        import zarr
    except ImportError:
        row["ms_zarr"] = None
        return row
    side = store.canvas
    array = zarr.create_array(
        str(scratch / "fits.zarr"), shape=store.images.shape, chunks=(1, side, side), dtype="float16"
    )
    for start in range(0, store.images.shape[0], 256):
        array[start : start + 256] = np.asarray(store.images[start : start + 256])
    opened = zarr.open_array(str(scratch / "fits.zarr"), mode="r")
    started = time.perf_counter()
    for index in draws:
        opened.get_orthogonal_selection((index, slice(None), slice(None)))
    row["ms_zarr"] = round(1000 * (time.perf_counter() - started) / repeats, 3)
    row["zarr"] = zarr.__version__
    shutil.rmtree(scratch / "fits.zarr")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, help="folder for the stores (needs --pool-gb free)")
    parser.add_argument("--pool-gb", type=float, default=36.0, help="store size of the large pool")
    parser.add_argument("--rate-scans", type=int, default=16)
    parser.add_argument("--side", type=int, default=512, help="scan side (pixels, a multiple of 16)")
    parser.add_argument("--depth", type=int, default=150, help="slices per scan")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=["rate", "pool", "steps", "gather"])
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    parser.add_argument("--build-pool", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--scans", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_pool is not None:  # the pool measurement's child (malloc's defaults, as in preprocess)
        build(args.build_pool, args.scans, 1, args.side, args.depth)
        return
    if args.scratch is None:
        parser.error("--scratch is required")
    args.scratch.mkdir(parents=True, exist_ok=True)
    try:
        for name in args.only:
            if name == "rate":
                row = measure_rate(args.scratch, args.rate_scans, args.side, args.depth)
            elif name == "pool":
                row = measure_pool(args.scratch, args.pool_gb, args.side, args.depth)
            elif name == "steps":
                row = measure_steps(args.scratch, args.device, args.steps, args.warmup, args.side, args.depth)
            else:
                row = measure_gather(args.scratch)
            print(json.dumps(row), flush=True)
    finally:
        if not args.keep:
            for name in ("pool", "fits"):
                shutil.rmtree(args.scratch / name, ignore_errors=True)


if __name__ == "__main__":
    main()
