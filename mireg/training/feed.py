"""Where each training step's slices come from: the batch draws, and the two data paths.

The slices of step ``t`` are drawn from a random stream of their own, seeded by the recipe's seed and
``t`` alone (:class:`BatchDraws`). The draws therefore depend neither on anything else the step
draws (augmentation, ``T``, a regulariser's own randomness) nor on where the data lives, and any
step's slices are known in advance, which is what lets the streamed path read ahead.

- :class:`ResidentFeed` keeps the store on the training device (on the CPU: the store's read-only
  memory map, one copy for every process) and gathers each batch there.
- :class:`StreamedFeed` leaves the store on disk and gathers the batches of the next steps from it in
  a background thread, into pinned host memory on CUDA, copied to the device without blocking.

Both give the same batches for the same seed, bit for bit.
"""

from __future__ import annotations

import mmap
import os
import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import torch

from mireg.preprocessing.store import VolumeStore

if TYPE_CHECKING:
    from mireg.recipe import Recipe
    from mireg.training.data import RunData

__all__ = [
    "Batch",
    "BatchDraws",
    "Feed",
    "ResidentFeed",
    "StreamedFeed",
    "choose_placement",
    "make_feed",
    "open_feed",
    "resident_budget",
]

#: What the reading thread hands over: a step and its host tensors, or the error reading them.
_Item = tuple[int, "tuple[torch.Tensor, ...] | BaseException"]

#: Distinguishes the batch draws from any other stream seeded with the recipe's seed.
_DRAWS_STREAM = 0x6D697265


@dataclass(frozen=True)
class Batch:
    """One step's slices on the training device, as stored (float16 images, uint8 labels).

    Attributes:
        images_l: ``(B_l, H, W)`` labelled images.
        labels_l: ``(B_l, H, W)`` their label maps.
        images_u: ``(B_u, H, W)`` unlabelled images.
    """

    images_l: torch.Tensor
    labels_l: torch.Tensor
    images_u: torch.Tensor


class BatchDraws:
    """The slices of every step: ``draws(step)`` gives the store indices of its labelled and
    unlabelled slices, drawn uniformly with replacement from the two pools.

    Args:
        seed: The recipe's seed.
        labeled: Store indices of the labelled pool.
        unlabeled: Store indices of the unlabelled pool.
        labeled_batch: Labelled slices per step (the global batch, before any sharding).
        unlabeled_batch: Unlabelled slices per step.
    """

    def __init__(
        self, seed: int, labeled: np.ndarray, unlabeled: np.ndarray, labeled_batch: int, unlabeled_batch: int
    ) -> None:
        self.seed = seed
        self.labeled, self.unlabeled = labeled, unlabeled
        self.labeled_batch, self.unlabeled_batch = labeled_batch, unlabeled_batch

    def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([_DRAWS_STREAM, self.seed, step])
        il = self.labeled[rng.integers(0, len(self.labeled), self.labeled_batch)]
        iu = self.unlabeled[rng.integers(0, len(self.unlabeled), self.unlabeled_batch)]
        return il, iu


class Feed(Protocol):
    """Gives each step its batch (steps are asked for in order, from any starting step)."""

    #: ``resident`` or ``streamed``.
    placement: str

    def batch(self, step: int) -> Batch: ...

    def close(self) -> None: ...


class ResidentFeed:
    """The store on the training device; each batch is gathered there."""

    placement = "resident"

    def __init__(self, store: VolumeStore, draws: BatchDraws, device: torch.device) -> None:
        self.draws, self.device = draws, device
        self.images, self.labels = store.tensors(device)
        self.label_rows = torch.from_numpy(store.label_rows()).to(device)

    def batch(self, step: int) -> Batch:
        # Non-blocking: the indices are staged at once, without waiting for the device to finish.
        il, iu = (torch.from_numpy(i).to(self.device, non_blocking=True) for i in self.draws(step))
        return Batch(self.images[il], self.labels[self.label_rows[il]], self.images[iu])

    def close(self) -> None:
        pass


