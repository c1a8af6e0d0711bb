"""Multi-process training on CPU (gloo): two processes compute what one computes on the whole batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mireg.recipe import dump_toml, validate_recipe
from mireg.training import distributed
from mireg.training.loop import Trainer

from .helpers import REPO, tiny_recipe

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)

STEPS = 2


def _recipe(runs_dir: Path) -> dict[str, Any]:
    """Every built-in loss that reduces over the batch, batch norm, and a mean teacher."""
    raw = tiny_recipe(
        runs_dir,
        regularizers=[
            {"name": "consistency", "weight": 10.0},
            {"name": "mutual_information", "weight": 0.1, "subheads": 2, "clusters": 5},
            {"name": "entropy_min", "weight": 0.01},
            {"name": "midl", "weight": 0.1},
            {"name": "mean_teacher", "weight": 1.0},
        ],
    )
    raw["train"]["unlabeled_batch"] = 4  # global batches split evenly over two processes
    return raw


def _steps(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """Train STEPS steps; after each, the logged losses and every parameter's gradient."""
    trainer = Trainer(validate_recipe(raw, "test"))
    trainer.setup()
    trainer.state.model.train()
    params = {f"model.{n}": p for n, p in trainer.state.model.named_parameters()}
    for i, reg in enumerate(trainer.state.regularizers):
        params.update({f"reg{i}.{n}": p for n, p in reg.named_parameters() if p.requires_grad})
    out = []
    for _ in range(STEPS):
        logs = trainer.step()
        assert logs is not None
        out.append(
            {
                "logs": {k: float(v) for k, v in logs.items()},
                "grads": {n: p.grad.clone() for n, p in params.items() if p.grad is not None},
                "buffers": {n: b.clone() for n, b in trainer.state.eval_model.named_buffers()},
            }
        )
    return out


def _worker(rank: int, world: int, port: int, raw: dict[str, Any], out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    try:
        torch.save(_steps(raw), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _one_and_two_processes(raw: dict[str, Any], tmp_path: Path) -> Iterator[tuple[int, Any, Any]]:
    """``(step, one process's, one of two processes')`` steps of ``raw``, for both ranks."""
    torch.set_num_threads(1)
    single = _steps(raw)
    mp.spawn(_worker, args=(2, _free_port(), raw, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        multi = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for step, (one, two) in enumerate(zip(single, multi, strict=True)):
            yield step, one, two


def _assert_same_losses_and_gradients(step: int, one: Any, two: Any) -> None:
    assert one["logs"].keys() == two["logs"].keys()
    for key, value in one["logs"].items():
        assert two["logs"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (step, key)
    assert one["grads"].keys() == two["grads"].keys()
    for name, grad in one["grads"].items():
        torch.testing.assert_close(
            two["grads"][name],
            grad,
            rtol=1e-3,
            atol=1e-6,
            msg=lambda m, s=step, n=name: f"step {s}, {n}: {m}",
        )


def test_two_processes_compute_the_loss_and_gradients_of_the_whole_batch(tmp_path: Path) -> None:
    for step, one, two in _one_and_two_processes(_recipe(tmp_path / "runs"), tmp_path):
        _assert_same_losses_and_gradients(step, one, two)
        assert any(g.abs().sum() > 0 for n, g in one["grads"].items() if n.startswith("reg"))
        for name, buffer in one["buffers"].items():  # batch-norm moments of the global batch
            torch.testing.assert_close(two["buffers"][name], buffer, rtol=1e-4, atol=1e-6)


def test_dice_ce_deep_supervision_and_a_twin_with_auxiliary_heads_across_processes(tmp_path: Path) -> None:
    """nnU-Net's loss (its Dice sums over the global batch) on plain_unet's deep-supervision heads,
    with cross pseudo supervision, whose twin computes auxiliary logits it does not train."""
    raw = tiny_recipe(tmp_path / "runs", regularizers=[{"name": "cps", "weight": 1.0}])
    raw["backbone"] = {"name": "plain_unet", "num_classes": 4, "stages": 3, "base_channels": 4}
    raw["train"].update(unlabeled_batch=4, loss="dice_ce")
    for step, one, two in _one_and_two_processes(raw, tmp_path):
        _assert_same_losses_and_gradients(step, one, two)


def test_shards_split_the_global_batch_without_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    assert distributed.shard(6) == slice(0, 6)  # one process: all of it
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    parts = []
    for r in range(3):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        parts.extend(range(6)[distributed.shard(6)])
    assert parts == list(range(6))


def test_torchrun_trains_one_run_written_by_rank_zero(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.toml"
    raw = tiny_recipe(tmp_path / "runs")
    raw["train"]["unlabeled_batch"] = 4
    recipe.write_text(dump_toml(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(_free_port()),
            "-m",
            "mireg",
            "train",
            str(recipe),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["tiny"]  # one directory, not one per process
    report = json.loads((tmp_path / "runs" / "tiny" / "report.json").read_text())
    assert report["split"] == "test"
    assert done.stdout.count("test set, best checkpoint") == 1  # only rank 0 prints


def test_batches_must_split_evenly_across_processes(tmp_path: Path) -> None:
    raw = _recipe(tmp_path / "runs")
    raw["train"]["unlabeled_batch"] = 3
    port = _free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = [ctx.Process(target=_setup_error, args=(r, port, raw, str(tmp_path), queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    messages = [queue.get() for _ in procs]
    assert all("train.unlabeled_batch: 3 is not divisible by the 2 processes" in m for m in messages)


def _setup_error(rank: int, port: int, raw: dict[str, Any], out_dir: str, queue: Any) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank)
    )
    try:
        Trainer(validate_recipe(raw, "test")).setup()
        queue.put("no error")
    except Exception as exc:  # noqa: BLE001 (the message is the result)
        queue.put(str(exc))
    finally:
        dist.destroy_process_group()
