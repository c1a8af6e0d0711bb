from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from mireg.backbones.unet import UNet
from mireg.contract import RegularizerConfig, StepContext
from mireg.losses import consistency_loss, global_mi_loss, local_mi_loss
from mireg.regularizers.consistency import ConsistencyConfig
from mireg.regularizers.entropy import EntropyMinConfig
from mireg.regularizers.heads import ClusterHead
from mireg.regularizers.mean_teacher import MeanTeacherConfig
from mireg.regularizers.midl import OutputMIConfig
from mireg.regularizers.mutual_information import MutualInformationConfig
from mireg.testing import step_context

from .test_losses import recording_reduction


def _context(net: UNet, taps: tuple[str, ...]) -> StepContext:
    return step_context(net, taps)


def test_consistency_compares_predictions_on_t_x_with_t_of_predictions() -> None:
    net = UNet(1, 4, 4)
    ctx = _context(net, ())
    for kind in ("mse", "kl"):
        reg = ConsistencyConfig(name="consistency", weight=1.0, kind=kind).build(net)
        expected = consistency_loss(ctx.logits_tu.softmax(1), ctx.transform(ctx.logits_u.softmax(1)), kind)
        assert reg(ctx).loss.item() == pytest.approx(expected.item())


def test_mutual_information_follows_method_md() -> None:
    torch.manual_seed(0)
    net = UNet(1, 4, 4)
    cfg = MutualInformationConfig(name="mutual_information", weight=0.1, subheads=2, clusters=5)
    reg = cfg.build(net)
    ctx = _context(net, reg.taps)
    out = reg(ctx)
    # Recompute by hand from the heads: global on Conv5, local with r=1 and r=3 on the decoder.
    heads = reg.heads
    _, f_u, f_tu = ctx.features["Conv5"]
    z, zt = heads["Conv5"](f_u), heads["Conv5"](f_tu)
    conv5 = sum(global_mi_loss(z[:, s], zt[:, s]) for s in range(2)) / 2
    local = {}
    for name, r in (("Up_conv3", 1), ("Up_conv2", 3)):
        _, f_u, f_tu = ctx.features[name]
        z = heads[name](ctx.transform(f_u))  # head(T(F(x_u)))
        zt = heads[name](f_tu)  # head(F(T(x_u)))
        local[name] = sum(local_mi_loss(z[:, s], zt[:, s], r) for s in range(2)) / 2
    expected = (1.0 * conv5 + 0.5 * local["Up_conv3"] + 0.5 * local["Up_conv2"]) / 2.0
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(out.logs) == {"Conv5", "Up_conv3", "Up_conv2"}


def test_mi_gradients_reach_the_heads_and_the_network() -> None:
    net = UNet(1, 4, 4)
    reg = MutualInformationConfig(name="mutual_information", weight=0.1, subheads=2, clusters=5).build(net)
    reg(_context(net, reg.taps)).loss.backward()
    for module in (reg.heads["Conv5"], reg.heads["Up_conv2"], net.Conv1, net.Up_conv2):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_mi_config_checks_layers_against_the_backbone() -> None:
    net = UNet(1, 4, 4)
    with pytest.raises(ValueError, match=r"not taps of the backbone"):
        MutualInformationConfig(
            name="mutual_information", weight=1, layers=["Conv9"], importance=[1.0], radius=[]
        ).build(net)
    with pytest.raises(ValueError, match="one radius per decoder layer"):
        MutualInformationConfig(name="mutual_information", weight=1, radius=[1]).build(net)
    with pytest.raises(ValueError, match="importance has 3 entries for 2 layers"):
        MutualInformationConfig(name="mutual_information", weight=1, layers=["Conv5", "Up_conv2"])


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_cluster_heads_give_independent_distributions(kind: str) -> None:
    local = ClusterHead(8, clusters=6, subheads=3, kind=kind)
    pooled = ClusterHead(8, clusters=6, subheads=3, kind=kind, pooled=True)
    x = torch.rand(2, 8, 5, 7)
    z, g = local(x), pooled(x)
    assert z.shape == (2, 3, 6, 5, 7) and g.shape == (2, 3, 6)
    torch.testing.assert_close(z.sum(2), torch.ones(2, 3, 5, 7))
    torch.testing.assert_close(g.sum(2), torch.ones(2, 3))


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (ConsistencyConfig(name="consistency", weight=1.0), ["mean"]),
        (EntropyMinConfig(name="entropy_min", weight=1.0), ["mean"]),
        (MeanTeacherConfig(name="mean_teacher", weight=1.0), ["mean"]),
        (OutputMIConfig(name="midl", weight=1.0), ["sum"]),
        # Two global sub-heads, one joint per sub-head; the two local layers, all sub-heads at once.
        (MutualInformationConfig(name="mutual_information", weight=1.0, subheads=2, clusters=5), ["sum"] * 4),
    ],
)
def test_built_in_regularizers_reduce_over_the_batch_with_the_contexts_reduction(
    config: RegularizerConfig, expected: list[str]
) -> None:
    torch.manual_seed(0)
    net = UNet(1, 3, 4)
    reg = config.build(net)
    ctx = _context(net, reg.taps)
    reduction, calls = recording_reduction()
    loss = reg(dataclasses.replace(ctx, reduction=reduction)).loss
    assert calls == expected
    assert torch.equal(loss, reg(ctx).loss)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fixmatch", "unimatch", "cps", "bcp"])
def test_each_current_method_trains_together_with_mutual_information(
    method: str,
    cli,
    write_recipe,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    regs = [
        {"name": method, "weight": 1.0},
        {"name": "mutual_information", "weight": 0.1, "subheads": 2, "clusters": 5},
    ]
    result = cli("train", write_recipe(regularizers=regs))
    assert result.code == 0, result
    run = tmp_path / "runs" / "tiny"
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert f"loss/{method}" in header and "loss/mutual_information" in header
    assert (run / "report.json").is_file()
