"""The supervised loss (cross-entropy, or nnU-Net's Dice + cross-entropy with deep supervision), the
SGD / poly optimiser settings, and the recipe keys that choose them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mireg.contract import GROUPS
from mireg.errors import RecipeError
from mireg.recipe import OptimConfig, validate_recipe
from mireg.training.loop import Trainer
from mireg.training.schedule import lr_at_epoch
from mireg.training.supervised import deep_supervision_weights, soft_dice_loss, supervised_loss

from .helpers import tiny_recipe, train_steps
from .test_losses import recording_reduction


def slow_batch_dice(logits: torch.Tensor, labels: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """nnU-Net's batch Dice loss written out pixel by pixel: -mean over foreground classes."""
    probs = logits.double().softmax(1)
    dices = []
    for c in range(1, logits.shape[1]):
        inter = pred = truth = 0.0
        for n in range(logits.shape[0]):
            for i in range(logits.shape[2]):
                for j in range(logits.shape[3]):
                    p, y = float(probs[n, c, i, j]), float(labels[n, i, j] == c)
                    inter, pred, truth = inter + p * y, pred + p, truth + y
        dices.append((2 * inter + smooth) / (pred + truth + smooth))
    return -torch.tensor(dices).mean()


def test_the_soft_dice_is_nnunets_batch_dice_of_the_foreground() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 5, 6, generator=g)
    labels = torch.randint(0, 4, (3, 5, 6), generator=g)
    labels[:, :, 0] = 0  # the background is in, but not scored
    assert float(soft_dice_loss(logits, labels)) == pytest.approx(
        float(slow_batch_dice(logits, labels)), rel=1e-5
    )
    perfect = F.one_hot(labels, 4).permute(0, 3, 1, 2).float() * 100
    assert float(soft_dice_loss(perfect, labels)) == pytest.approx(-1.0, abs=1e-4)  # minus the Dice
    background = torch.zeros(3, 4, 5, 6)
    background[:, 0] = 100.0  # no foreground in the labels and none predicted: the smoothing decides
    assert float(soft_dice_loss(background, torch.zeros_like(labels))) == pytest.approx(-1.0, abs=1e-3)


def test_deep_supervision_weights_are_nnunets() -> None:
    # A six-stage network has five decoder outputs: 1, 1/2, 1/4, 1/8 and 0 for the lowest, normalised.
    assert deep_supervision_weights(5) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15, 0.0])
    assert deep_supervision_weights(1) == [1.0]
    assert sum(deep_supervision_weights(6)) == pytest.approx(1.0) and deep_supervision_weights(6)[-1] == 0


def test_the_supervised_loss_with_its_options() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 8, 8, generator=g, requires_grad=True)
    labels = torch.randint(0, 3, (2, 8, 8), generator=g)
    ce = F.cross_entropy(logits, labels)
    assert torch.equal(supervised_loss(logits, labels), ce)  # the paper's loss, bit for bit
    both = supervised_loss(logits, labels, "dice_ce")
    assert float(both) == pytest.approx(float(ce + soft_dice_loss(logits, labels)), rel=1e-6)
    aux = [torch.randn(2, 3, 4, 4, generator=g, requires_grad=True), torch.randn(2, 3, 2, 2, generator=g)]
    small = labels[:, 1::2, 1::2]  # nearest-exact halving takes pixel floor((i + 0.5) * 2) = 2i + 1
    w = deep_supervision_weights(3)
    expected = w[0] * (ce + soft_dice_loss(logits, labels)) + w[1] * (
        F.cross_entropy(aux[0], small) + soft_dice_loss(aux[0], small)
    )
    deep = supervised_loss(logits, labels, "dice_ce", aux)
    assert float(deep) == pytest.approx(float(expected), rel=1e-6)
    deep.backward()
    assert aux[0].grad is not None and aux[0].grad.abs().sum() > 0  # the lowest output weighs nothing


def test_the_dice_sums_go_through_the_reduction() -> None:
    """Under several processes the Dice's sums are summed over them (the global batch's Dice)."""
    reduction, calls = recording_reduction()
    logits, labels = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    soft_dice_loss(logits, labels, reduction=reduction)
    assert calls == ["sum", "sum", "sum"]  # intersection, prediction, truth


def test_the_poly_schedule_is_nnunets_and_has_no_warmup() -> None:
    cfg = OptimConfig(name="sgd", lr=0.01, multiplier=1, schedule="poly", warmup_epochs=0)
    assert lr_at_epoch(0, 1000, cfg) == pytest.approx(0.01)
    assert lr_at_epoch(500, 1000, cfg) == pytest.approx(0.005359, rel=1e-3)
    assert lr_at_epoch(999, 1000, cfg) == pytest.approx(1.995e-5, rel=1e-3)
    with pytest.raises(ValueError, match="the poly schedule has no warm-up"):
        OptimConfig(schedule="poly", warmup_epochs=3)


def _strong(runs: Path, **train: object) -> dict[str, object]:
    raw = tiny_recipe(runs)
    raw["optim"] = {
        "name": "sgd",
        "lr": 0.01,
        "multiplier": 1,
        "warmup_epochs": 0,
        "schedule": "poly",
        "weight_decay": 3e-5,
        "clip_grad_norm": 12.0,
    }
    raw["train"].update(loss="dice_ce", **train)
    return raw


def _gradient_norm(parameters: list[torch.nn.Parameter]) -> float:
    return float(
        torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters if p.grad is not None]))
    )


