"""A recipe's network: the backbone and the weighted regularisers, built from their configs.

:func:`check_recipe` builds them on the meta device (no memory, no data), so a wrong tap, radius
count, class count or plugin option fails in a second, naming its key, before any data is read or
generated: recipe validation runs it. :func:`build_network` builds them for real.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import torch
from torch import nn

from mireg.contract import Backbone, BackboneConfig, Regularizer, RegularizerConfig
from mireg.errors import RecipeError

__all__ = ["NetworkConfigs", "Term", "build_network", "check_recipe", "evaluation_model"]


class NetworkConfigs(Protocol):
    """What the network is built from: a :class:`~mireg.recipe.Recipe` (named by what it has, so
    this module stays below the recipe schema, which imports it to check a recipe)."""

    @property
    def backbone(self) -> BackboneConfig: ...

    @property
    def regularizers(self) -> Sequence[RegularizerConfig]: ...


class Term(NamedTuple):
    """One regulariser of the total loss: its log name, weight, weight ramp-up and module."""

    name: str
    weight: float
    rampup_epochs: float
    regularizer: Regularizer


def build_network(recipe: NetworkConfigs) -> tuple[Backbone, list[Term]]:
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


def check_recipe(recipe: NetworkConfigs) -> None:
    """Build the backbone and every regulariser on the meta device, where nothing is allocated.

    Raises:
        RecipeError: What :func:`build_network` or :func:`evaluation_model` would raise later.
    """
    with torch.device("meta"):
        model, terms = build_network(recipe)
        evaluation_model(model, terms)
