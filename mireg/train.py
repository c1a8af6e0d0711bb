"""The training loop (design.md, "The training step").

Per step: labelled and unlabelled slices are drawn from tensors already on the device and augmented
there in one batched warp; ``T`` is drawn once; one forward pass runs over ``[x_l, x_u, T(x_u)]``
with the feature taps the regularisers asked for (hooks registered once); each regulariser turns the
step context into a loss, and the loop adds ``L_sup + sum_i w_i L_i``. Logged values stay on the
device and are fetched once every ``log_every`` steps, so the step has no host syncs.

Per epoch: learning-rate schedule, validation (3D DSC on whole validation volumes), the ``last``
checkpoint and, when validation improves, ``best``; a row of ``metrics.csv``. At the end the best
checkpoint is evaluated on the test split into ``report.json``.

Under ``torchrun`` (``mireg.distributed``) every process draws the same global batch and trains on
its shard through DDP; the losses are those of the global batch; only rank 0 writes the run.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import platform
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import mireg
from mireg import distributed, registry
from mireg.augment import augment_batch
from mireg.checkpoint import load_checkpoint, save_checkpoint
from mireg.contract import Backbone, Regularizer, StepContext, Transform
from mireg.data.splits import Split, make_split
from mireg.data.store import VolumeStore
from mireg.errors import RecipeError, RunError, RunInterrupted
from mireg.evaluate import evaluate_volumes, validation_dice
from mireg.files import atomic_write_text
from mireg.plots import plot_curves
from mireg.progress import Observer, Progress
from mireg.recipe import Recipe, dump_toml
from mireg.report import build_report, write_reports
from mireg.schedule import lr_at_epoch, rampup

__all__ = ["Observer", "Term", "Trainer", "build_model", "resolve_device"]


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unavailable CUDA device is an error naming ``key``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"{key}: {name!r} requested but CUDA is not available",
                          "use device = \"auto\" or \"cpu\"")
    return device


def _memory_format(name: str, device: torch.device) -> torch.memory_format:
    if name == "channels_last" or (name == "auto" and device.type == "cuda"):
        return torch.channels_last
    return torch.contiguous_format


class Term(NamedTuple):
    """One regulariser of the total loss: its log name, weight, weight ramp-up and module."""

    name: str
    weight: float
    rampup_epochs: float
    regularizer: Regularizer


def build_model(recipe: Recipe) -> tuple[Backbone, list[Term]]:
    """The backbone and the named, weighted regularisers of ``recipe`` (on the CPU)."""
    try:
        backbone = recipe.backbone.build()
    except ValueError as exc:
        raise RecipeError(f"backbone ({recipe.backbone.name}): {exc}") from None
    regs: list[Term] = []
    for i, cfg in enumerate(recipe.regularizers):
        try:
            reg = cfg.build(backbone)
        except ValueError as exc:
            raise RecipeError(f"regularizers[{i}] ({cfg.name}): {exc}") from None
        same = sum(c.name == cfg.name for c in recipe.regularizers[:i])
        regs.append(Term(cfg.name if same == 0 else f"{cfg.name}_{same + 1}", cfg.weight,
                         cfg.rampup_epochs, reg))
    return backbone, regs


def _plugin_versions(recipe: Recipe) -> dict[str, Any]:
    used = [("dataset", recipe.data.name), ("backbone", recipe.backbone.name)]
    used += [("regularizer", r.name) for r in recipe.regularizers]
    plugins = {}
    for kind, name in used:
        info = registry.discover(kind)[name][0]
        plugins[f"{kind}:{name}"] = {"distribution": info.distribution, "version": info.version}
    return {
        "mireg": mireg.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "plugins": plugins,
    }


class _Replicated(nn.Module):
    """What DDP keeps in sync: the backbone, run through ``forward``, and the regularisers, whose
    parameters (cluster heads) are used outside it but get their gradients averaged all the same."""

    def __init__(self, model: nn.Module, regularizers: list[Regularizer]) -> None:
        super().__init__()
        self.model = model
        self.regularizers = nn.ModuleList(regularizers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _split3(x: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a batch into its labelled, unlabelled and transformed-unlabelled parts."""
    a, b, c = x.split(sizes)
    return a, b, c


