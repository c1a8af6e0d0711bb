"""What only a GPU can show: a run trains the CPU's steps on CUDA, bf16 autocast, NCCL, a study that
places its runs on the GPUs, and the command line end to end on CUDA.

Every test here is marked ``cuda`` and skips itself without a GPU; ``pytest -m cuda`` runs them (and
the CUDA variants of the tests parametrized over ``helpers.DEVICES``: the contract of every plugin,
channels-last, ``torch.compile``, the streamed feed with pinned memory).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from mireg.data.phantom import generate_patient
from mireg.evaluation.evaluate import segment
from mireg.recipe import dump_toml, validate_recipe
from mireg.training.loop import Trainer

from .conftest import CliResult
from .helpers import tiny_recipe, train_steps
from .test_supervised import _strong_plain

pytestmark = pytest.mark.cuda

#: Each built-in regulariser (every one the registry lists), in a tiny recipe.
METHODS: dict[str, list[dict[str, Any]]] = {
    "udaiic": [
        {"name": "consistency", "weight": 10.0},
        {"name": "mutual_information", "weight": 0.1, "subheads": 2, "clusters": 5},
    ],
    "entmin+midl": [{"name": "entropy_min", "weight": 0.01}, {"name": "midl", "weight": 0.1}],
    "mean_teacher": [{"name": "mean_teacher", "weight": 1.0}],
    "cps": [{"name": "cps", "weight": 1.0}],
    "bcp": [{"name": "bcp", "weight": 1.0}],
    "fixmatch": [{"name": "fixmatch", "weight": 1.0}],
    "unimatch": [{"name": "unimatch", "weight": 1.0}],
}


def _steps(raw: dict[str, Any], device: str, steps: int = 3, **train: Any) -> list[dict[str, float]]:
    """The logged values of the first ``steps`` training steps of ``raw`` on ``device``."""
    return train_steps(raw, steps, device=device, **train)[0]


@pytest.mark.parametrize("method", METHODS)
def test_a_run_trains_the_cpu_steps_on_the_gpu(tmp_path: Path, method: str) -> None:
    """Same seed, same draws (the run's generator lives on the CPU), IEEE float32 on both devices: the
    losses of every step agree up to float32 rounding, for every regulariser."""
    raw = tiny_recipe(tmp_path / "runs", regularizers=METHODS[method])
    cpu, gpu = _steps(raw, "cpu"), _steps(raw, "cuda")
    for step, (one, two) in enumerate(zip(cpu, gpu, strict=True)):
        assert one.keys() == two.keys()
        for key, value in one.items():
            assert two[key] == pytest.approx(value, rel=1e-3, abs=1e-5), (step, key)


@pytest.mark.parametrize("method", ["partial_strong", "cps_strong"])
def test_the_strong_recipe_trains_the_cpu_steps_on_the_gpu(tmp_path: Path, method: str) -> None:
    """nnU-Net's ingredients (plain_unet with deep supervision, its augmentation, Dice + CE, SGD),
    alone (the network on the labelled slices only) and under cps: the same losses on both devices."""
    raw = _strong_plain(tmp_path / "runs", [{"name": "cps", "weight": 1.0}] if method == "cps_strong" else [])
    cpu, gpu = _steps(raw, "cpu"), _steps(raw, "cuda")
    for step, (one, two) in enumerate(zip(cpu, gpu, strict=True)):
        assert one.keys() == two.keys()
        for key, value in one.items():
            assert two[key] == pytest.approx(value, rel=1e-3, abs=1e-5), (step, key)


def test_bf16_autocast_runs_the_network_in_bf16_and_the_losses_in_float32(tmp_path: Path) -> None:
    raw = tiny_recipe(tmp_path / "runs")
    raw["train"].update(device="cuda", precision="bf16")
    trainer = Trainer(validate_recipe(raw, "test"))
    trainer.setup()
    seen: dict[str, torch.dtype] = {}
    conv = next(m for m in trainer.state.model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: seen.update(conv=o.dtype))
    logs = trainer.step()
    assert logs is not None and seen["conv"] == torch.bfloat16
    assert all(v.dtype == torch.float32 and bool(torch.isfinite(v)) for v in logs.values())
    fp32 = _steps(tiny_recipe(tmp_path / "runs"), "cuda", steps=1)[0]
    bf16 = _steps(tiny_recipe(tmp_path / "runs"), "cuda", steps=1, precision="bf16")[0]
    for key in ("sup", "consistency", "mutual_information"):
        assert bf16[key] == pytest.approx(fp32[key], rel=0.05, abs=1e-3), key
    # Inference in bf16: float32 probabilities.
    images = torch.rand(5, 48, 48, device="cuda")
    probabilities = segment(trainer.state.model.eval(), images, 2, "bf16")
    assert probabilities.dtype == torch.float32 and probabilities.shape == (5, 4, 48, 48)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(5, 48, 48, device="cuda"))


def test_fp32_keeps_tf32_off_inside_a_step_and_restores_the_callers_setting(tmp_path: Path) -> None:
    from mireg.precision import arithmetic

    seen = []
    raw = tiny_recipe(tmp_path / "runs")
    raw["train"].update(device="cuda")
    trainer = Trainer(validate_recipe(raw, "test"))
    trainer.setup()
    conv = next(m for m in trainer.state.model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: seen.append(torch.backends.cudnn.allow_tf32))
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        trainer.step()
        with arithmetic("fp32", torch.device("cuda")):
            assert not torch.backends.cuda.matmul.allow_tf32
        assert seen and not any(seen)
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_one_process_joins_an_nccl_group_and_trains_through_ddp(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_nn
    from torch.nn.parallel import DistributedDataParallel

    from mireg.backbones.unet import UNet
    from mireg.training import distributed

    if not dist.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    for key, value in dict(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="1", RANK="0", LOCAL_RANK="0"
    ).items():
        monkeypatch.setenv(key, value)
    device = distributed.init_from_environment(torch.device("cuda"))
    try:
        assert device == torch.device("cuda", 0) and dist.get_backend() == "nccl"
        x = torch.arange(4.0, device=device, requires_grad=True)
        total = dist_nn.all_reduce(x * 2)  # the differentiable all-reduce the losses use
        total.sum().backward()
        assert torch.equal(total.detach(), 2 * x.detach()) and torch.equal(x.grad, torch.full_like(x, 2.0))
        torch.manual_seed(0)
        net = UNet(1, 3, 4).to(device)
        ddp = DistributedDataParallel(net, device_ids=[device])
        ddp(torch.rand(2, 1, 32, 32, device=device)).square().mean().backward()
        assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in net.parameters())
    finally:
        distributed.leave()
    assert not dist.is_initialized()


@pytest.mark.slow
def test_a_quick_study_trains_its_runs_on_the_gpu(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    for name, regularizers, ratio in (
        ("partial", [], 0.5),
        ("udaiic", METHODS["udaiic"], 0.5),
        ("full", [], 1.0),
    ):
        raw = tiny_recipe(tmp_path / "unused", name=name, regularizers=regularizers)
        raw["data"]["labeled_ratio"] = ratio
        raw["train"].update(epochs=1, iterations_per_epoch=2, log_every=1)
        (tmp_path / f"{name}.toml").write_text(dump_toml(raw))
    study = tmp_path / "study.toml"
    study.write_text(
        f'runs_dir = "{tmp_path / "out"}"\nname = "s"\nseeds = [1]\nlabeled_ratios = [0.5]\n'
        '[methods.partial]\nrecipe = "partial.toml"\n[methods.udaiic]\nrecipe = "udaiic.toml"\n'
        '[methods.full]\nrecipe = "full.toml"\n'
    )
    result = cli("study", study, "--quick", "--device", "cuda")
    assert result.code == 0, result
    assert f"{torch.cuda.device_count()} at a time" in result.out  # one run per GPU
    out = tmp_path / "out" / "s-quick"
    logs = sorted((out / "logs").glob("*.log"))
    assert len(logs) == 3
    for log in logs:
        assert " on cuda, data resident" in " ".join(log.read_text().split()), log  # rich wraps lines
    rows = json.loads((out / "study.json").read_text())["rows"]
    assert {row["method"] for row in rows} == {"partial", "udaiic", "full"}
    assert all(row["dice"] is not None for row in rows)


@pytest.mark.slow
def test_train_eval_and_predict_on_the_gpu(
    cli: Callable[..., CliResult], write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = write_recipe()
    result = cli("train", recipe, "--set", 'train.device="cuda"')
    assert result.code == 0, result
    assert " on cuda, data resident" in result.out
    run = tmp_path / "runs" / "tiny"
    before = json.loads((run / "report.json").read_text())["summary"]
    result = cli("eval", run)  # reads the CUDA checkpoint, evaluates on the GPU again
    assert result.code == 0, result
    assert json.loads((run / "report.json").read_text())["summary"] == before
    patient = generate_patient(40, seed=9)
    image, _ = patient.frames[patient.ed_frame]
    src = tmp_path / "scans"
    src.mkdir()
    nib.save(nib.Nifti1Image(image, np.diag([1.5, 1.5, 7.0, 1.0])), src / "scan.nii.gz")
    labels = {}
    for device in ("cuda", "cpu"):  # a checkpoint written on the GPU predicts on either
        result = cli("predict", run, src, "-o", tmp_path / device, "--device", device)
        assert result.code == 0, result
        labels[device] = np.asarray(nib.load(tmp_path / device / "scan.nii.gz").dataobj)
    assert labels["cuda"].shape == image.shape
    # IEEE float32 on both: the same labels, but where two classes' scores are within rounding.
    assert (labels["cuda"] == labels["cpu"]).mean() > 0.999
