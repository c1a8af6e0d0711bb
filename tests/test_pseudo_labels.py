"""The weak-to-strong pseudo-labelling regularisers: FixMatch and UniMatch."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mireg.backbones.smp import SMPConfig
from mireg.backbones.unet import UNet, UNetConfig
from mireg.contract import (
    BackboneConfig,
    Forward,
    Regularizer,
    RegularizerConfig,
    StepContext,
    Transform,
)
from mireg.inference import Preprocessing
from mireg.network import Term, build_network
from mireg.recipe import Recipe, validate_recipe
from mireg.regularizers.fixmatch import FixMatch, FixMatchConfig, StrongAugment
from mireg.regularizers.unimatch import UniMatch, UniMatchConfig, channel_dropout, confident_dice_loss
from mireg.testing import check_regularizer, step_context
from mireg.training.data import RunData, load_data
from mireg.training.feed import open_feed
from mireg.training.runtime import Runtime
from mireg.training.state import TrainState
from mireg.training.step import TrainStep

from .helpers import tiny_recipe

OFF = StrongAugment(jitter_p=0.0, blur_p=0.0, cutmix_p=0.0)  # the strong view is the weak view
MIX_ONLY = StrongAugment(jitter_p=0.0, blur_p=0.0, cutmix_p=1.0)  # every sample gets a box


def _hand_made(
    logits_u: torch.Tensor,
    x_u: torch.Tensor,
    network: Callable[[torch.Tensor, Sequence[str]], Forward],
    seed: int = 0,
) -> StepContext:
    """A context with the given weak logits and images, the given network and a seeded generator."""
    n = len(x_u)
    no_flip = torch.zeros(n, dtype=torch.bool)
    return StepContext(
        logits_l=logits_u[:1],
        logits_u=logits_u,
        logits_tu=logits_u,
        features={},
        transform=Transform(no_flip, no_flip),
        step=0,
        epoch=0,
        x_u=x_u,
        x_l=x_u[:1],
        y_l=torch.zeros(1, *x_u.shape[-2:], dtype=torch.long),
        run_network=network,
        generator=torch.Generator().manual_seed(seed),
    )


# ------------------------------------------------------------------------------------- contract


def test_the_context_draws_from_the_runs_generator_or_one_seeded_by_the_step() -> None:
    x_u = torch.rand(2, 1, 8, 8)

    def network(x: torch.Tensor, taps: Sequence[str]) -> Forward:
        return Forward(torch.zeros(len(x), 3, 8, 8), {})

    ctx = _hand_made(torch.zeros(2, 3, 8, 8), x_u, network)
    assert ctx.rng() is ctx.generator
    ctx.generator, ctx.step = None, 7
    first, second = ctx.rng(), ctx.rng()
    assert first is not second
    assert torch.equal(torch.rand(4, generator=first), torch.rand(4, generator=second))
    assert torch.equal(
        torch.rand(4, generator=ctx.rng()), torch.rand(4, generator=torch.Generator().manual_seed(7))
    )


CONFIGS: dict[str, RegularizerConfig] = {
    "fixmatch": FixMatchConfig(name="fixmatch", weight=1.0),
    "fixmatch_low_threshold": FixMatchConfig(name="fixmatch", weight=1.0, threshold=0.4),
    "unimatch": UniMatchConfig(name="unimatch", weight=1.0),
    "unimatch_low_threshold": UniMatchConfig(name="unimatch", weight=1.0, threshold=0.4),
    "unimatch_ce": UniMatchConfig(name="unimatch", weight=1.0, threshold=0.4, loss="ce"),
}


@pytest.mark.parametrize("key", list(CONFIGS))
def test_the_plugins_obey_the_contract(key: str) -> None:
    reg = check_regularizer(CONFIGS[key])
    assert isinstance(reg, (FixMatch, UniMatch))
    assert not list(reg.parameters()) and not reg.state_dict()  # the network is not theirs


def test_unimatch_obeys_the_contract_on_an_smp_backbone() -> None:
    smp = SMPConfig(name="smp", num_classes=3, encoder="resnet18", encoder_depth=3)
    check_regularizer(UniMatchConfig(name="unimatch", weight=1.0, threshold=0.4), backbone=smp)


def test_the_configs_check_their_options() -> None:
    with pytest.raises(ValueError, match="jitter must be a range"):
        FixMatchConfig(name="fixmatch", weight=1.0, jitter=(1.5, 0.5))
    with pytest.raises(ValueError):
        UniMatchConfig(name="unimatch", weight=1.0, dropout=1.0)
    with pytest.raises(ValueError):
        UniMatchConfig(name="unimatch", weight=1.0, threshold=1.5)
    with pytest.raises(ValueError, match="Extra inputs"):
        UniMatchConfig.model_validate({"name": "unimatch", "weight": 1.0, "treshold": 0.9})
    reg = UniMatchConfig(name="unimatch", weight=1.0).build(UNet(1, 3, 4))
    assert reg.threshold == 0.95 and reg.dropout == 0.5 and reg.feature_weight == 0.5 and reg.loss == "dice"
    assert reg.augment == StrongAugment((0.5, 1.5), 0.8, 0.5, 0.5)
    assert len(reg.encoder) == 5  # Conv1 .. Conv5


# --------------------------------------------------------------------------- the confidence mask


@pytest.mark.parametrize(
    "config",
    [
        FixMatchConfig(name="fixmatch", weight=1.0, threshold=0.0),
        UniMatchConfig(name="unimatch", weight=1.0, threshold=0.0),
    ],
    ids=["fixmatch", "unimatch"],
)
def test_no_gradient_reaches_the_pseudo_label_side(config: RegularizerConfig) -> None:
    torch.manual_seed(0)
    net = UNetConfig(name="unet", num_classes=3, base_channels=4).create()
    ctx = step_context(net)
    reg = config.build(net)
    loss = reg(ctx).loss
    assert loss.item() > 0
    (weak,) = torch.autograd.grad(loss, [ctx.logits_u], retain_graph=True, allow_unused=True)
    assert weak is None or not weak.any()
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def _confidence_logits(confidences: torch.Tensor, classes: int = 3) -> torch.Tensor:
    """Logits ``(N, classes, H, W)`` whose softmax puts ``confidences`` on class ``(h + w) % classes``."""
    n, h, w = confidences.shape
    winner = (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % classes
    # softmax(a, 0, ..., 0)_0 = c  <=>  a = log(c (K - 1) / (1 - c))
    top = torch.log(confidences * (classes - 1) / (1 - confidences))
    return F.one_hot(winner, classes).permute(2, 0, 1)[None] * top[:, None]


def test_only_confident_pixels_count() -> None:
    g = torch.Generator().manual_seed(0)
    n, h, w = 2, 16, 16
    confidences = torch.full((n, h, w), 0.9)
    confidences[:, 4:10, 2:12] = 0.99
    confidences[1, 0, 0] = 0.95  # exactly at the threshold: counts
    logits_u = _confidence_logits(confidences).requires_grad_()
    labels = logits_u.argmax(dim=1)
    strong_logits = torch.randn(n, 3, h, w, generator=g, requires_grad=True)
    x_u = torch.rand(n, 1, h, w, generator=g)
    seen: list[torch.Tensor] = []

    def network(x: torch.Tensor, taps: Sequence[str]) -> Forward:
        seen.append(x)
        return Forward(strong_logits.repeat(len(x) // n, 1, 1, 1), {})

    confident = confidences >= 0.95
    per_pixel = F.cross_entropy(strong_logits, labels, reduction="none")
    expected = per_pixel[confident].mean()
    share = confident.float().mean()
    makers: list[Callable[[float], Regularizer]] = [
        lambda threshold: FixMatch(threshold, OFF),
        lambda threshold: UniMatch([], threshold, OFF, loss="ce"),  # every stream: the same CE
    ]
    for make in makers:
        out = make(0.95)(_hand_made(logits_u, x_u, network))
        assert torch.equal(seen[0][:n], x_u)  # no augmentation: the strong view is the weak view
        assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
        assert out.logs["confident"].item() == pytest.approx(share.item())
        # Above every confidence: nothing counts, the loss and the share are 0.
        out = make(0.999)(_hand_made(logits_u, x_u, network))
        assert out.loss.item() == 0.0 and out.logs["confident"].item() == 0.0
        seen.clear()


@pytest.mark.parametrize("kind", ["fixmatch", "unimatch"])
def test_the_confident_share_is_the_weak_views_not_the_mixed_ones(kind: str) -> None:
    n, h, w = 3, 16, 16
    confidences = torch.full((n, h, w), 0.5)
    confidences[0] = 0.99  # one confident sample in three; mixing moves its pixels to its neighbour
    logits_u = _confidence_logits(confidences)
    x_u = torch.rand(n, 1, h, w, generator=torch.Generator().manual_seed(0))

    def network(x: torch.Tensor, taps: Sequence[str]) -> Forward:
        return Forward(torch.zeros(len(x), 3, h, w), {})

    reg: Regularizer = FixMatch(0.95, MIX_ONLY) if kind == "fixmatch" else UniMatch([], 0.95, MIX_ONLY)
    out = reg(_hand_made(logits_u, x_u, network, seed=2))
    assert out.logs["confident"].item() == pytest.approx(1 / 3)
    labels = logits_u.argmax(dim=1)
    _, _, mixed = MIX_ONLY(x_u, labels, confidences, torch.Generator().manual_seed(2))
    assert (mixed >= 0.95).float().mean().item() != pytest.approx(1 / 3)  # so the check can fail


def test_unimatch_weighs_its_streams_as_documented() -> None:
    g = torch.Generator().manual_seed(3)
    n, h, w = 2, 8, 8
    logits_u = 3 * torch.randn(n, 3, h, w, generator=g)
    x_u = torch.rand(n, 1, h, w, generator=g)
    strong = torch.randn(2 * n, 3, h, w, generator=g)  # the two strong views, one pass
    feature = torch.randn(n, 3, h, w, generator=g)  # the perturbed pass
    passes = iter([strong, feature])

    def network(x: torch.Tensor, taps: Sequence[str]) -> Forward:
        return Forward(next(passes), {})

    reg = UniMatch([], 0.0, OFF, feature_weight=0.3, loss="ce")  # every pixel confident
    out = reg(_hand_made(logits_u, x_u, network))
    labels = logits_u.argmax(dim=1)
    first, second = F.cross_entropy(strong[:n], labels), F.cross_entropy(strong[n:], labels)
    perturbed = F.cross_entropy(feature, labels)
    expected = (1 - 0.3) / 2 * (first + second) + 0.3 * perturbed
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.logs["strong"].item() == pytest.approx(((first + second) / 2).item(), rel=1e-6)
    assert out.logs["feature"].item() == pytest.approx(perturbed.item(), rel=1e-6)


def test_the_dice_loss_counts_the_confident_pixels_only() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 8, 8, generator=g)
    labels = torch.randint(4, (3, 8, 8), generator=g)
    confident = torch.rand(3, 8, 8, generator=g) < 0.6
    # The medical code's definition, by indexing the kept pixels (util/utils.py, _dice_loss).
    p = logits.softmax(dim=1)
    terms = []
    for k in range(4):
        score, target = p[:, k][confident], (labels == k).float()[confident]
        dice = (2 * (score * target).sum() + 1e-5) / ((score * score).sum() + (target * target).sum() + 1e-5)
        terms.append(1 - dice)
    expected = torch.stack(terms).mean()
    assert confident_dice_loss(logits, labels, confident).item() == pytest.approx(expected.item(), rel=1e-6)
    nothing = confident_dice_loss(logits, labels, torch.zeros_like(confident))
    assert nothing.item() == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------------------ CutMix


def _identities(n: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images whose value names their sample, labels naming it too, confidences naming it again."""
    index = torch.arange(n).view(n, 1, 1).expand(n, h, w)
    return ((index + 1) / 8.0)[:, None].float(), index.clone(), (index + 1) / 10.0