def test_a_recipe_trains_with_sgd_dice_ce_and_clipped_gradients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = _strong(tmp_path / "runs")
    raw["optim"]["clip_grad_norm"] = 1e-3  # type: ignore[index]  # small enough to clip for sure
    trainer = Trainer(validate_recipe(raw, "test"))
    trainer.setup()
    optimizer = trainer.state.optimizer
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["momentum"] == 0.99 and optimizer.defaults["nesterov"]
    seen: list[tuple[float, float]] = []  # (norm before, norm after) each clipping
    original = torch.nn.utils.clip_grad_norm_

    def recording(parameters, max_norm, *args, **kwargs):  # type: ignore[no-untyped-def]
        before = original(parameters, max_norm, *args, **kwargs)
        seen.append((float(before), _gradient_norm(trainer.step.parameters)))
        return before

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    logs = trainer.step()
    assert logs is not None and bool(torch.isfinite(logs["total"]))
    [(before, after)] = seen
    assert before > 1e-3 and after == pytest.approx(1e-3, rel=1e-3)
    steps, _ = train_steps(_strong(tmp_path / "runs"), 2)
    ce_only, _ = train_steps(tiny_recipe(tmp_path / "runs"), 1)
    assert steps[0]["sup"] < ce_only[0]["sup"]  # CE + (-Dice) on the same first batch: below the CE


def test_a_backbone_with_auxiliary_logits_is_deep_supervised(tmp_path: Path) -> None:
    """plain_unet's auxiliary heads join the supervised loss with nnU-Net's weights; the lowest one,
    weighted 0, gets zero gradients (it is in the graph, as DDP wants every parameter)."""
    raw = _strong(tmp_path / "runs")
    raw["backbone"] = {"name": "plain_unet", "num_classes": 4, "stages": 4, "base_channels": 4}
    raw["regularizers"] = [{"name": "consistency", "weight": 10.0}]
    deep, trainer = train_steps(raw, 1)
    heads = trainer.state.model.heads
    assert len(heads) == 3 and all(h.weight.grad is not None for h in heads)
    assert heads[1].weight.grad.abs().sum() > 0 and heads[2].weight.grad.abs().sum() == 0
    raw["backbone"]["deep_supervision"] = False  # type: ignore[index]
    plain, trainer = train_steps(raw, 1)
    assert len(trainer.state.model.heads) == 1 and plain[0]["sup"] != pytest.approx(deep[0]["sup"])


def test_the_strong_preset_refuses_the_paper_presets_keys(tmp_path: Path) -> None:
    raw = tiny_recipe(tmp_path)
    raw["augment"] = {"crop": 32, "preset": "strong", "rotation": 30.0}
    with pytest.raises(RecipeError, match=r"rotation: the strong preset has nnU-Net's own"):
        validate_recipe(raw, "test")


def _strong_plain(runs: Path, regularizers: list[dict[str, object]]) -> dict[str, object]:
    raw = _strong(runs)
    raw["backbone"] = {"name": "plain_unet", "num_classes": 4, "stages": 4, "base_channels": 4}
    raw["regularizers"] = regularizers
    return raw


@pytest.mark.parametrize(
    ("backbone", "regularizers", "batch"),
    [
        ("plain_unet", [], 2),  # instance norm, nothing reads x_u: the labelled slices alone
        ("plain_unet", [{"name": "consistency", "weight": 10.0}], 2 + 3 + 3),
        ("plain_unet", [{"name": "cps", "weight": 1.0}], 2 + 3),  # cps reads f(x_u), not f(T(x_u))
        ("plain_unet", [{"name": "entropy_min", "weight": 1.0}], 2 + 3),  # f(T(x_u)) alone
        ("unet", [], 2 + 3 + 3),  # batch norm: the unlabelled slices change the labelled outputs
    ],
)
def test_the_network_runs_on_the_unlabelled_slices_only_where_they_change_the_step(
    tmp_path: Path, backbone: str, regularizers: list[dict[str, object]], batch: int
) -> None:
    raw = _strong_plain(tmp_path / "runs", regularizers)
    if backbone == "unet":
        raw["backbone"] = {"name": "unet", "num_classes": 4, "base_channels": 4}
    trainer = Trainer(validate_recipe(raw, "test"))
    trainer.setup()
    seen: list[int] = []
    trainer.state.model.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    assert trainer.step() is not None
    assert seen == [batch]  # labelled 2, unlabelled 3 and their transforms 3 (tiny_recipe)


@pytest.mark.parametrize(
    ("regularizers", "groups"),
    [
        ([], set()),
        ([{"name": "cps", "weight": 1.0}], {"unlabelled"}),
        ([{"name": "bcp", "weight": 1.0}], set()),
    ],
)
def test_a_step_on_the_groups_it_reads_trains_as_the_step_over_every_group(
    tmp_path: Path, regularizers: list[dict[str, object]], groups: set[str]
) -> None:
    """Skipping the groups no regulariser reads (all of them in a supervised step) on an
    instance-norm network changes neither the losses nor the trained weights, nor any later step's
    random draws."""
    raw = _strong_plain(tmp_path / "runs", regularizers)
    runs = []
    for skipping in (True, False):
        trainer = Trainer(validate_recipe(raw, "test"))
        trainer.setup()
        assert trainer.step.groups == groups
        trainer.step.groups = trainer.step.groups if skipping else GROUPS
        logs = [trainer.step() for _ in range(3)]
        runs.append(([float(s["total"]) for s in logs if s is not None], trainer.state.model.state_dict()))
    (short, short_weights), (whole, whole_weights) = runs
    assert short == pytest.approx(whole, rel=1e-5) and len(short) == 3
    for name, value in short_weights.items():
        torch.testing.assert_close(value, whole_weights[name], rtol=1e-4, atol=1e-6)
