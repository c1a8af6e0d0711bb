"""Baseline regularisers: entropy minimisation, mean teacher, MIDL'20 (output-space local MI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mireg.backbones.unet import UNet
from mireg.losses import consistency_loss, local_mi_loss
from mireg.regularizers.entropy import EntropyMinConfig, mean_entropy
from mireg.regularizers.mean_teacher import MeanTeacherConfig
from mireg.regularizers.midl import OutputMIConfig
from mireg.training.checkpoint import load_checkpoint

from .test_regularizers import _context


def test_entropy_is_the_mean_pixel_entropy() -> None:
    net = UNet(1, 3, 4)
    ctx = _context(net, ())
    p = ctx.logits_tu.softmax(1)
    expected = -(p * p.log()).sum(1).mean()
    reg = EntropyMinConfig(name="entropy_min", weight=1e-4).build(net)
    assert reg(ctx).loss.item() == pytest.approx(expected.item(), rel=1e-5)
    confident = torch.zeros(2, 3, 4, 4)
    confident[:, 0] = 50.0
    assert mean_entropy(confident).item() == pytest.approx(0.0, abs=1e-12)


def test_midl_is_local_mi_on_the_outputs() -> None:
    net = UNet(1, 3, 4)
    ctx = _context(net, ())
    reg = OutputMIConfig(name="midl", weight=0.1, radius=2).build(net)
    expected = local_mi_loss(ctx.transform(ctx.logits_u.softmax(1)), ctx.logits_tu.softmax(1), 2)
    assert reg(ctx).loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_mean_teacher_ema_keeps_its_own_batch_norm_statistics() -> None:
    torch.manual_seed(0)
    student = UNet(1, 3, 4)
    reg = MeanTeacherConfig(name="mean_teacher", weight=10.0).build(student)
    teacher = reg.teacher
    assert all(not p.requires_grad for p in teacher.parameters())
    assert reg.evaluation_model(student) is teacher
    ctx = _context(student, ())
    out = reg(ctx)
    assert teacher.training  # the teacher runs in train mode
    with torch.no_grad():
        target = ctx.transform(teacher(ctx.x_u).softmax(1))
    # The teacher's BN running statistics moved with its own forward passes, not the student's.
    assert not torch.equal(teacher.Conv1[1].running_mean, student.Conv1[1].running_mean)
    assert out.loss.item() == pytest.approx(consistency_loss(ctx.logits_tu.softmax(1), target).item())
    teacher_buffers = {k: v.clone() for k, v in teacher.named_buffers()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in teacher.parameters()]
    reg.after_step(student, step=0)  # a = min(1 - 1/1, 0.999) = 0: the teacher becomes the student
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(t, s)
    reg.after_step(student, step=9)  # a = 0.9
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * s + 0.1 * s)
    reg.after_step(student, step=10**6)  # a capped at 0.999
    with torch.no_grad():
        for p in student.parameters():
            p.zero_()
    reg.after_step(student, step=10**6)
    for t, b in zip(teacher.parameters(), before, strict=True):
        torch.testing.assert_close(t, 0.999 * (b + 1.0), rtol=1e-5, atol=1e-6)
    for k, v in teacher.named_buffers():
        assert torch.equal(v, teacher_buffers[k]), k  # buffers are never averaged


@pytest.mark.slow
def test_mean_teacher_composes_with_mutual_information_and_is_what_gets_evaluated(
    cli,
    write_recipe,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    regs = [
        {"name": "mean_teacher", "weight": 10.0},
        {"name": "mutual_information", "weight": 0.1, "subheads": 2, "clusters": 5},
        {"name": "entropy_min", "weight": 1e-4},
        {"name": "midl", "weight": 0.1},
    ]
    result = cli("train", write_recipe(regularizers=regs))
    assert result.code == 0, result
    run = tmp_path / "runs" / "tiny"
    state = load_checkpoint(run / "last.pt")
    teacher = {k.removeprefix("teacher."): v for k, v in state["regularizers"][0].items()}
    for key, value in state["model"].items():
        torch.testing.assert_close(value, teacher[key])  # "the model" is the teacher
    assert "student" in state
    row = (run / "metrics.csv").read_text().splitlines()[0]
    for name in ("loss/mean_teacher", "loss/mutual_information", "loss/entropy_min", "loss/midl"):
        assert name in row
    assert json.loads((run / "report.json").read_text())["checkpoint"] == "best.pt"