def test_cutmix_mixes_images_labels_and_confidences_with_the_same_boxes() -> None:
    n, h, w = 5, 24, 20
    x, labels, confidence = _identities(n, h, w)
    s, y, c = MIX_ONLY(x, labels, confidence, torch.Generator().manual_seed(4))
    source = (s[:, 0] * 8).round().long() - 1  # which sample each pixel of the strong image came from
    assert torch.equal(source, y)
    assert torch.allclose(c, (y + 1) / 10.0)
    own, rolled = labels, labels.roll(1, dims=0)
    assert ((y == own) | (y == rolled)).all()
    assert ((y == rolled) & (own != rolled)).any(dim=(1, 2)).all()  # every sample got a box
    # The same generator state draws the same views.
    again = MIX_ONLY(x, labels, confidence, torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip((s, y, c), again, strict=True))


@pytest.mark.parametrize("kind", ["fixmatch", "unimatch"])
def test_the_regulariser_supervises_each_mixed_pixel_with_its_source_pseudo_label(kind: str) -> None:
    n, h, w = 3, 16, 16
    x_u, labels, _ = _identities(n, h, w)
    logits_u = 10.0 * F.one_hot(labels, n).permute(0, 3, 1, 2).float()  # sample k: class k, confident
    recorded: list[torch.Tensor] = []

    def network(x: torch.Tensor, taps: Sequence[str]) -> Forward:
        # Predicts, confidently, the sample each pixel came from.
        recorded.append(x)
        source = ((x[:, 0] * 8).round().long() - 1).clamp(0, n - 1)
        return Forward(10.0 * F.one_hot(source, n).permute(0, 3, 1, 2).float(), {})

    reg: Regularizer = FixMatch(0.95, MIX_ONLY) if kind == "fixmatch" else UniMatch([], 0.95, MIX_ONLY)
    out = reg(_hand_made(logits_u, x_u, network, seed=7))
    assert out.loss.item() < 1e-3  # every mixed pixel's pseudo-label is its source's
    strong = recorded[0][:n]
    assert not torch.equal(strong, x_u)  # boxes were pasted
    # The view was drawn from the context's generator: replaying it gives the same images.
    g = torch.Generator().manual_seed(7)
    replay, _, _ = MIX_ONLY(x_u, labels, torch.ones(n, h, w), g)
    assert torch.equal(replay, strong)
    if kind == "unimatch":  # a second, independent draw for the second strong view
        second, _, _ = MIX_ONLY(x_u, labels, torch.ones(n, h, w), g)
        assert torch.equal(second, recorded[0][n:]) and not torch.equal(second, strong)


