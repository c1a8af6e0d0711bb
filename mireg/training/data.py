"""Building a run's data from a recipe (its network: :mod:`mireg.network`).

:func:`load_data` opens the store (memory-mapped), splits its patients and lists the slices each
pool draws from; :mod:`mireg.training.feed` brings the slices of each step to the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mireg.data.splits import Split, make_split
from mireg.errors import RecipeError
from mireg.preprocessing.store import VolumeStore
from mireg.progress import Progress

if TYPE_CHECKING:
    from mireg.recipe import Recipe

__all__ = ["RunData", "load_data"]


@dataclass
class RunData:
    """A run's data: the store, its split, and the training pools.

    Attributes:
        store: The preprocessed store (memory-mapped).
        split: Patients of each part.
        labeled: Store indices of the slices the labelled batch is drawn from.
        unlabeled: Store indices of the slices the unlabelled batch is drawn from (the labelled ones
            under full supervision).
    """

    store: VolumeStore
    split: Split
    labeled: np.ndarray
    unlabeled: np.ndarray


def load_data(recipe: Recipe, progress: Progress | None = None) -> RunData:
    """Open (or generate) the recipe's store, split it, and check it fits the recipe.

    Raises:
        RecipeError: The backbone's class count or the crop does not fit the data.
        DataError: The data is missing, corrupt, or cannot be split as asked.
    """
    store = recipe.data.load(progress)
    seed = recipe.seed if recipe.data.split_seed is None else recipe.data.split_seed
    split = make_split(store, recipe.data, seed)
    if len(store.classes) != recipe.backbone.num_classes:
        raise RecipeError(
            f"backbone.num_classes: {recipe.backbone.num_classes} but the data set has "
            f"{len(store.classes)} classes ({', '.join(store.classes)})"
        )
    if recipe.augment.crop > store.canvas:
        raise RecipeError(f"augment.crop: {recipe.augment.crop} exceeds the data canvas {store.canvas}")
    labeled = store.slice_indices(split.labeled)
    unlabeled = store.slice_indices(split.unlabeled, labeled_only=False)
    if len(unlabeled) == 0:  # full supervision: the unlabelled batch comes from labels
        unlabeled = labeled
    return RunData(store, split, labeled, unlabeled)