@dataclass
class _Running:
    """Sums of logged values over an epoch, kept on the device."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    count: int = 0
    skipped: int = 0  # steps with a non-finite loss, skipped (train.skip_nonfinite)

    def add(self, logs: dict[str, torch.Tensor]) -> None:
        for k, v in logs.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.detach().clone()
        self.count += 1

    def means(self) -> dict[str, float]:
        if not self.sums or not self.count:
            return {}
        values = torch.stack(list(self.sums.values())).double().cpu().tolist()  # one host sync
        return {k: v / self.count for k, v in zip(self.sums, values, strict=True)}


def _read_metrics(path: Path, keep_epochs: int) -> tuple[list[str], list[dict[str, str]]]:
    """Header and the rows of epochs ``<= keep_epochs`` of an existing ``metrics.csv``."""
    if not path.is_file():
        return [], []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [r for r in reader if int(r["epoch"]) <= keep_epochs]
        return list(reader.fieldnames or []), rows


class _MetricsLog:
    """``metrics.csv`` (always) and TensorBoard event files (when tensorboard is installed)."""

    def __init__(self, run_dir: Path, keep_epochs: int = 0) -> None:
        path = run_dir / "metrics.csv"
        fields, rows = _read_metrics(path, keep_epochs)
        if rows or path.exists():  # resuming: keep the rows up to the checkpoint's epoch
            buffer = io.StringIO()
            if fields:
                writer = csv.DictWriter(buffer, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)
            atomic_write_text(path, buffer.getvalue())
        self._file = open(path, "a", newline="")  # noqa: SIM115 (closed in __exit__)
        self._csv: csv.DictWriter[str] | None = (
            csv.DictWriter(self._file, fieldnames=fields) if fields else None
        )
        self._board: Any = None
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._board = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, row: dict[str, Any]) -> None:
        if self._csv is None:
            self._csv = csv.DictWriter(self._file, fieldnames=list(row))
            self._csv.writeheader()
        self._csv.writerow(row)
        self._file.flush()
        if self._board is not None:
            for key, value in row.items():
                if key not in ("epoch", "step", "best"):
                    self._board.add_scalar(key, value, row["epoch"])
            self._board.flush()

    def __enter__(self) -> _MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()
        if self._board is not None:
            self._board.close()


class Trainer:
    """Trains one recipe into one run directory.

    Args:
        recipe: The validated recipe.
        run_dir: An empty (or fresh) run directory.
        observer: Receives progress.
    """

    def __init__(self, recipe: Recipe, run_dir: Path, observer: Observer | None = None) -> None:
        self.recipe = recipe
        self.run_dir = run_dir
        self.obs = observer or Observer()
        self.device = resolve_device(recipe.train.device)
        if distributed.launched_by_torchrun():
            self.device = distributed.init_from_environment(self.device)

    # ---------------------------------------------------------------------------------------- setup

    def _load_data(self) -> tuple[VolumeStore, Split]:
        progress: Progress = self.obs.progress
        store = self.recipe.data.load(progress)
        split = make_split(store, self.recipe.data, self._split_seed)
        if len(store.classes) != self.recipe.backbone.num_classes:
            raise RecipeError(
                f"backbone.num_classes: {self.recipe.backbone.num_classes} but the data set has "
                f"{len(store.classes)} classes ({', '.join(store.classes)})"
            )
        if self.recipe.augment.crop > store.canvas:
            raise RecipeError(f"augment.crop: {self.recipe.augment.crop} exceeds the data canvas "
                              f"{store.canvas}")
        return store, split

    @property
    def _split_seed(self) -> int:
        seed = self.recipe.data.split_seed
        return self.recipe.seed if seed is None else seed

    def _slices(self, store: VolumeStore, patients: list[str], labeled_only: bool) -> torch.Tensor:
        chosen = set(patients)
        ranges = [np.arange(v.start, v.stop) for v in store.volumes
                  if v.patient in chosen and (v.labeled or not labeled_only)]
        index = np.concatenate(ranges) if ranges else np.zeros(0, dtype=np.int64)
        return torch.from_numpy(index).to(self.device)

    def setup(self) -> None:
        """Load data, split, build the model, optimiser and hooks; write the run's metadata."""
        recipe = self.recipe
        world = distributed.world_size()
        for key in ("labeled_batch", "unlabeled_batch"):
            if getattr(recipe.train, key) % world:
                raise RecipeError(f"train.{key}: {getattr(recipe.train, key)} is not divisible by the "
                                  f"{world} processes (batch sizes are global; each process trains "
                                  "on an equal share)")
        torch.manual_seed(recipe.seed)
        self.store, self.split = self._load_data()
        # The store lives on the device once, as float16 images and uint8 labels.
        self.images, self.labels = self.store.tensors(self.device)
        self.labeled_idx = self._slices(self.store, self.split.labeled, labeled_only=True)
        self.unlabeled_idx = self._slices(self.store, self.split.unlabeled, labeled_only=False)
        if len(self.unlabeled_idx) == 0:  # full supervision: the unlabelled batch comes from labels
            self.unlabeled_idx = self.labeled_idx
        self.model, self.regs = build_model(recipe)
        if distributed.is_distributed():  # batch-norm moments of the global batch
            distributed.convert_batch_norm(self.model)
            for reg in self.regularizers:
                distributed.convert_batch_norm(reg)
        self.memory_format = _memory_format(recipe.train.memory_format, self.device)
        self.model.to(self.device).to(memory_format=self.memory_format)
        if recipe.train.compile:
            self.model.compile()  # in place: state-dict keys and forward hooks stay as they are
        for reg in self.regularizers:
            reg.to(self.device)
        self.features: dict[str, torch.Tensor] = {}
        taps = sorted({t for reg in self.regularizers for t in reg.taps})
        for name in taps:
            self.model.tap_module(name).register_forward_hook(self._hook(name))
        params = [p for m in (self.model, *self.regularizers) for p in m.parameters()
                  if p.requires_grad]  # a mean teacher's weights are not optimised
        self.eval_model = self._evaluation_model()
        self.optimizer = torch.optim.Adam(params, lr=recipe.optim.lr,
                                          weight_decay=recipe.optim.weight_decay)
        self.generator = torch.Generator(device=self.device).manual_seed(recipe.seed)
        self.network: nn.Module = self.model  # what the step's forward runs through
        if distributed.is_distributed():
            self.network = DistributedDataParallel(
                _Replicated(self.model, self.regularizers),
                device_ids=[self.device] if self.device.type == "cuda" else None,
            )
        self.epoch, self.step_index, self.best = 0, 0, -1.0
        self.iteration, self.running = 0, _Running()  # position inside the current epoch
        self._stop_requested = False
        if distributed.is_main() and not (self.run_dir / "recipe.toml").exists():  # kept on resume
            (self.run_dir / "recipe.toml").write_text(dump_toml(recipe.to_dict()))
            (self.run_dir / "versions.json").write_text(json.dumps(_plugin_versions(recipe), indent=1))
            (self.run_dir / "split.json").write_text(self.split.to_json())
        self.obs.message(
            f"{recipe.name}: {len(self.split.labeled)} labelled / {len(self.split.unlabeled)} "
            f"unlabelled / {len(self.split.validation)} validation / {len(self.split.test)} test "
            f"patients ({len(self.labeled_idx)} labelled slices) on {self.device}"
        )

    @property
    def regularizers(self) -> list[Regularizer]:
        """The regulariser modules of the loss terms, in recipe order."""
        return [term.regularizer for term in self.regs]

    def _evaluation_model(self) -> nn.Module:
        """The network validated, tested and checkpointed: the model, or a regulariser's substitute."""
        substitutes = [(name, reg.evaluation_model(self.model)) for name, _, _, reg in self.regs]
        substitutes = [(name, m) for name, m in substitutes if m is not self.model]
        if len(substitutes) > 1:
            raise RecipeError(f"regularizers {[n for n, _ in substitutes]} each replace the evaluated "
                              "model; at most one may")
        return substitutes[0][1] if substitutes else self.model

    def _hook(self, name: str) -> Callable[[nn.Module, Any, torch.Tensor], None]:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            self.features[name] = output

        return hook

    # ----------------------------------------------------------------------------------------- step

    def _draw(self, pool: torch.Tensor, n: int) -> torch.Tensor:
        pick = torch.randint(len(pool), (n,), generator=self.generator, device=self.device)
        return pool[pick]

    def train_step(self) -> dict[str, torch.Tensor] | None:
        """One optimisation step; returns the (device) values to log, or None for a skipped step."""
        cfg, aug = self.recipe.train, self.recipe.augment
        # The global batch (every process draws the same), then this process's shard of it.
        il = self._draw(self.labeled_idx, cfg.labeled_batch)
        iu = self._draw(self.unlabeled_idx, cfg.unlabeled_batch)
        x_l, y_l = augment_batch(self.images[il, None].float(), self.labels[il], aug, self.generator)
        assert y_l is not None
        x_u, _ = augment_batch(self.images[iu, None].float(), None, aug, self.generator)
        transform = Transform.draw(len(iu), self.generator, self.device, cfg.transform_prob,
                                   cfg.transform_prob)
        part_l, part_u = distributed.shard(len(il)), distributed.shard(len(iu))
        x_l, y_l, x_u = x_l[part_l], y_l[part_l], x_u[part_u]
        transform = Transform(transform.flip_h[part_u], transform.flip_w[part_u])
        x = torch.cat([x_l, x_u, transform(x_u)]).contiguous(memory_format=self.memory_format)
        sizes = [len(x_l), len(x_u), len(x_u)]
        self.features.clear()
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=cfg.precision == "bf16"):
            logits_l, logits_u, logits_tu = self.network(x).float().split(sizes)
            ctx = StepContext(
                logits_l, logits_u, logits_tu,
                {k: _split3(v, sizes) for k, v in self.features.items()},
                transform, self.step_index, self.epoch, x_u, reduction=distributed.reduction(),
            )
            sup = distributed.batch_mean(F.cross_entropy(logits_l, y_l, reduction="none"))
            total = sup
            logs = {"sup": sup.detach()}
            epochs_done = self.step_index / cfg.iterations_per_epoch
            for name, weight, rampup_epochs, reg in self.regs:
                out = reg(ctx)
                total = total + weight * rampup(epochs_done, rampup_epochs) * out.loss
                logs[name] = out.loss.detach()
                logs.update({f"{name}/{k}": v for k, v in out.logs.items()})
        logs = {"total": total.detach(), **logs}
        self.optimizer.zero_grad(set_to_none=True)
        if cfg.skip_nonfinite and not bool(torch.isfinite(total)):  # a host sync, only when asked
            self.step_index += 1
            return None
        total.backward()
        self.optimizer.step()
        for reg in self.regularizers:
            reg.after_step(self.model, self.step_index)
        self.step_index += 1
        return logs

    # ---------------------------------------------------------------------------------- checkpoints

    def _state(self) -> dict[str, Any]:
        state = {
            "model": self.eval_model.state_dict(),
            "regularizers": [reg.state_dict() for reg in self.regularizers],
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step_index,
            "iteration": self.iteration,
            "running": {"sums": dict(self.running.sums), "count": self.running.count,
                        "skipped": self.running.skipped},
            "best": self.best,
            "recipe": self.recipe.to_dict(),
            "data": {"classes": self.store.classes, "spacing": self.store.spacing,
                     "canvas": self.store.canvas},
            "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state()},
            "mireg_version": mireg.__version__,
        }
        if self.eval_model is not self.model:
            state["student"] = self.model.state_dict()
        return state

    # ----------------------------------------------------------------------------------------- loop

    def _validate(self) -> dict[str, float]:
        dice = validation_dice(self.eval_model, self.store, self.images, self.labels, self.split.validation,
                               self.recipe.train.eval_batch, self.recipe.train.precision)
        return {f"val_dice/{k}": v for k, v in dice.items()}

    def _check_finite(self, means: dict[str, float]) -> None:
        bad = [k for k, v in means.items() if not math.isfinite(v) and k != "total"]
        if bad or not math.isfinite(means.get("total", 0.0)):
            term = bad[0] if bad else "total"
            raise RunError(
                f"non-finite loss in term {term!r} at epoch {self.epoch + 1}, around step "
                f"{self.step_index}; the last good checkpoint is {self.run_dir / 'last.pt'}",
                "lower the learning rate or the regulariser weights, or set train.skip_nonfinite = true",
            )

    def request_stop(self) -> None:
        """Ask the loop to checkpoint and stop after the current step (signal handlers call this)."""
        self._stop_requested = True

    def _stop_agreed(self, boundary: bool) -> bool:
        """Whether to stop after this step. Processes agree at log boundaries only (one exchange)."""
        if not distributed.is_distributed():
            return self._stop_requested
        return boundary and distributed.any_rank(self._stop_requested, self.device)

    def _train_epoch(self) -> dict[str, float]:
        """The (rest of the) current epoch's steps; returns the epoch means of the logged values."""
        cfg = self.recipe.train
        self.obs.epoch_start(self.epoch, cfg.epochs, cfg.iterations_per_epoch)
        self.model.train()
        while self.iteration < cfg.iterations_per_epoch:
            logs = self.train_step()
            if logs is None:
                self.running.skipped += 1
            else:
                self.running.add(logs)
            self.iteration += 1
            if self.iteration % cfg.log_every == 0 or self.iteration == cfg.iterations_per_epoch:
                means = self.running.means()
                self._check_finite(means)
                self.obs.step(self.iteration, means)
            if self._stop_agreed(boundary=self.iteration % cfg.log_every == 0):
                if distributed.is_main():
                    save_checkpoint(self._state(), self.run_dir / "last.pt")
                raise RunInterrupted(
                    f"{self.run_dir}: stopped at epoch {self.epoch + 1}, step {self.step_index}; "
                    f"checkpoint saved to {self.run_dir / 'last.pt'}",
                    f"continue with: mireg train --resume {self.run_dir}",
                )
        means = self.running.means()
        if cfg.skip_nonfinite:
            means["skipped_steps"] = self.running.skipped
        self.iteration, self.running = 0, _Running()
        return means

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint written by this loop (weights, optimiser, RNG and position)."""
        self.model.load_state_dict(state.get("student", state["model"]))
        for reg, reg_state in zip(self.regularizers, state["regularizers"], strict=True):
            reg.load_state_dict(reg_state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step_index, self.best = state["epoch"], state["step"], state["best"]
        self.iteration = state["iteration"]
        running = state["running"]
        self.running = _Running(dict(running["sums"]), running["count"], running["skipped"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        self.generator.set_state(state["rng"]["generator"].cpu())

    def fit(self) -> dict[str, Any]:
        """Run all epochs, then evaluate the best checkpoint on the test split (the test report; in a
        multi-process run, rank 0 tests and the others return ``{}``)."""
        cfg = self.recipe.train
        main = distributed.is_main()
        log_file = _MetricsLog(self.run_dir, keep_epochs=self.epoch) if main else nullcontext()
        with log_file as log:
            while self.epoch < cfg.epochs:
                lr = lr_at_epoch(self.epoch, cfg.epochs, self.recipe.optim)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                started = time.perf_counter()
                row: dict[str, Any] = {"epoch": self.epoch + 1, "lr": lr}
                means = self._train_epoch()
                skipped = means.pop("skipped_steps", None)
                row.update({f"loss/{k}": v for k, v in means.items()})
                if skipped is not None:
                    row["skipped_steps"] = int(skipped)
                row.update(self._validate())
                row["step"] = self.step_index
                row["seconds"] = round(time.perf_counter() - started, 2)
                improved = row.get("val_dice/mean", float("nan")) > self.best
                if improved:
                    self.best = row["val_dice/mean"]
                row["best"] = int(improved)
                self.epoch += 1
                # The row goes first: a kill before the checkpoint replays this epoch on resume, and
                # rows past the checkpoint's epoch are dropped then (_MetricsLog).
                if log is not None:
                    log.write(row)
                if main:
                    state = self._state()
                    if improved:
                        save_checkpoint(state, self.run_dir / "best.pt")
                    save_checkpoint(state, self.run_dir / "last.pt")
                self.obs.epoch_end(row)
        if not main:
            return {}
        plot_curves(self.run_dir / "metrics.csv", self.run_dir / "curves.png")
        return self.test()

    def test(self) -> dict[str, Any]:
        """Evaluate the best checkpoint on the test split; writes ``report.json|csv|md``."""
        state = load_checkpoint(self.run_dir / "best.pt", self.device)
        self.eval_model.load_state_dict(state["model"])
        results = evaluate_volumes(self.eval_model, self.store, self.images, self.labels,
                                   self.split.test, self.recipe.train.eval_batch,
                                   self.recipe.train.precision)
        meta = {"run": self.recipe.name, "split": "test", "checkpoint": "best.pt",
                "epoch": state["epoch"]}
        report = build_report(results, self.store.classes[1:], meta)
        write_reports(report, self.run_dir)
        return report