# ---------------------------------------------------------------------------- feature perturbation


def _hook_counts(modules: Sequence[nn.Module]) -> list[int]:
    return [len(m._forward_hooks) for m in modules]


@pytest.mark.parametrize(
    "backbone",
    [
        UNetConfig(name="unet", num_classes=3, base_channels=8),
        SMPConfig(name="smp", num_classes=3, encoder="resnet18", encoder_depth=3),
    ],
    ids=["unet", "smp"],
)
def test_channel_dropout_acts_only_inside_its_block_and_only_in_training(backbone: BackboneConfig) -> None:
    torch.manual_seed(0)
    net = backbone.create()
    names = [name for name, tap in net.taps.items() if tap.kind == "encoder"]
    modules = [net.tap_module(name) for name in names]
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    net.train()
    clean = net(x)
    before = _hook_counts(modules)
    maps: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    recorders = [
        m.register_forward_hook(lambda m, i, o, name=name: maps[name].append(o))
        for name, m in zip(names, modules, strict=True)
    ]
    with channel_dropout(modules, 0.5, torch.Generator().manual_seed(1)):
        after_dropout = [
            m.register_forward_hook(lambda m, i, o, name=name: maps[name].append(o))
            for name, m in zip(names, modules, strict=True)
        ]
        perturbed = net(x)
        for handle in after_dropout:
            handle.remove()
    for handle in recorders:
        handle.remove()
    assert not torch.allclose(perturbed, clean)
    for name in names:  # every encoder map: whole channels dropped, the others scaled by 2
        seen, dropped = maps[name]
        per_channel = dropped.flatten(2)
        zero = (per_channel == 0).all(dim=2)
        assert torch.allclose(per_channel[~zero], 2 * seen.flatten(2)[~zero])
        assert 0.2 < zero.float().mean().item() < 0.8, name
    # Outside the block: no hooks left, the ordinary forward is the clean one.
    assert _hook_counts(modules) == before
    assert torch.equal(net(x), clean)
    # In eval mode the block changes nothing.
    net.eval()
    with torch.no_grad():
        reference = net(x)
        with channel_dropout(modules, 0.5, torch.Generator().manual_seed(1)):
            assert torch.equal(net(x), reference)


