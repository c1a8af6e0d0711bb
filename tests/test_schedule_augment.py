from __future__ import annotations

import math

import pytest
import torch

from mireg.augment.paper import augment_batch
from mireg.contract import Transform
from mireg.recipe import AugmentConfig, OptimConfig
from mireg.training.schedule import lr_at_epoch, rampup


def test_lr_schedule_warms_up_linearly_then_anneals_to_the_minimum() -> None:
    cfg = OptimConfig(lr=1e-7, warmup_epochs=10, multiplier=400, min_lr=1e-7)
    assert lr_at_epoch(0, 100, cfg) == pytest.approx(1e-7)
    assert lr_at_epoch(5, 100, cfg) == pytest.approx(1e-7 * (399 * 0.5 + 1))
    assert lr_at_epoch(10, 100, cfg) == pytest.approx(4e-5)
    lrs = [lr_at_epoch(e, 100, cfg) for e in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lr_at_epoch(100, 100, cfg) == pytest.approx(1e-7)


def test_rampup_rises_smoothly_to_one_and_is_off_by_default() -> None:
    assert rampup(0.0, 0.0) == 1.0 and rampup(7.5, 0.0) == 1.0
    assert rampup(0.0, 10.0) == pytest.approx(math.exp(-5))
    assert rampup(5.0, 10.0) == pytest.approx(math.exp(-1.25))
    assert rampup(10.0, 10.0) == 1.0 and rampup(30.0, 10.0) == 1.0
    values = [rampup(e / 4, 10.0) for e in range(41)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False))


def _identity(**changes: object) -> AugmentConfig:
    base = {"crop": 32, "rotation": 0, "flip_prob": 0, "brightness": (1, 1), "contrast": (1, 1)}
    return AugmentConfig(**{**base, **changes})


def test_identity_augmentation_returns_the_batch() -> None:
    x, y = torch.rand(3, 1, 32, 32), torch.randint(0, 4, (3, 32, 32))
    out, lab = augment_batch(x, y, _identity(), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x)
    assert lab is not None and torch.equal(lab, y)


def test_flips_crops_and_rotations_move_images_and_labels_together() -> None:
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 4, (4, 6, 6), generator=g)
    y = blocks.repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)  # 48x48 piecewise constant
    x = (0.1 + y / 4)[:, None].float()  # the image encodes its label
    for cfg in (_identity(flip_prob=1.0), _identity(crop=16), _identity(rotation=90.0)):
        out, lab = augment_batch(x, y, cfg, torch.Generator().manual_seed(1))
        assert lab is not None and out.shape[-1] == cfg.crop == lab.shape[-1]
        inside = out[:, 0] > 0.05  # zero padding where a rotation leaves the canvas
        decoded = ((out[:, 0] - 0.1) * 4).round().long()
        assert (decoded == lab)[inside].float().mean() > 0.9


def test_crops_are_windows_of_the_canvas() -> None:
    x = torch.rand(2, 1, 40, 40)
    out, _ = augment_batch(x, None, _identity(crop=16), torch.Generator().manual_seed(2))
    windows = [x[0, 0, i : i + 16, j : j + 16] for i in range(25) for j in range(25)]
    assert any(torch.allclose(out[0, 0], w, atol=1e-5) for w in windows)


def test_transform_replays_the_same_draw_at_every_resolution() -> None:
    t = Transform.draw(5, torch.Generator().manual_seed(0), torch.device("cpu"), 0.5, 0.5)
    big = torch.rand(5, 3, 8, 8)
    small = torch.nn.functional.avg_pool2d(big, 2)
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(t(big), 2), t(small))
    for n in range(5):
        expected = big[n]
        if t.flip_h[n]:
            expected = expected.flip(-2)
        if t.flip_w[n]:
            expected = expected.flip(-1)
        torch.testing.assert_close(t(big)[n], expected)
