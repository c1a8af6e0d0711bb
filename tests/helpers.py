"""Helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def tiny_recipe(runs_dir: Path, **changes: Any) -> dict[str, Any]:
    """A recipe that trains in seconds on the CPU: 12 tiny patients, 32x32 crops, a narrow UNet."""
    recipe: dict[str, Any] = {
        "name": "tiny",
        "seed": 3,
        "data": {
            "name": "phantom",
            "patients": 12,
            "spacing": 5.0,
            "canvas": 48,
            "labeled_ratio": 0.5,
            "val_patients": 2,
            "test_patients": 2,
        },
        "backbone": {"name": "unet", "num_classes": 4, "base_channels": 4},
        "regularizers": [
            {"name": "consistency", "weight": 10.0},
            {"name": "mutual_information", "weight": 0.1, "subheads": 2, "clusters": 5},
        ],
        "optim": {"lr": 1e-5, "warmup_epochs": 1, "multiplier": 100, "min_lr": 1e-5},
        "augment": {"crop": 32},
        "train": {
            "epochs": 2,
            "iterations_per_epoch": 3,
            "labeled_batch": 2,
            "unlabeled_batch": 3,
            "device": "cpu",
            "eval_batch": 16,
            "log_every": 2,
            "runs_dir": str(runs_dir),
        },
    }
    for key, value in changes.items():
        recipe[key] = value
    return recipe