def test_unimatch_perturbs_the_maps_fed_to_the_decoder_not_the_deeper_encoder() -> None:
    # As in UniMatch's network: the decoder receives dropped maps, the encoder blocks run clean.
    torch.manual_seed(0)
    net = UNetConfig(name="unet", num_classes=3, base_channels=4).create().train()
    reg = UniMatchConfig(name="unimatch", weight=1.0).build(net)
    blocks = [net.Conv1, net.Conv2, net.Conv3, net.Conv4, net.Conv5]
    outputs: list[list[torch.Tensor]] = [[] for _ in blocks]
    for block, seen in zip(blocks, outputs, strict=True):
        block.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o))
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    clean = net(x)
    with channel_dropout(reg.encoder, 0.5, torch.Generator().manual_seed(1)):
        perturbed = net(x)
    for k, (before, during) in enumerate(outputs, start=1):
        assert torch.equal(before, during), f"Conv{k} saw a perturbed input"
    assert not torch.allclose(perturbed, clean)


def test_the_perturbed_pass_drops_channels_in_a_compiled_network_too() -> None:
    # A network compiled in place reuses its traced graph, which has no dropout hooks in it.
    torch.manual_seed(0)
    net = UNetConfig(name="unet", num_classes=3, base_channels=4).create().train()
    reg = UniMatchConfig(name="unimatch", weight=1.0).build(net)
    ctx = step_context(net)
    expected = reg.perturbed(ctx, torch.Generator().manual_seed(1))
    net.compile(backend="eager")
    with torch.no_grad():
        clean = net(ctx.x_u)  # traced here, without the hooks
        perturbed = reg.perturbed(ctx, torch.Generator().manual_seed(1))
    assert not torch.allclose(perturbed, clean)
    torch.testing.assert_close(perturbed, expected)


