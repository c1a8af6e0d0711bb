"""Bidirectional copy-paste (``bcp``): the contract, the two mixing directions, the loss as BCP's
ACDC code writes it, the EMA teacher, real training steps and exact resumption."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from mireg.backbones.unet import UNetConfig
from mireg.inference import Preprocessing
from mireg.network import Term, build_network
from mireg.recipe import validate_recipe
from mireg.regularizers.bcp import (
    BCP,
    BCPConfig,
    copy_paste_box,
    largest_components,
    pair_indices,
)
from mireg.testing import check_regularizer, step_context
from mireg.training.data import RunData, load_data
from mireg.training.feed import open_feed
from mireg.training.runtime import Runtime
from mireg.training.state import TrainState
from mireg.training.step import TrainStep

from .helpers import tiny_recipe


def _net(num_classes: int = 4) -> Any:
    torch.manual_seed(0)
    return UNetConfig(name="unet", num_classes=num_classes, base_channels=4).create()


@pytest.mark.parametrize(
    "options",
    [{}, {"evaluate": "teacher"}, {"largest_component": False, "alpha": 0.0}],
    ids=["defaults", "teacher", "raw-pseudo-labels"],
)
def test_bcp_obeys_the_contract(options: dict[str, Any]) -> None:
    check_regularizer(BCPConfig(name="bcp", weight=1.0, **options))


def test_the_defaults_are_bcps() -> None:
    cfg = BCPConfig(name="bcp", weight=1.0)
    assert (cfg.alpha, cfg.ema_decay, cfg.box_fraction) == (0.5, 0.99, 2 / 3)
    assert cfg.largest_component and cfg.evaluate == "student" and cfg.rampup_epochs == 0.0
    net = _net()
    assert cfg.build(net).evaluation_model(net) is net
    reg = cfg.model_copy(update={"evaluate": "teacher"}).build(net)
    assert reg.evaluation_model(net) is reg.teacher


# ------------------------------------------------------------------------------------ the masks


def test_the_box_is_two_thirds_of_each_side_placed_as_bcp_places_it() -> None:
    g = torch.Generator().manual_seed(0)
    tops, lefts = set(), set()
    for _ in range(400):
        box = copy_paste_box(32, 26, 2 / 3, g, torch.device("cpu"))
        rows, cols = box.any(dim=1).nonzero()[:, 0], box.any(dim=0).nonzero()[:, 0]
        assert int(box.sum()) == len(rows) * len(cols)  # one rectangle
        assert (len(rows), len(cols)) == (21, 17)  # int(32 * 2 / 3), int(26 * 2 / 3)
        tops.add(int(rows[0]))
        lefts.add(int(cols[0]))
    # randint(0, H - h_B): every corner from 0 to H - h_B - 1, never H - h_B
    assert tops == set(range(32 - 21)) and lefts == set(range(26 - 17))


def test_pairs_are_the_first_k_and_the_next_k_of_each_group() -> None:
    cpu = torch.device("cpu")
    l_a, l_b, u_a, u_b = pair_indices(12, 12, cpu)  # BCP's own batch: halves
    assert l_a.tolist() == u_a.tolist() == list(range(6))
    assert l_b.tolist() == u_b.tolist() == list(range(6, 12))
    l_a, l_b, u_a, u_b = pair_indices(8, 4, cpu)
    assert (l_a.tolist(), l_b.tolist(), u_a.tolist(), u_b.tolist()) == ([0, 1], [2, 3], [0, 1], [2, 3])
    l_a, l_b, u_a, u_b = pair_indices(1, 3, cpu)  # one labelled image serves both directions
    assert (l_a.tolist(), l_b.tolist(), u_a.tolist(), u_b.tolist()) == ([0], [0], [0], [1])


@pytest.mark.parametrize(("n_l", "n_u"), [(4, 5), (1, 3)])
def test_the_copy_paste_mixes_both_directions_with_labels_following_the_masks(n_l: int, n_u: int) -> None:
    net = _net()
    reg = BCPConfig(name="bcp", weight=1.0).build(net)
    ctx = step_context(net, n_labeled=n_l, n_unlabeled=n_u, size=32, seed=1)
    assert ctx.generator is not None
    before = ctx.generator.get_state()
    box, (x_in, t_in), (x_out, t_out) = reg.mixes(ctx)
    ctx.generator.set_state(before)
    assert torch.equal(box, copy_paste_box(32, 32, 2 / 3, ctx.generator, torch.device("cpu")))
    assert 0 < int(box.sum()) < box.numel()
    l_a, l_b, u_a, u_b = pair_indices(n_l, n_u, torch.device("cpu"))
    q_a, q_b = reg.pseudo_labels(ctx.x_u[u_a]), reg.pseudo_labels(ctx.x_u[u_b])
    inside, outside = box, ~box
    # Inward: the labelled image inside the box, the unlabelled one outside; outward: the reverse.
    assert torch.equal(x_in[:, :, inside], ctx.x_l[l_a][:, :, inside])
    assert torch.equal(x_in[:, :, outside], ctx.x_u[u_a][:, :, outside])
    assert torch.equal(x_out[:, :, inside], ctx.x_u[u_b][:, :, inside])
    assert torch.equal(x_out[:, :, outside], ctx.x_l[l_b][:, :, outside])
    # The targets follow the same masks: ground truth where the labelled image is, pseudo-labels elsewhere.
    assert torch.equal(t_in[:, inside], ctx.y_l[l_a][:, inside])
    assert torch.equal(t_in[:, outside], q_a[:, outside])
    assert torch.equal(t_out[:, inside], q_b[:, inside])
    assert torch.equal(t_out[:, outside], ctx.y_l[l_b][:, outside])
    if n_l == 1:  # one labelled image: inside the box in one mixed image, outside it in the other
        assert torch.equal(x_in[0][:, inside], ctx.x_l[0][:, inside])
        assert torch.equal(x_out[0][:, outside], ctx.x_l[0][:, outside])
        assert torch.equal(t_in[0][inside], ctx.y_l[0][inside])
        assert torch.equal(t_out[0][outside], ctx.y_l[0][outside])


def test_pseudo_labels_keep_each_class_largest_8_connected_component() -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        labels = torch.randint(1, 4, (3, 19, 23), generator=g)
        labels = labels * (torch.rand(3, 19, 23, generator=g) < 0.25 + 0.02 * trial)
        expected = np.zeros(labels.shape, dtype=np.int64)
        for i in range(3):
            for c in range(1, 4):
                components, count = ndimage.label((labels[i] == c).numpy(), structure=np.ones((3, 3)))
                if count:  # np.argmax: of equal sizes, the first component in raster order
                    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
                    expected[i][components == largest] = c
        assert np.array_equal(largest_components(labels, 4).numpy(), expected), trial
    snake = torch.zeros(1, 9, 9, dtype=torch.long)
    snake[0, 0:7:2, :] = 2  # rows 0, 2, 4, 6 joined at alternate ends: one winding path
    snake[0, 1, 8] = snake[0, 3, 0] = snake[0, 5, 8] = 2
    snake[0, 6, 0], snake[0, 7, 0] = 0, 2  # its last pixel touches it only diagonally
    snake[0, 8, 8] = 2  # a stray pixel, dropped
    snake[0, 8, 3:5] = 3
    kept = largest_components(snake, 4)[0]
    expected = snake[0].clone()
    expected[8, 8] = 0
    assert torch.equal(kept, expected)


def _mix_loss(
    logits: torch.Tensor, target: torch.Tensor, inside: torch.Tensor, w_out: float, w_in: float
) -> torch.Tensor:
    """BCP's ``mix_loss`` (Dice with a mask, per class, plus masked cross-entropy), written plainly."""
    p = logits.softmax(1)
    total = torch.zeros(())
    for region, weight in ((~inside, w_out), (inside, w_in)):
        m = region.float()
        dice = torch.zeros(())
        for c in range(logits.shape[1]):
            t = (target == c).float()
            num = 2 * (p[:, c] * t * m).sum() + 1e-10
            den = (p[:, c] * p[:, c] * m).sum() + (t * t * m).sum() + 1e-10
            dice = dice + (1 - num / den)
        ce = (F.cross_entropy(logits, target, reduction="none") * m).sum() / (m.sum() + 1e-16)
        total = total + weight * (dice / logits.shape[1] + ce)
    return total


