"""Building a run's components from a recipe: the network, its loss terms, and the data pools.

:func:`check_recipe` builds the network and every regulariser on the meta device (no memory, no
data), so a wrong tap, radius count, class count or plugin option fails in a second, naming its
key, before any data is read or generated. :func:`build_network` builds them for real and
:func:`load_data` opens the store, splits its patients and puts the slices on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import nn

from mireg.contract import Backbone, Regularizer
from mireg.data.splits import Split, make_split
from mireg.data.store import VolumeStore
from mireg.errors import RecipeError
from mireg.progress import Progress

if TYPE_CHECKING:
    from mireg.recipe import Recipe

__all__ = [
    "RunData",
    "Term",
    "build_network",
    "check_recipe",
    "evaluation_model",
    "load_data",
]


class Term(NamedTuple):
    """One regulariser of the total loss: its log name, weight, weight ramp-up and module."""

    name: str
    weight: float
    rampup_epochs: float
    regularizer: Regularizer


def build_network(recipe: Recipe) -> tuple[Backbone, list[Term]]:
    """The backbone and the named, weighted regularisers of ``recipe`` (on the default device).

    Raises:
        RecipeError: A plugin rejects its options (the message names the recipe key).
    """
    try:
        backbone = recipe.backbone.create()
    except ValueError as exc:
        raise RecipeError(f"backbone ({recipe.backbone.name}): {exc}") from None
    terms: list[Term] = []
    for i, cfg in enumerate(recipe.regularizers):
        try:
            reg = cfg.build(backbone)
        except ValueError as exc:
            raise RecipeError(f"regularizers[{i}] ({cfg.name}): {exc}") from None
        same = sum(c.name == cfg.name for c in recipe.regularizers[:i])
        name = cfg.name if same == 0 else f"{cfg.name}_{same + 1}"
        terms.append(Term(name, cfg.weight, cfg.rampup_epochs, reg))
    return backbone, terms


def evaluation_model(model: Backbone, terms: list[Term]) -> nn.Module:
    """The network validated, tested and checkpointed: the model, or a regulariser's substitute
    (a mean teacher's teacher). At most one regulariser may substitute it."""
    substitutes = [(t.name, t.regularizer.evaluation_model(model)) for t in terms]
    substitutes = [(name, m) for name, m in substitutes if m is not model]
    if len(substitutes) > 1:
        raise RecipeError(
            f"regularizers {[n for n, _ in substitutes]} each replace the evaluated model; at most one may"
        )
    return substitutes[0][1] if substitutes else model


def check_recipe(recipe: Recipe) -> None:
    """Build the backbone and every regulariser on the meta device, where nothing is allocated.

    Raises:
        RecipeError: What :func:`build_network` or :func:`evaluation_model` would raise later.
    """
    with torch.device("meta"):
        model, terms = build_network(recipe)
        evaluation_model(model, terms)


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