def test_unimatch_perturbs_its_own_weak_pass_only() -> None:
    torch.manual_seed(0)
    net = UNetConfig(name="unet", num_classes=3, base_channels=4).create()
    reg = UniMatchConfig(name="unimatch", weight=1.0, threshold=0.0).build(net)
    ctx = step_context(net)
    with torch.no_grad():
        plain = net(ctx.x_u)  # train mode: batch statistics, the same for the same batch
    base = _hook_counts(reg.encoder)
    calls: list[tuple[int, list[int]]] = []
    run = ctx.run_network

    def watched(x: torch.Tensor, taps: Sequence[str]) -> Forward:
        calls.append((len(x), _hook_counts(reg.encoder)))
        return run(x, taps)

    ctx.run_network = watched
    out = reg(ctx)
    n = len(ctx.x_u)
    # First the two strong views, unperturbed; then the weak view with one dropout hook per tap.
    assert calls == [(2 * n, base), (n, [count + 1 for count in base])]
    assert set(out.logs) == {"strong", "feature", "confident"}
    assert _hook_counts(reg.encoder) == base
    with torch.no_grad():
        assert torch.equal(net(ctx.x_u), plain)  # the ordinary forward is not perturbed afterwards
    # Without the perturbed stream there is no second pass.
    calls.clear()
    UniMatchConfig(name="unimatch", weight=1.0, feature_weight=0.0).build(net)(ctx)
    assert [size for size, _ in calls] == [2 * n]


