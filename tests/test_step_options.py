"""Step options: memory format and torch.compile (how, not what, the network computes), and the
ramp-up of regulariser weights."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mireg.recipe import validate_recipe
from mireg.training.loop import Trainer

from .helpers import DEVICES, tiny_recipe, train_steps


def _losses(tmp_path: Path, steps: int, **train: object) -> tuple[list[dict[str, float]], Trainer]:
    logs, trainer = train_steps(tiny_recipe(tmp_path / "runs"), steps, **train)
    return logs, trainer


def _assert_same(a: list[dict[str, float]], b: list[dict[str, float]]) -> None:
    for one, two in zip(a, b, strict=True):
        assert one.keys() == two.keys()
        for key, value in one.items():
            assert two[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_trains_the_same_steps(tmp_path: Path, device: str) -> None:
    reference, _ = _losses(tmp_path, 3, memory_format="contiguous", device=device)
    losses, trainer = _losses(tmp_path, 3, memory_format="channels_last", device=device)
    _assert_same(reference, losses)
    conv = next(m for m in trainer.state.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_network_trains_the_same_steps_and_keeps_its_checkpoint_keys(
    tmp_path: Path, device: str
) -> None:
    reference, eager = _losses(tmp_path, 2, device=device)
    losses, compiled = _losses(tmp_path, 2, compile=True, device=device)
    _assert_same(reference, losses)
    assert list(compiled.state.model.state_dict()) == list(eager.state.model.state_dict())


def test_rampup_scales_each_regulariser_weight_by_training_progress(tmp_path: Path) -> None:
    raw = tiny_recipe(
        tmp_path / "runs",
        regularizers=[
            {"name": "consistency", "weight": 10.0, "rampup_epochs": 2},
            {"name": "mutual_information", "weight": 0.1, "subheads": 2, "clusters": 5},
        ],
    )
    trainer = Trainer(validate_recipe(raw, "test"))
    trainer.setup()
    per_epoch = raw["train"]["iterations_per_epoch"]
    for step, factor in ((0, math.exp(-5)), (per_epoch, math.exp(-1.25)), (2 * per_epoch, 1.0)):
        trainer.state.step = step
        logs = {k: float(v) for k, v in (trainer.step() or {}).items()}
        expected = logs["sup"] + 10.0 * factor * logs["consistency"] + 0.1 * logs["mutual_information"]
        assert logs["total"] == pytest.approx(expected, rel=1e-5, abs=1e-7), step