def _gather(array: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``array[index]`` reading each distinct row once, in file order (fewer, forward disk reads)."""
    rows, inverse = np.unique(index, return_inverse=True)
    return np.asarray(array[rows])[inverse]


def _file_backed(array: np.ndarray) -> bool:
    """True for a whole ``.npy`` file memory-mapped by ``np.load`` (rows at known file offsets)."""
    return (
        isinstance(array, np.memmap)
        and isinstance(array.base, mmap.mmap)
        and array.filename is not None
        and array.flags.c_contiguous
        and hasattr(os, "preadv")
    )


def _read_rows(array: np.ndarray, index: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = array[index]``, each distinct row read once, in file order.

    From a memory-mapped file the rows are read with ``os.preadv``, which releases the GIL while the
    disk works: a page fault of the memory map holds it, and would stall the training thread for the
    whole read. Otherwise (an array in memory) by indexing.
    """
    if len(index) and (index.min() < 0 or index.max() >= len(array)):
        raise IndexError(f"rows {index.tolist()} out of range for {len(array)} rows")
    if not _file_backed(array):
        out[...] = _gather(array, index)
        return
    assert isinstance(array, np.memmap) and array.filename is not None
    row_bytes, first = array.strides[0], dict[int, int]()
    with open(array.filename, "rb", buffering=0) as fh:
        for position in np.argsort(index, kind="stable").tolist():
            row = int(index[position])
            if row in first:
                out[position] = out[first[row]]
                continue
            first[row] = position
            view, offset, got = memoryview(out[position]).cast("B"), array.offset + row * row_bytes, 0
            while got < row_bytes:
                n = os.preadv(fh.fileno(), [view[got:]], offset + got)
                if n == 0:
                    raise EOFError(f"{array.filename}: ends inside row {row}")
                got += n


class StreamedFeed:
    """The store stays on disk; a background thread gathers the next ``depth`` steps' batches.

    Args:
        store: The store (memory-mapped).
        draws: The batch draws.
        device: The training device; on CUDA the batches are staged in pinned memory and copied
            without blocking.
        depth: How many steps' batches are read ahead.
    """

    placement = "streamed"

    def __init__(self, store: VolumeStore, draws: BatchDraws, device: torch.device, depth: int = 4) -> None:
        self.store, self.draws, self.device, self.depth = store, draws, device, depth
        self.label_rows = store.label_rows()
        self._pin = device.type == "cuda"
        self._queue: queue.Queue[_Item] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next = -1

    def _read(self, step: int) -> tuple[torch.Tensor, ...]:
        """The step's slices, read straight into (on CUDA, pinned) host tensors."""
        il, iu = self.draws(step)
        out = []
        for array, index in (
            (self.store.images, il),
            (self.store.labels, self.label_rows[il]),
            (self.store.images, iu),
        ):
            dtype = torch.from_numpy(np.empty(0, dtype=array.dtype)).dtype
            tensor = torch.empty((len(index), *array.shape[1:]), dtype=dtype, pin_memory=self._pin)
            _read_rows(array, index, tensor.numpy())
            out.append(tensor)
        return tuple(out)

    def _run(self, first: int, out: queue.Queue[_Item]) -> None:
        step = first
        while not self._stop.is_set():
            try:
                item: tuple[torch.Tensor, ...] | BaseException = self._read(step)
            except BaseException as exc:  # handed to the training thread, which raises it
                item = exc
            while not self._stop.is_set():
                try:
                    out.put((step, item), timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return
            step += 1

    def _start(self, step: int) -> None:
        self.close()
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(
            target=self._run, args=(step, self._queue), name="mireg-stream", daemon=True
        )
        self._thread.start()
        self._next = step

    def batch(self, step: int) -> Batch:
        if step != self._next or self._queue is None:
            self._start(step)
        assert self._queue is not None
        got, item = self._queue.get()
        if isinstance(item, BaseException):
            self._next = -1
            raise item
        assert got == step
        self._next = step + 1
        images_l, labels_l, images_u = (t.to(self.device, non_blocking=True) for t in item)
        return Batch(images_l, labels_l, images_u)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._thread, self._queue, self._next = None, None, -1


# --------------------------------------------------------------------------------------------------
# Which path


def store_bytes(store: VolumeStore) -> int:
    """The bytes the store's arrays take in memory."""
    return int(store.images.nbytes + store.labels.nbytes)


def resident_budget(device: torch.device) -> int:
    """How many bytes of store ``auto`` keeps resident: a quarter of the GPU's memory on CUDA, half of
    the machine's memory on the CPU (where the resident store is the page cache's memory map)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 4
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def choose_placement(
    setting: str, store: VolumeStore, device: torch.device, budget_gb: float | None
) -> Literal["resident", "streamed"]:
    """``train.data_placement`` resolved: ``auto`` keeps the store resident when it fits the budget."""
    if setting == "resident":
        return "resident"
    if setting == "streamed":
        return "streamed"
    budget = resident_budget(device) if budget_gb is None else int(budget_gb * 2**30)
    return "resident" if store_bytes(store) <= budget else "streamed"


def make_feed(placement: str, store: VolumeStore, draws: BatchDraws, device: torch.device) -> Feed:
    if placement == "resident":
        return ResidentFeed(store, draws, device)
    return StreamedFeed(store, draws, device)


def open_feed(recipe: Recipe, data: RunData, device: torch.device) -> Feed:
    """The feed of a run's data: the draws of the recipe's seed and batch sizes from the data's
    pools, placed as ``train.data_placement`` says."""
    cfg = recipe.train
    draws = BatchDraws(recipe.seed, data.labeled, data.unlabeled, cfg.labeled_batch, cfg.unlabeled_batch)
    placement = choose_placement(cfg.data_placement, data.store, device, cfg.resident_gb)
    return make_feed(placement, data.store, draws, device)