# -------------------------------------------------------------------------------- real training


def _state(recipe: Recipe, data: RunData, runtime: Runtime, config: RegularizerConfig) -> TrainState:
    torch.manual_seed(recipe.seed)
    model, terms = build_network(recipe)
    terms.append(Term(config.name, config.weight, config.rampup_epochs, config.build(model)))
    info = Preprocessing(data.store.spacing, data.store.canvas, data.store.classes)
    return TrainState.create(recipe, info, model, terms, runtime.device)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Recipe, RunData, Runtime]:
    runs = tmp_path_factory.mktemp("pseudo") / "runs"
    recipe = validate_recipe(tiny_recipe(runs, regularizers=[]), "tiny")
    runtime = Runtime.start("cpu")
    return recipe, load_data(recipe), runtime


TRAINED = {
    "fixmatch": FixMatchConfig(name="fixmatch", weight=1.0, threshold=0.5),
    "unimatch": UniMatchConfig(name="unimatch", weight=1.0, threshold=0.5),
}


def _logs(step: TrainStep) -> dict[str, float]:
    logs = step()
    assert logs is not None
    return {key: float(value) for key, value in logs.items()}


@pytest.mark.parametrize("kind", list(TRAINED))
def test_training_steps_give_finite_losses_and_move_the_network(
    kind: str, tiny: tuple[Recipe, RunData, Runtime]
) -> None:
    recipe, data, runtime = tiny
    state = _state(recipe, data, runtime, TRAINED[kind])
    before = [p.detach().clone() for p in state.model.parameters()]
    step = TrainStep(state, open_feed(recipe, data, runtime.device), runtime, torch.contiguous_format)
    history = [_logs(step) for _ in range(3)]
    for logs in history:
        assert all(math.isfinite(v) for v in logs.values())
        assert 0.0 <= logs[f"{kind}/confident"] <= 1.0
    assert any(logs[kind] > 0 for logs in history)
    assert all(not torch.equal(a, b) for a, b in zip(before, state.model.parameters(), strict=True))


@pytest.mark.parametrize("kind", list(TRAINED))
def test_a_resumed_run_takes_the_same_steps(kind: str, tiny: tuple[Recipe, RunData, Runtime]) -> None:
    recipe, data, runtime = tiny
    config = TRAINED[kind]
    state = _state(recipe, data, runtime, config)
    feed = open_feed(recipe, data, runtime.device)
    uninterrupted = TrainStep(state, feed, runtime, torch.contiguous_format)
    expected = [_logs(uninterrupted) for _ in range(3)][-1]
    first = _state(recipe, data, runtime, config)
    step = TrainStep(first, open_feed(recipe, data, runtime.device), runtime, torch.contiguous_format)
    for _ in range(2):
        _logs(step)
    saved: dict[str, Any] = first.state_dict()
    resumed = _state(recipe, data, runtime, config)
    resumed.load_state_dict(saved)
    torch.rand(1000)  # the global generator moves: the regularisers must not draw from it
    got = _logs(TrainStep(resumed, open_feed(recipe, data, runtime.device), runtime, torch.contiguous_format))
    assert got == expected
