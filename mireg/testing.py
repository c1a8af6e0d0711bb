"""Contract checks for plugin authors: does a backbone, regulariser, dataset or scan reader obey
mireg's contract?

Use them in a plugin package's own tests::

    from mireg.testing import check_backbone, check_regularizer
    from my_plugin import MyNetConfig, MyLossConfig

    def test_my_net_obeys_the_contract():
        check_backbone(MyNetConfig(name="my_net", num_classes=3))

    def test_my_loss_obeys_the_contract():
        check_regularizer(MyLossConfig(name="my_loss", weight=1.0))

Each check raises :class:`ContractError` (an ``AssertionError``) naming the plugin and what is wrong.
``device="cuda"`` runs a check on a GPU (the plugin's modules moved there, as training moves them).
mireg's own test suite runs them over every registered plugin, on the CPU and, where there is one, on
a GPU (``pytest -m cuda``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mireg.contract import (
    GROUPS,
    Backbone,
    BackboneConfig,
    DatasetConfig,
    Regularizer,
    RegularizerConfig,
    RegularizerOutput,
    StepContext,
    Transform,
)
from mireg.io.formats import Scan, ScanReader
from mireg.preprocessing.store import VolumeStore
from mireg.training.step import TappedNetwork
from mireg.training.step import step_context as build_step_context

__all__ = [
    "ContractError",
    "check_backbone",
    "check_dataset",
    "check_reader",
    "check_regularizer",
    "step_context",
]


class ContractError(AssertionError):
    """A plugin does not obey the contract."""


def _expect(condition: bool, plugin: str, message: str) -> None:
    if not condition:
        raise ContractError(f"{plugin}: {message}")


def step_context(
    backbone: Backbone,
    taps: tuple[str, ...] = (),
    n_labeled: int = 2,
    n_unlabeled: int = 3,
    size: int = 32,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> StepContext:
    """A :class:`StepContext` from one real forward pass of ``backbone`` over random images.

    It is built by the training step's own builder (:func:`mireg.training.step.step_context`), so
    ``ctx.forward`` works as in training; the backbone keeps the forward hooks on ``taps``. The
    images are drawn on the CPU and moved to ``device`` (where ``backbone`` must be): the same seed
    gives the same context on any device.
    """
    g, device = torch.Generator().manual_seed(seed), torch.device(device)
    c = backbone.in_channels
    x_l = torch.rand(n_labeled, c, size, size, generator=g).to(device)
    x_u = torch.rand(n_unlabeled, c, size, size, generator=g).to(device)
    t = Transform.draw(n_unlabeled, g, device)
    y_l = torch.randint(backbone.num_classes, (n_labeled, size, size), generator=g).to(device)
    return build_step_context(TappedNetwork(backbone, taps), x_l, y_l, x_u, t, step=0, epoch=0, generator=g)


def check_backbone(
    config: BackboneConfig, size: int = 64, batch: int = 2, device: str | torch.device = "cpu"
) -> Backbone:
    """Build the backbone and check shapes, taps, gradients and a state-dict round trip, on ``device``."""
    plugin = f"backbone {config.name!r}"
    device = torch.device(device)
    net = config.create().to(device)
    _expect(isinstance(net, Backbone), plugin, f"build() returned {type(net).__name__}, not a Backbone")
    _expect(
        net.in_channels == config.in_channels and net.num_classes == config.num_classes,
        plugin,
        "in_channels / num_classes differ from the config",
    )
    _expect(bool(net.taps), plugin, "declares no feature taps")
    seen: dict[str, torch.Tensor] = {}
    for name, tap in net.taps.items():
        _expect(tap.kind in ("encoder", "decoder") and tap.channels > 0, plugin, f"tap {name}: {tap}")
        net.tap_module(name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
    x = torch.rand(batch, config.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    out = net(x)
    _expect(
        tuple(out.shape) == (batch, config.num_classes, size, size),
        plugin,
        f"output shape {tuple(out.shape)}, expected {(batch, config.num_classes, size, size)}",
    )
    _expect(bool(torch.isfinite(out).all()), plugin, "output is not finite")
    multiple = net.size_multiple
    declared = multiple is None or (isinstance(multiple, int) and multiple >= 1)
    _expect(declared, plugin, f"size_multiple is {multiple!r}; an int >= 1, or None")
    if multiple is not None:  # a declared size_multiple must hold: 3 and 5 times it, say
        height, width = 3 * multiple, 5 * multiple
        odd = torch.zeros(1, config.in_channels, height, width, device=device)
        try:
            with torch.no_grad():
                odd_out = net(odd)
        except Exception as exc:  # noqa: BLE001 (any failure breaks the promise)
            raise ContractError(
                f"{plugin}: size_multiple is {multiple}, but a {height}x{width} input fails "
                f"({type(exc).__name__}: {exc})"
            ) from None
        _expect(
            tuple(odd_out.shape[2:]) == (height, width),
            plugin,
            f"a {height}x{width} input gives {tuple(odd_out.shape[2:])} logits",
        )
    for name, tap in net.taps.items():
        f = seen.get(name)
        _expect(isinstance(f, torch.Tensor), plugin, f"tap {name} did not produce a tensor")
        assert f is not None
        _expect(
            f.dim() == 4 and f.shape[1] == tap.channels,
            plugin,
            f"tap {name}: shape {tuple(f.shape)}, declared {tap.channels} channels",
        )
    out.float().square().mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    _expect(any(g is not None and g.abs().sum() > 0 for g in grads), plugin, "no gradient reaches it")
    _expect(all(g is None or bool(torch.isfinite(g).all()) for g in grads), plugin, "non-finite gradient")
    twin = net.twin()
    _expect(type(twin) is type(net) and twin is not net, plugin, "twin() must make a new network")
    twin.to(device)
    twin.load_state_dict(net.state_dict())
    if net.independent_samples:
        _check_independent_samples(net, x, plugin)
    net.eval()
    twin.eval()
    with torch.no_grad():
        _expect(torch.allclose(net(x), twin(x), atol=1e-5), plugin, "state dict does not round trip")
    return net


def _check_independent_samples(net: Backbone, x: torch.Tensor, plugin: str) -> None:
    """A network that says it computes each sample alone (``independent_samples``): in training mode,
    a sample's output is the same in any batch, and a forward changes no buffer and draws no random
    number."""
    net.train()
    buffers = [b.clone() for b in net.buffers()]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(x.device) if x.device.type == "cuda" else None
    with torch.no_grad():
        together = net(x)
    drew = not torch.equal(cpu_rng, torch.get_rng_state()) or (
        cuda_rng is not None and not torch.equal(cuda_rng, torch.cuda.get_rng_state(x.device))
    )
    _expect(not drew, plugin, "independent_samples is True, but a training forward draws random numbers")
    _expect(
        all(torch.equal(a, b) for a, b in zip(buffers, net.buffers(), strict=True)),
        plugin,
        "independent_samples is True, but a training forward changes the network's buffers",
    )
    with torch.no_grad():
        alone = net(x[:1])
    # Up to rounding, which a deep network amplifies: within 1e-4 of the output's largest value
    # (about 1e-5 is seen; a batch statistic or a random mask moves outputs by their own size).
    moved = float((together[:1] - alone).abs().max())
    _expect(
        moved <= 1e-4 * float(alone.abs().max()) + 1e-6,
        plugin,
        f"independent_samples is True, but a sample's output depends on the rest of its batch "
        f"(it moves by {moved:.2g})",
    )


def check_regularizer(
    config: RegularizerConfig,
    backbone: BackboneConfig | None = None,
    size: int = 32,
    device: str | torch.device = "cpu",
) -> Regularizer:
    """Build the regulariser on a small backbone; check its loss, gradients, hooks and state dict,
    on ``device``."""
    from mireg.backbones.unet import UNetConfig

    plugin = f"regularizer {config.name!r}"
    backbone = backbone or UNetConfig(name="unet", num_classes=3, base_channels=4)
    torch.manual_seed(0)
    net = backbone.create().to(device)
    reg = config.build(net)
    _expect(isinstance(reg, Regularizer), plugin, f"build() returned {type(reg).__name__}")
    reg.to(device)
    missing = [t for t in reg.taps if t not in net.taps]
    _expect(not missing, plugin, f"asks for taps {missing} the backbone does not have")
    out = reg(step_context(net, reg.taps, size=size, device=device))
    _expect(isinstance(out, RegularizerOutput), plugin, "forward must return a RegularizerOutput")
    _expect(out.loss.dim() == 0, plugin, f"loss must be a scalar, got shape {tuple(out.loss.shape)}")
    _expect(math.isfinite(out.loss.item()), plugin, f"loss is not finite: {out.loss.item()}")
    for key, value in out.logs.items():
        _expect(
            value.dim() == 0 and math.isfinite(value.item()), plugin, f"log {key!r} is not a finite scalar"
        )
    if out.loss.requires_grad:
        out.loss.backward()
        params: list[nn.Parameter] = [p for m in (net, reg) for p in m.parameters() if p.requires_grad]
        grads = [p.grad for p in params]
        # A loss of exactly zero may be flat (a thresholded loss where nothing passes the threshold,
        # e.g. confident pseudo-labels on an untrained network); any other loss must reach a parameter.
        _expect(
            out.loss.item() == 0 or any(g is not None and g.abs().sum() > 0 for g in grads),
            plugin,
            "the loss requires grad but no parameter receives a gradient",
        )
        _expect(all(g is None or bool(torch.isfinite(g).all()) for g in grads), plugin, "non-finite gradient")
    _check_reads(reg, net, plugin, size, device)
    reg.after_step(net, 0)
    _expect(isinstance(reg.evaluation_model(net), nn.Module), plugin, "evaluation_model must be a module")
    twin = config.build(backbone.create())
    twin.load_state_dict(reg.state_dict())
    return reg


def _check_reads(reg: Regularizer, net: Backbone, plugin: str, size: int, device: str | torch.device) -> None:
    """The groups a regulariser says it does not read (``Regularizer.reads``) leave its loss alone:
    filled with NaN, the loss is the same. Training leaves them out on some networks."""
    unread = sorted(GROUPS - reg.reads)
    _expect(not reg.reads - GROUPS, plugin, f"reads names groups other than {sorted(GROUPS)}: {reg.reads}")
    if not unread:
        return
    losses = []
    for poison in (False, True):
        ctx = step_context(net, reg.taps, size=size, seed=1, device=device)
        if poison:
            nan = float("nan")
            u, tu = "unlabelled" in unread, "transformed" in unread
            ctx = dataclasses.replace(
                ctx,
                logits_u=ctx.logits_u.detach().clone().fill_(nan) if u else ctx.logits_u,
                logits_tu=ctx.logits_tu.detach().clone().fill_(nan) if tu else ctx.logits_tu,
                features={
                    name: (
                        f_l,
                        f_u.detach().clone().fill_(nan) if u else f_u,
                        f_tu.detach().clone().fill_(nan) if tu else f_tu,
                    )
                    for name, (f_l, f_u, f_tu) in ctx.features.items()
                },
            )
        torch.manual_seed(1)
        with torch.no_grad():
            losses.append(reg(ctx).loss.float())
    _expect(
        bool(torch.allclose(losses[0], losses[1], rtol=1e-5, atol=1e-7)),
        plugin,
        f"reads is {sorted(reg.reads)}, but its loss changes with the logits or features of {unread} "
        f"({losses[0].item():.6g}, then {losses[1].item():.6g} with those filled with NaN)",
    )


def check_dataset(config: DatasetConfig) -> VolumeStore:
    """Load the dataset's store and check its arrays and records; a split must be possible."""
    from mireg.data.splits import make_split

    plugin = f"dataset {config.name!r}"
    store = config.load()
    _expect(isinstance(store, VolumeStore), plugin, f"load() returned {type(store).__name__}")
    _expect(len(store.classes) >= 2, plugin, f"needs a background and a class, has {store.classes}")
    s = store.images.shape
    _expect(
        len(s) == 3 and s[1] == s[2] == store.canvas and store.canvas % 16 == 0,
        plugin,
        f"images have shape {s} for canvas {store.canvas} (square, a multiple of 16)",
    )
    rows = store.labels.shape[0]
    _expect(
        store.labels.ndim == 3 and store.labels.shape[1:] == s[1:],
        plugin,
        f"labels have shape {store.labels.shape} for images {s}",
    )
    for v in store.volumes:
        if v.labeled:
            span = v.label_rows
            _expect(
                span.start >= 0 and span.stop <= rows, plugin, f"volume {v.id}: labels outside {rows} rows"
            )
    _expect(int(store.labels.max()) < len(store.classes), plugin, "label values outside the classes")
    lo, hi = float(store.images.min()), float(store.images.max())
    _expect(lo >= 0.0 and hi <= 1.0, plugin, f"intensities in [{lo}, {hi}], expected within [0, 1]")
    position = 0
    for v in store.volumes:
        _expect(v.start == position and v.stop > v.start, plugin, f"volume {v.id} is not contiguous")
        position = v.stop
    _expect(position == s[0], plugin, f"volumes cover {position} of {s[0]} slices")
    labelled = {v.patient for v in store.volumes if v.labeled}
    _expect(len(labelled) >= 3, plugin, "needs at least 3 labelled patients (train, validation, test)")
    small = config.model_copy(
        update={
            "val_patients": 1,
            "test_patients": 1,
            "labeled_ratio": None,
            "labeled_patients": 1,
            "split_file": None,
        }
    )
    make_split(store, small, seed=0)
    return store


