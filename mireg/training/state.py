"""What a checkpoint holds: :class:`TrainState`, the one checkpoint format, and its typed reader.

A checkpoint is ``TrainState.state_dict()`` saved with :func:`mireg.training.checkpoint.save_checkpoint`:
the evaluated network (``model``; a mean teacher's teacher), the optimised one when it differs
(``student``), every regulariser's state (cluster heads, teachers, second networks), the
optimiser, both random generators, the position in training (epoch, global step, step inside the
epoch and the epoch's running loss sums), the best validation score, the recipe and what the data
looked like (classes, spacing, canvas). Training resumes from it (:meth:`TrainState.load_state_dict`);
evaluation and prediction read it through :class:`Checkpoint` and :func:`load_trained`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import mireg
from mireg.contract import Backbone, Regularizer
from mireg.errors import CheckpointError, MiregError
from mireg.inference import Preprocessing
from mireg.network import Term, build_network, evaluation_model
from mireg.recipe import Recipe, validate_recipe
from mireg.training.checkpoint import load_checkpoint

__all__ = ["Checkpoint", "RunningMeans", "TrainState", "TrainedModel", "load_trained"]


@dataclass
class RunningMeans:
    """Sums of logged values over the current epoch, kept on the device (no host syncs per step)."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    count: int = 0
    skipped: int = 0  # steps with a non-finite loss, skipped (train.skip_nonfinite)

    def add(self, logs: dict[str, torch.Tensor]) -> None:
        for k, v in logs.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.detach().clone()
        self.count += 1

    def means(self) -> dict[str, float]:
        if not self.sums or not self.count:
            return {}
        values = torch.stack(list(self.sums.values())).double().cpu().tolist()  # one host sync
        return {k: v / self.count for k, v in zip(self.sums, values, strict=True)}

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "count": self.count, "skipped": self.skipped}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> RunningMeans:
        return cls(dict(state["sums"]), state["count"], state["skipped"])