def test_the_loss_is_bcps_mixed_dice_and_cross_entropy() -> None:
    net = _net()
    reg = BCPConfig(name="bcp", weight=1.0, alpha=0.3).build(net)
    ctx = step_context(net, n_labeled=4, n_unlabeled=4, size=32, seed=2)
    assert ctx.generator is not None
    before = ctx.generator.get_state()
    out = reg(ctx)
    ctx.generator.set_state(before)
    box, (x_in, t_in), (x_out, t_out) = reg.mixes(ctx)
    boxes = box.expand(len(x_in), *box.shape)
    with torch.no_grad():
        expected = (
            _mix_loss(net(x_in), t_in, boxes, 0.3, 1.0) + _mix_loss(net(x_out), t_out, boxes, 1.0, 0.3)
        ) / 2
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert (out.logs["dice"] + out.logs["ce"]).item() / 2 == pytest.approx(out.loss.item(), rel=1e-6)


# ---------------------------------------------------------------------------------- the teacher


def test_no_gradient_flows_into_the_teacher() -> None:
    net = _net()
    reg = BCPConfig(name="bcp", weight=1.0).build(net)
    assert all(not p.requires_grad for p in reg.teacher.parameters())
    reg(step_context(net, n_labeled=2, n_unlabeled=2, size=32)).loss.backward()
    assert all(p.grad is None for p in reg.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert list(reg.parameters()) == list(reg.teacher.parameters())  # nothing of its own to optimise


def test_the_pseudo_labels_are_the_teachers_largest_components() -> None:
    net = _net()
    reg = BCPConfig(name="bcp", weight=1.0).build(net)
    with torch.no_grad():  # the student moves away from its teacher
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        teacher, student = reg.teacher.train()(x).argmax(1), net.train()(x).argmax(1)
        labels = reg.pseudo_labels(x)
    assert not torch.equal(largest_components(student, 4), largest_components(teacher, 4))
    assert torch.equal(labels, largest_components(teacher, 4))
    assert not torch.equal(labels, teacher)  # the components were cut


def test_the_ema_averages_parameters_and_float_buffers_with_bcps_decay() -> None:
    net = _net()
    reg = BCPConfig(name="bcp", weight=1.0).build(net)
    reg(step_context(net, size=32))  # the teacher's own batch-norm statistics move
    teacher = {k: v.clone() for k, v in reg.teacher.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    student = net.state_dict()
    reg.after_step(net, step=5)
    for key, value in reg.teacher.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.99 * teacher[key] + 0.01 * student[key])
        else:
            assert torch.equal(value, teacher[key]), key  # num_batches_tracked: the teacher's own


# ------------------------------------------------------------------------------- training steps


def _training(tmp_path: Path, data: RunData | None = None) -> tuple[TrainState, TrainStep, RunData]:
    raw = tiny_recipe(tmp_path / "runs", regularizers=[])
    raw["train"].update(labeled_batch=4, unlabeled_batch=4)
    recipe = validate_recipe(raw, "tiny")
    runtime = Runtime.start("cpu")
    torch.manual_seed(recipe.seed)
    data = data if data is not None else load_data(recipe)
    model, terms = build_network(recipe)
    terms.append(Term("bcp", 1.0, 0.0, BCPConfig(name="bcp", weight=1.0).build(model)))
    info = Preprocessing(data.store.spacing, data.store.canvas, data.store.classes)
    state = TrainState.create(recipe, info, model, terms, runtime.device)
    step = TrainStep(state, open_feed(recipe, data, runtime.device), runtime, torch.contiguous_format)
    return state, step, data


def test_training_steps_are_finite_and_leave_the_teacher_the_ema_of_the_student(tmp_path: Path) -> None:
    state, step, _ = _training(tmp_path)
    reg = state.regularizers[0]
    assert isinstance(reg, BCP)
    optimised = {id(p) for group in state.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimised for p in reg.teacher.parameters())
    for _ in range(3):
        teacher = [p.detach().clone() for p in reg.teacher.parameters()]
        logs = step()
        assert logs is not None
        for key in ("total", "sup", "bcp", "bcp/dice", "bcp/ce"):
            assert math.isfinite(float(logs[key])), key
        for t, before, s in zip(reg.teacher.parameters(), teacher, state.model.parameters(), strict=True):
            torch.testing.assert_close(t, 0.99 * before + 0.01 * s)
    assert state.eval_model is state.model  # BCP evaluates the student
    assert "student" not in state.state_dict()


def _saved(state: TrainState) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state.state_dict(), buffer)
    buffer.seek(0)
    loaded: dict[str, Any] = torch.load(buffer, weights_only=True)
    return loaded


def test_a_resumed_run_takes_the_steps_an_uninterrupted_one_takes(tmp_path: Path) -> None:
    state, step, data = _training(tmp_path)
    for _ in range(2):
        step()
    saved = _saved(state)
    uninterrupted = step()
    fresh, resumed_step, _ = _training(tmp_path, data)
    fresh.load_state_dict(saved)
    resumed = resumed_step()
    assert uninterrupted is not None and resumed is not None and set(uninterrupted) == set(resumed)
    for key, value in uninterrupted.items():
        assert torch.equal(value, resumed[key]), key
    teacher, fresh_teacher = state.regularizers[0].state_dict(), fresh.regularizers[0].state_dict()
    assert set(teacher) == set(fresh_teacher)
    for key, value in teacher.items():
        assert torch.equal(value, fresh_teacher[key]), key
    for a, b in zip(state.model.parameters(), fresh.model.parameters(), strict=True):
        assert torch.equal(a, b)
