"""Cross pseudo supervision: the loss, detached hard labels, the second network's training,
checkpointing and exact resume, and the evaluated network."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mireg.backbones.plain_unet import PlainUNetConfig
from mireg.backbones.unet import UNetConfig
from mireg.contract import Transform
from mireg.inference import Preprocessing
from mireg.network import Term, build_network
from mireg.recipe import validate_recipe
from mireg.regularizers.cps import CPSConfig, CrossPseudoSupervision, MeanOfTwo
from mireg.testing import check_regularizer, step_context
from mireg.training.data import load_data
from mireg.training.feed import open_feed
from mireg.training.runtime import Runtime
from mireg.training.state import TrainState
from mireg.training.step import TappedNetwork, TrainStep
from mireg.training.step import step_context as build_step_context
from mireg.training.supervised import supervised_loss

from .helpers import tiny_recipe


@pytest.mark.parametrize("evaluate", ["first", "mean"])
def test_cps_obeys_the_contract(evaluate: str) -> None:
    check_regularizer(CPSConfig(name="cps", weight=1.5, evaluate=evaluate))  # type: ignore[arg-type]


def test_each_network_learns_from_the_others_detached_hard_labels() -> None:
    torch.manual_seed(0)
    net = UNetConfig(name="unet", num_classes=3, base_channels=4).create()
    cps = CPSConfig(name="cps", weight=1.0).build(net)
    ctx = step_context(net, n_labeled=2, n_unlabeled=3, size=32)
    out = cps(ctx)
    x = torch.cat([ctx.x_l, ctx.x_u])
    f, g = torch.cat([ctx.logits_l, ctx.logits_u]), cps.other(x).float()
    expected = F.cross_entropy(f, g.argmax(1)) + F.cross_entropy(g, f.argmax(1))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    agreement = (f.argmax(1) == g.argmax(1)).float().mean()
    assert 0 < agreement < 1  # two random networks: the logged share is not trivially 0 or 1
    assert out.logs["agreement"].item() == pytest.approx(agreement.item())
    assert out.unweighted is not None
    assert out.unweighted.item() == pytest.approx(F.cross_entropy(g[:2], ctx.y_l).item(), rel=1e-6)
    # The second network's gradient comes only from the terms where it predicts: its loss against
    # f's hard labels and its own supervised loss, never through f's pseudo-label side.
    (out.loss + out.unweighted).backward()
    mine = {n: p.grad.clone() for n, p in cps.other.named_parameters() if p.grad is not None}
    cps.other.zero_grad()
    g = cps.other(x).float()
    (F.cross_entropy(g, f.argmax(1).detach()) + F.cross_entropy(g[:2], ctx.y_l)).backward()
    for name, p in cps.other.named_parameters():
        assert p.grad is not None
        torch.testing.assert_close(mine[name], p.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("loss", ["ce", "dice_ce"])
def test_the_second_network_learns_from_the_labels_with_the_recipes_supervised_loss(loss: str) -> None:
    # On the strong recipe (Dice + cross-entropy, a deep-supervised network) g gets the loss f gets.
    torch.manual_seed(0)
    net = PlainUNetConfig(name="plain_unet", num_classes=3, stages=3, base_channels=4).create()
    cps = CPSConfig(name="cps", weight=1.0).build(net)
    g = torch.Generator().manual_seed(0)
    x_l, x_u = torch.rand(2, 1, 32, 32, generator=g), torch.rand(3, 1, 32, 32, generator=g)
    y_l = torch.randint(3, (2, 32, 32), generator=g)
    transform = Transform.draw(3, g, torch.device("cpu"))
    ctx = build_step_context(TappedNetwork(net, ()), x_l, y_l, x_u, transform, 0, 0, loss=loss)  # type: ignore[arg-type]
    out = cps(ctx)
    theirs = cps.other(torch.cat([x_l, x_u])).float()
    auxiliary = [a[:2] for a in cps.other.auxiliary_logits()]
    assert len(auxiliary) == 1  # three stages: one auxiliary head besides the main one
    expected = supervised_loss(theirs[:2], y_l, loss, auxiliary)  # type: ignore[arg-type]
    assert out.unweighted is not None
    assert out.unweighted.item() == pytest.approx(expected.item(), rel=1e-6)
    if loss == "dice_ce":  # not the plain cross-entropy of the full-resolution logits
        assert out.unweighted.item() != pytest.approx(F.cross_entropy(theirs[:2], y_l).item(), rel=1e-3)


def _state(tmp_path: Path, evaluate: str = "first") -> tuple[TrainState, TrainStep]:
    recipe = validate_recipe(tiny_recipe(tmp_path / "runs", regularizers=[]), "tiny")
    runtime = Runtime.start("cpu")
    torch.manual_seed(recipe.seed)
    data = load_data(recipe)
    model, terms = build_network(recipe)
    terms.append(Term("cps", 1.5, 0.0, CrossPseudoSupervision(model, evaluate)))  # type: ignore[arg-type]
    info = Preprocessing(data.store.spacing, data.store.canvas, data.store.classes)
    state = TrainState.create(recipe, info, model, terms, runtime.device)
    return state, TrainStep(state, open_feed(recipe, data, runtime.device), runtime, torch.contiguous_format)


def test_the_second_network_is_optimised_checkpointed_and_resumes_exactly(tmp_path: Path) -> None:
    state, step = _state(tmp_path)
    other = state.terms[-1].regularizer.other  # type: ignore[union-attr]
    before = [p.detach().clone() for p in other.parameters()]
    for _ in range(2):
        logs = step()
        assert logs is not None and torch.isfinite(logs["total"]) and "cps/unweighted" in logs
    assert any(not torch.equal(a, b) for a, b in zip(before, other.parameters(), strict=True))
    saved = copy.deepcopy(state.state_dict())  # as saved to disk: not the live tensors
    assert any(k.startswith("other.") for k in saved["regularizers"][-1])
    reference = step()
    assert reference is not None
    resumed_state, resumed_step = _state(tmp_path)
    resumed_state.load_state_dict(saved)
    logs = resumed_step()
    assert logs is not None and logs.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(logs[key], value), key


def test_the_mean_of_both_networks_can_be_the_evaluated_model(tmp_path: Path) -> None:
    state, _ = _state(tmp_path, evaluate="mean")
    evaluated = state.eval_model
    assert isinstance(evaluated, MeanOfTwo)
    saved = state.state_dict()
    assert {k.split(".")[0] for k in saved["model"]} == {"first", "second"} and "student" in saved
    x = torch.rand(2, 1, 32, 32)
    evaluated.eval()
    with torch.no_grad():
        p = (state.model(x).softmax(1) + state.terms[-1].regularizer.other(x).softmax(1)) / 2  # type: ignore[operator]
        torch.testing.assert_close(evaluated(x).exp(), p, rtol=1e-5, atol=1e-6)
