"""One optimisation step (docs/architecture.md, "A training step").

1. The step's labelled and unlabelled slices come from the feed (:mod:`mireg.training.feed`: gathered on
   the device, or streamed from disk ahead of the step) and are augmented on the device in one
   batched warp; ``T`` is drawn once.
2. One forward pass over ``[x_l, x_u, T(x_u)]`` with the feature taps the regularisers asked for
   (hooks registered once, :class:`TappedNetwork`); :func:`step_context` splits the result into the
   :class:`~mireg.contract.StepContext` every regulariser reads. On a network that computes each
   sample alone (``Backbone.independent_samples``) the forward leaves out the groups no regulariser
   reads (``Regularizer.reads``; a supervised step runs on ``x_l`` only): they would change nothing
   but the time (``TrainStep.groups``).
3. The loss ``L_sup + sum_i w_i r_i(t) L_i``, backward, the optimiser step, then each regulariser's
   ``after_step`` (EMA teachers).

Logged values stay on the device; the loop fetches them every ``log_every`` steps, so the step has no
host syncs. Under ``torchrun`` every process draws the same global batch and trains on its shard.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from mireg.augment.paper import augment_batch
from mireg.augment.strong import augment_strong_batch
from mireg.contract import GROUPS, Backbone, Forward, Group, StepContext, Transform
from mireg.losses import SINGLE_PROCESS, Reduction
from mireg.precision import autocast, ieee_float32
from mireg.recipe import AugmentConfig
from mireg.training.feed import Feed
from mireg.training.runtime import Runtime
from mireg.training.schedule import rampup
from mireg.training.state import TrainState
from mireg.training.supervised import SupervisedLoss, supervised_loss

__all__ = ["TappedNetwork", "TrainStep", "step_context"]


class TappedNetwork:
    """A backbone with forward hooks on the feature taps regularisers read, registered once.

    Args:
        model: The backbone.
        taps: Tap names to capture.
        network: What the step's main forward runs through (the model, or its DDP wrapper).
        memory_format: Layout of the inputs.
    """

    def __init__(
        self,
        model: Backbone,
        taps: Iterable[str],
        network: nn.Module | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        self.model = model
        self.network = model if network is None else network
        self.memory_format = memory_format
        self.taps = tuple(sorted(set(taps)))
        self._captured: dict[str, torch.Tensor] = {}
        #: The auxiliary (deep-supervision) logits of the last main forward.
        self.auxiliary: list[torch.Tensor] = []
        self._handles: list[RemovableHandle] = [
            model.tap_module(name).register_forward_hook(self._hook(name)) for name in self.taps
        ]

    def _hook(self, name: str) -> Callable[[nn.Module, Any, torch.Tensor], None]:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            self._captured[name] = output

        return hook

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The main forward (through ``network``): raw logits and every tapped feature map; the
        backbone's auxiliary logits are kept in :attr:`auxiliary` (before a regulariser's own forward
        replaces them)."""
        self._captured = {}
        logits = self.network(x.contiguous(memory_format=self.memory_format))
        self.auxiliary = self.model.auxiliary_logits()
        return logits, self._captured

    def extra(self, x: torch.Tensor, taps: Sequence[str] = ()) -> Forward:
        """A regulariser's own forward (``StepContext.forward``): float logits and ``taps``.

        It runs the model itself, not a DDP wrapper: DDP allows one forward per backward, and the
        gradients of this pass reach the same parameters, whose averaged gradients DDP reduces.
        """
        unknown = [t for t in taps if t not in self.taps]
        if unknown:
            raise ValueError(
                f"taps {unknown} were not requested; a regulariser lists the taps it "
                f"reads in its `taps` (requested: {list(self.taps)})"
            )
        self._captured = {}
        logits = self.model(x.contiguous(memory_format=self.memory_format)).float()
        captured = self._captured
        return Forward(logits, {name: captured[name] for name in taps})

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()


def step_context(
    tapped: TappedNetwork,
    x_l: torch.Tensor,
    y_l: torch.Tensor,
    x_u: torch.Tensor,
    transform: Transform,
    step: int,
    epoch: int,
    reduction: Reduction = SINGLE_PROCESS,
    generator: torch.Generator | None = None,
    loss: SupervisedLoss = "ce",
    groups: Collection[Group] = GROUPS,
) -> StepContext:
    """Run the network once on ``[x_l, x_u, T(x_u)]`` and split logits and features by group;
    ``loss`` is the recipe's supervised loss, which :meth:`StepContext.supervised_loss` computes.

    ``groups`` are the groups beside ``x_l`` to run the network on; a group left out gets logits and
    features with no rows (for a backbone that computes each sample alone, where leaving a group out
    changes no other group's result).
    """
    unlabelled, transformed = "unlabelled" in groups, "transformed" in groups
    sizes = [len(x_l), len(x_u) if unlabelled else 0, len(x_u) if transformed else 0]
    inputs = [x_l] + ([x_u] if unlabelled else []) + ([transform(x_u)] if transformed else [])
    logits, features = tapped(torch.cat(inputs))
    logits_l, logits_u, logits_tu = logits.float().split(sizes)
    split: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for name, value in features.items():
        f_l, f_u, f_tu = value.split(sizes)
        split[name] = (f_l, f_u, f_tu)
    return StepContext(
        logits_l=logits_l,
        logits_u=logits_u,
        logits_tu=logits_tu,
        features=split,
        transform=transform,
        step=step,
        epoch=epoch,
        x_u=x_u,
        x_l=x_l,
        y_l=y_l,
        run_network=tapped.extra,
        reduction=reduction,
        generator=generator,
        supervise=partial(_supervise, labels=y_l, kind=loss, reduction=reduction),
    )


