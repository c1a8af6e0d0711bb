"""``mireg preprocess``: a raw data set, read by its dataset plugin, into a preprocessed store.

The store records how it was made (its provenance), so a rerun with the same input and options
finds it up to date instead of refusing the existing folder.
"""

from __future__ import annotations

from pathlib import Path

from mireg import registry
from mireg.contract import DatasetConfig
from mireg.errors import MiregError, PluginError
from mireg.io.nifti import add_unlabeled_folder
from mireg.preprocessing.store import VolumeStore
from mireg.preprocessing.volume import StoreBuilder
from mireg.progress import Progress

__all__ = ["prepare_store", "preprocessable"]


def preprocessable() -> list[str]:
    """The installed datasets that have a preprocess step (broken plugins are left out)."""
    names = []
    for name in registry.available("dataset"):
        try:
            config = registry.load("dataset", name)
        except PluginError:
            continue
        if issubclass(config, DatasetConfig) and config.can_preprocess:
            names.append(name)
    return names


def prepare_store(
    dataset: str,
    raw: Path,
    out: Path,
    spacing: float,
    canvas: int,
    options: dict[str, str],
    unlabeled: list[Path],
    progress: Progress | None = None,
    workers: int = 1,
) -> tuple[VolumeStore, bool]:
    """Preprocess ``raw`` with dataset plugin ``dataset`` into the store folder ``out``.

    Args:
        dataset: Name of a dataset plugin with a preprocess step.
        raw: The raw data set's folder.
        out: The store folder to write (atomically; an existing one is never overwritten).
        spacing: Target in-plane spacing (mm).
        canvas: Side of the square slices.
        options: The plugin's ``-O key=value`` options.
        unlabeled: Folders of NIfTI scans to add as unlabelled data.
        progress: Progress of reading.
        workers: Processes reading and preprocessing volumes in parallel (the store is the same
            for any number).

    Returns:
        The store, and whether it was written now (False: ``out`` was already made from the same
        input with the same options, and is returned as it is).

    Raises:
        MiregError: ``spacing`` is not positive, ``canvas`` not a positive multiple of 16, the
            dataset has no preprocess step, or ``out`` holds something else.
    """
    if not spacing > 0:
        raise MiregError(f"spacing {spacing}: the target in-plane spacing must be > 0 (mm)")
    if canvas < 16 or canvas % 16:
        raise MiregError(f"canvas {canvas}: the side of the slices must be a positive multiple of 16")
    config = registry.load("dataset", dataset)
    assert issubclass(config, DatasetConfig)  # the registry checks each kind's base class
    if not config.can_preprocess:
        raise MiregError(
            f"dataset {dataset!r} has no preprocess step",
            f"datasets that have one: {', '.join(preprocessable())}",
        )
    provenance = {
        "dataset": dataset,
        "raw": str(raw.resolve()),
        "spacing": spacing,
        "canvas": canvas,
        "options": options,
        "unlabeled": [str(p.resolve()) for p in unlabeled],
    }
    if out.exists():
        if VolumeStore.exists(out):
            existing = VolumeStore.load(out)
            if existing.provenance == provenance:
                return existing, False
        raise MiregError(
            f"{out}: already exists and was not made from this input with these options; "
            "refusing to overwrite it",
            "choose another output folder or remove this one",
        )
    with StoreBuilder(dataset, spacing, canvas, out, workers) as builder:
        config.preprocess(raw, builder, options, progress)
        for folder in unlabeled:
            add_unlabeled_folder(folder, builder, progress)
        return builder.save(provenance=provenance), True
