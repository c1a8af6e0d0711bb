"""Run directories: creating them without ever overwriting one, and loading a trained model back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mireg.checkpoint import load_checkpoint
from mireg.contract import Backbone
from mireg.data.splits import Split
from mireg.errors import CheckpointError, MiregError, RunError
from mireg.recipe import Recipe, validate_recipe

__all__ = ["TrainedModel", "load_trained", "prepare_run_dir", "read_split"]


def prepare_run_dir(runs_dir: Path, name: str, fresh: bool) -> Path:
    """The run directory ``runs_dir/name``, never one that already holds a run.

    With ``fresh``, an existing run is left alone and the next free ``name-2``, ``name-3``... is used.
    """
    path = runs_dir / name
    if path.exists() and any(path.iterdir()):
        if not fresh:
            raise RunError(f"{path}: a run already exists there; refusing to overwrite it",
                           "pass --fresh to start a new numbered run directory beside it")
        k = 2
        while (runs_dir / f"{name}-{k}").exists():
            k += 1
        path = runs_dir / f"{name}-{k}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class TrainedModel:
    """A network restored from a checkpoint, with what is needed to apply it to new data."""

    recipe: Recipe
    model: Backbone
    classes: list[str]
    spacing: float
    canvas: int
    checkpoint: Path
    state: dict[str, Any]


def resolve_checkpoint(path: Path, which: str = "best") -> Path:
    """A checkpoint file: ``path`` itself, or ``path/<which>.pt`` for a run directory."""
    if path.is_dir():
        candidate = path / (which if which.endswith(".pt") else f"{which}.pt")
        if not candidate.is_file():
            raise CheckpointError(f"{path}: no checkpoint {candidate.name} in this run directory",
                                  "train first, or pass --checkpoint last")
        return candidate
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory or checkpoint")
    return path


def load_trained(path: Path, device: torch.device, which: str = "best") -> TrainedModel:
    """Restore the network of a run directory or checkpoint file (eval mode, on ``device``)."""
    from mireg.train import build_model  # the builder lives with the loop that uses it most

    ckpt = resolve_checkpoint(path, which)
    state = load_checkpoint(ckpt, device)
    try:
        recipe = validate_recipe(state["recipe"], f"{ckpt} (embedded recipe)")
        data = state["data"]
        model, _ = build_model(recipe)
        model.load_state_dict(state["model"])
    except MiregError:
        raise
    except (KeyError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{ckpt}: does not fit its recipe ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0]})") from exc
    model.to(device).eval()
    return TrainedModel(recipe, model, list(data["classes"]), float(data["spacing"]),
                        int(data["canvas"]), ckpt, state)


def read_split(run_dir: Path) -> Split:
    """The split a run was trained with (``split.json``)."""
    path = run_dir / "split.json"
    try:
        raw = json.loads(path.read_text())
        return Split(raw["labeled"], raw["unlabeled"], raw["validation"], raw["test"])
    except (OSError, ValueError, KeyError) as exc:
        raise RunError(f"{path}: cannot read the run's split ({exc})") from exc