def _supervise(
    logits: torch.Tensor,
    auxiliary: Sequence[torch.Tensor],
    *,
    labels: torch.Tensor,
    kind: SupervisedLoss,
    reduction: Reduction,
) -> torch.Tensor:
    return supervised_loss(logits, labels, kind, auxiliary, reduction=reduction)


def _augment(
    images: torch.Tensor, labels: torch.Tensor | None, cfg: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The recipe's augmentation preset: the paper's, or nnU-Net's 2D one (``augment.preset``)."""
    if cfg.preset == "strong":
        return augment_strong_batch(images, labels, cfg.crop, generator)
    return augment_batch(images, labels, cfg, generator)


class TrainStep:
    """The training step of one run, built once; calling it takes one optimisation step.

    Args:
        state: The training state (network, regularisers, optimiser, generator, position).
        feed: Brings each step's slices to the device (:func:`~mireg.training.feed.open_feed`).
        runtime: The process set-up (sharding, the DDP wrapper).
    """

    def __init__(
        self, state: TrainState, feed: Feed, runtime: Runtime, memory_format: torch.memory_format
    ) -> None:
        self.state, self.feed, self.runtime = state, feed, runtime
        taps = {t for reg in state.regularizers for t in reg.taps}
        network = runtime.wrap(state.model, list(state.regularizers))
        self.tapped = TappedNetwork(state.model, taps, network, memory_format)
        self.reduction = runtime.reduction()
        #: What gradient clipping (``optim.clip_grad_norm``) clips: every parameter optimised.
        self.parameters = [p for group in state.optimizer.param_groups for p in group["params"]]
        #: The groups beside the labelled slices the forward runs on: every group, or, when the network
        #: computes each sample alone, drawing no random numbers (``Backbone.independent_samples``),
        #: only those a regulariser reads (``Regularizer.reads``; none for a supervised run). The
        #: losses and gradients are then those of the forward over every group, up to the rounding of
        #: a smaller batch.
        self.groups: frozenset[Group] = GROUPS
        if state.model.independent_samples:
            self.groups = frozenset(group for term in state.terms for group in term.regularizer.reads)

    def __call__(self) -> dict[str, torch.Tensor] | None:
        """One optimisation step; returns the (device) values to log, or None for a skipped step."""
        with ieee_float32():  # forward and backward: fp32 means IEEE float32 on CUDA too
            return self._step()

    def _step(self) -> dict[str, torch.Tensor] | None:
        state, runtime = self.state, self.runtime
        cfg, aug, g = state.recipe.train, state.recipe.augment, state.generator
        # The global batch (every process draws the same), then this process's shard of it.
        batch = self.feed.batch(state.step)
        x_l, y_l = _augment(batch.images_l[:, None].float(), batch.labels_l, aug, g)
        assert y_l is not None
        # Drawn even when the forward skips them: the generator's stream, and with it every later
        # step's draws, stays the same whether or not the network runs on x_u.
        x_u, _ = _augment(batch.images_u[:, None].float(), None, aug, g)
        n_l, n_u = len(batch.images_l), len(batch.images_u)
        transform = Transform.draw(n_u, g, runtime.device, cfg.transform_prob, cfg.transform_prob)
        part_l, part_u = runtime.shard(n_l), runtime.shard(n_u)
        x_l, y_l, x_u = x_l[part_l], y_l[part_l], x_u[part_u]
        transform = Transform(transform.flip_h[part_u], transform.flip_w[part_u])
        with autocast(cfg.precision, runtime.device):
            ctx = step_context(
                self.tapped,
                x_l,
                y_l,
                x_u,
                transform,
                state.step,
                state.epoch,
                self.reduction,
                g,
                loss=cfg.loss,
                groups=self.groups,
            )
            auxiliary = [a[: len(x_l)] for a in self.tapped.auxiliary]  # deep supervision, if any
            sup = supervised_loss(ctx.logits_l, y_l, cfg.loss, auxiliary, reduction=self.reduction)
            total = sup
            logs = {"sup": sup.detach()}
            epochs_done = state.step / cfg.iterations_per_epoch
            for name, weight, rampup_epochs, reg in state.terms:
                out = reg(ctx)
                total = total + weight * rampup(epochs_done, rampup_epochs) * out.loss
                logs[name] = out.loss.detach()
                if out.unweighted is not None:
                    total = total + out.unweighted
                    logs[f"{name}/unweighted"] = out.unweighted.detach()
                logs.update({f"{name}/{k}": v for k, v in out.logs.items()})
        logs = {"total": total.detach(), **logs}
        state.optimizer.zero_grad(set_to_none=True)
        if cfg.skip_nonfinite and not bool(torch.isfinite(total)):  # a host sync, only when asked
            state.step += 1
            return None
        total.backward()
        if state.recipe.optim.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, state.recipe.optim.clip_grad_norm)
        state.optimizer.step()
        for reg in state.regularizers:
            reg.after_step(state.model, state.step)
        state.step += 1
        return logs