@dataclass
class TrainState:
    """Everything training changes, in one place.

    Attributes:
        recipe: The run's recipe.
        data: What the network needs to know of its data to be applied to new scans (the
            checkpoint keeps its classes, spacing and canvas; the percentiles are mireg's fixed ones).
        model: The optimised backbone.
        terms: The regularisers, named and weighted, in recipe order.
        optimizer: The recipe's optimiser (Adam or SGD) over the model's and the regularisers' trainable
            parameters.
        generator: The random generator of augmentation, ``T`` and the regularisers' draws (on the
            CPU, whatever the device: a seed draws the same numbers on any device).
        epoch: Epochs finished.
        step: Optimisation steps taken (global step index of the next step).
        iteration: Steps taken inside the current epoch.
        running: The current epoch's running loss sums.
        best: Best mean validation DSC so far (-1 before the first validation).
    """

    recipe: Recipe
    data: Preprocessing
    model: Backbone
    terms: list[Term]
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    epoch: int = 0
    step: int = 0
    iteration: int = 0
    running: RunningMeans = field(default_factory=RunningMeans)
    best: float = -1.0

    @classmethod
    def create(
        cls, recipe: Recipe, data: Preprocessing, model: Backbone, terms: list[Term], device: torch.device
    ) -> TrainState:
        """A fresh state: the recipe's optimiser over every trainable parameter, the generator seeded by
        the recipe."""
        params = [
            p for m in (model, *(t.regularizer for t in terms)) for p in m.parameters() if p.requires_grad
        ]  # a mean teacher's weights are not optimised
        # On CUDA, the update is one fused kernel rather than a dozen passes over the weights.
        fused = True if device.type == "cuda" else None
        cfg = recipe.optim
        optimizer: torch.optim.Optimizer
        if cfg.name == "sgd":
            optimizer = torch.optim.SGD(
                params,
                lr=cfg.lr,
                momentum=cfg.momentum,
                nesterov=cfg.nesterov,
                weight_decay=cfg.weight_decay,
                fused=fused,
            )
        else:
            optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
        generator = torch.Generator().manual_seed(recipe.seed)  # on the CPU: the same draws on any device
        return cls(recipe, data, model, terms, optimizer, generator)

    @property
    def regularizers(self) -> list[Regularizer]:
        """The regulariser modules, in recipe order."""
        return [t.regularizer for t in self.terms]

    @property
    def eval_model(self) -> nn.Module:
        """The network validated, tested and checkpointed as "the model"."""
        return evaluation_model(self.model, self.terms)

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: plain data and tensors only (loadable with ``weights_only=True``)."""
        eval_model = self.eval_model
        state = {
            "model": eval_model.state_dict(),
            "regularizers": [reg.state_dict() for reg in self.regularizers],
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "iteration": self.iteration,
            "running": self.running.state_dict(),
            "best": self.best,
            "recipe": self.recipe.to_dict(),
            "data": {"classes": self.data.classes, "spacing": self.data.spacing, "canvas": self.data.canvas},
            "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state()},
            "mireg_version": mireg.__version__,
        }
        if eval_model is not self.model:
            state["student"] = self.model.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint (weights, optimiser, random generators and position)."""
        self.model.load_state_dict(state.get("student", state["model"]))
        for reg, reg_state in zip(self.regularizers, state["regularizers"], strict=True):
            reg.load_state_dict(reg_state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best"]
        self.iteration = state["iteration"]
        self.running = RunningMeans.from_state_dict(state["running"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        self.generator.set_state(state["rng"]["generator"].cpu())


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file read back: its recipe (validated), data, position and raw state."""

    path: Path
    recipe: Recipe
    data: Preprocessing
    epoch: int
    step: int
    state: dict[str, Any]

    @classmethod
    def read(cls, path: Path, device: str | torch.device = "cpu") -> Checkpoint:
        """Load and check a checkpoint written from a :class:`TrainState`.

        Raises:
            CheckpointError: The file is missing, unreadable, unsafe or not a mireg checkpoint.
            RecipeError: Its embedded recipe no longer validates (e.g. a plugin is gone).
        """
        state = load_checkpoint(path, device)
        try:
            recipe = validate_recipe(state["recipe"], f"{path} (embedded recipe)")
            data = state["data"]
            info = Preprocessing(float(data["spacing"]), int(data["canvas"]), list(data["classes"]))
            return cls(path, recipe, info, int(state["epoch"]), int(state["step"]), state)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{path}: not a complete mireg checkpoint ({type(exc).__name__}: {exc})"
            ) from exc


@dataclass
class TrainedModel:
    """A network restored from a checkpoint (eval mode), with what is needed to apply it."""

    checkpoint: Checkpoint
    model: nn.Module

    @property
    def recipe(self) -> Recipe:
        return self.checkpoint.recipe

    @property
    def size_multiple(self) -> int | None:
        """Input height and width must be multiples of this (the backbone's; None: not declared)."""
        multiple = getattr(self.model, "size_multiple", None)
        return None if multiple is None else int(multiple)

    @property
    def preprocessing(self) -> Preprocessing:
        """What prediction needs to know of the training data (spacing, canvas, classes)."""
        return self.checkpoint.data


def load_trained(path: Path, device: torch.device) -> TrainedModel:
    """Restore the evaluated network of checkpoint file ``path`` on ``device``, in eval mode.

    Raises:
        CheckpointError: Unreadable, or its weights do not fit its recipe.
    """
    checkpoint = Checkpoint.read(path, device)
    try:
        backbone, terms = build_network(checkpoint.recipe)
        model = evaluation_model(backbone, terms)  # what "model" holds: e.g. a mean teacher's teacher
        model.load_state_dict(checkpoint.state["model"])
    except MiregError:
        raise
    except (KeyError, RuntimeError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: does not fit its recipe ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from exc
    model.to(device).eval()
    return TrainedModel(checkpoint, model)