def check_reader(reader: ScanReader, path: Path) -> list[Scan]:
    """Find and open the scans ``path`` is or holds (a sample file or folder of the reader's format),
    and check what ``mireg predict`` relies on: names, frames, geometry and every frame's arrays.

    Returns:
        The scans, for further checks of their values.
    """
    plugin = f"reader {getattr(reader, 'name', type(reader).__name__)!r}"
    _expect(isinstance(reader, ScanReader), plugin, "does not subclass mireg.io.formats.ScanReader")
    found = reader.find(path)
    _expect(bool(found), plugin, f"find({path}) found nothing")
    scans = [reader.open(p) for p in found]
    for p, scan in zip(found, scans, strict=True):
        what = f"{plugin}, {p}"
        _expect(isinstance(scan, Scan), what, f"open() returned {type(scan).__name__}, not a Scan")
        _expect(
            bool(scan.name) and scan.name == reader.output_name(p), what, "name differs from output_name()"
        )
        _expect(scan.n_frames >= 1, what, f"n_frames is {scan.n_frames}")
        _expect(all(f.exists() for f in scan.input_files), what, "input_files names missing files")
        affine = np.asarray(scan.affine)
        _expect(
            affine.shape == (4, 4) and bool(np.isfinite(affine).all()) and abs(np.linalg.det(affine)) > 0,
            what,
            f"affine {affine.tolist()} is not an invertible 4 x 4 matrix",
        )
        frames = list(range(scan.n_frames))
        read = list(scan.read(frames[::-1]))
        _expect(
            [f.t for f in read] == frames[::-1], what, "read() did not give the frames asked for, in order"
        )
        for frame in read:
            image = frame.image
            _expect(
                image.ndim == 3 and image.dtype == np.float32 and bool(np.isfinite(image).all()),
                what,
                f"frame {frame.t}: image {image.shape} {image.dtype}, expected a finite float32 (X, Y, Z)",
            )
            sizes = np.linalg.norm(np.asarray(frame.affine)[:3, :3], axis=0)
            _expect(
                len(frame.spacing) == 3 and np.allclose(sizes, frame.spacing, rtol=1e-4),
                what,
                f"frame {frame.t}: spacing {frame.spacing} is not the affine's voxel size {sizes.tolist()}",
            )
    return scans
