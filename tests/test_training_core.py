"""The training core's pieces: the step context's extra forward, second networks, the strong
augmentations, the recipe check before any data, and the run folder created only when training starts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mireg.augment.paper import _jitter
from mireg.augment.views import cutmix_boxes, gaussian_blur, intensity_jitter, mix
from mireg.backbones.unet import UNetConfig
from mireg.contract import Backbone, Regularizer, RegularizerOutput, StepContext
from mireg.errors import RecipeError
from mireg.inference import Preprocessing
from mireg.network import Term, build_network, check_recipe
from mireg.recipe import AugmentConfig, dump_toml, validate_recipe
from mireg.testing import step_context
from mireg.training.data import load_data
from mireg.training.feed import open_feed
from mireg.training.runtime import Runtime
from mireg.training.state import TrainState
from mireg.training.step import TrainStep

from .helpers import REPO, tiny_recipe
from .test_recipe import RECIPES

# ------------------------------------------------------------------------------------ StepContext


def test_the_context_carries_the_labelled_batch_and_runs_the_network_on_new_inputs() -> None:
    torch.manual_seed(0)
    net = UNetConfig(name="unet", num_classes=3, base_channels=4).create()
    ctx = step_context(net, taps=("Up_conv2",), n_labeled=2, n_unlabeled=3, size=32)
    assert ctx.x_l.shape == (2, 1, 32, 32) and ctx.y_l.shape == (2, 32, 32)
    assert ctx.y_l.dtype == torch.int64 and int(ctx.y_l.max()) < 3
    net.eval()  # batch norm on running statistics: the same input gives the same logits
    out = ctx.forward(ctx.x_l, taps=("Up_conv2",))
    with torch.no_grad():
        assert torch.allclose(out.logits, net(ctx.x_l).float(), atol=1e-6)
    assert out.features["Up_conv2"].shape[:2] == (2, 4)
    out.logits.square().mean().backward()  # gradients flow through the extra pass
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    with pytest.raises(ValueError, match=r"taps \['Conv5'\] were not requested"):
        ctx.forward(ctx.x_l, taps=("Conv5",))


class _CoTraining(Regularizer):
    """A second network, trained to agree with the first on mixed images (a CutMix consistency)."""

    taps = ("Up_conv2",)

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.other = backbone.twin()

    def forward(self, ctx: StepContext) -> RegularizerOutput:
        g = torch.Generator(device=ctx.x_u.device).manual_seed(ctx.step)
        boxes = cutmix_boxes(len(ctx.x_u), *ctx.x_u.shape[-2:], g, p=1.0)
        mixed = mix(ctx.x_u, ctx.x_u.flip(0), boxes)
        strong = gaussian_blur(intensity_jitter(mixed, g), g, p=1.0)
        mine = ctx.forward(strong, taps=self.taps)
        theirs = self.other(mixed).float()
        target = theirs.argmax(1).detach()
        loss = F.cross_entropy(mine.logits, target) + F.cross_entropy(theirs, mine.logits.argmax(1).detach())
        return RegularizerOutput(loss, {"feature_norm": mine.features["Up_conv2"].norm().detach()})


def test_a_regulariser_can_own_a_second_network_trained_and_checkpointed_with_the_rest(
    tmp_path: Path,
) -> None:
    recipe = validate_recipe(tiny_recipe(tmp_path / "runs", regularizers=[]), "tiny")
    runtime = Runtime.start("cpu")
    torch.manual_seed(recipe.seed)
    data = load_data(recipe)
    model, terms = build_network(recipe)
    co = _CoTraining(model)
    terms.append(Term("co", 1.0, 0.0, co))
    info = Preprocessing(data.store.spacing, data.store.canvas, data.store.classes)
    state = TrainState.create(recipe, info, model, terms, runtime.device)
    optimised = {id(p) for group in state.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in co.other.parameters())
    before = [p.detach().clone() for p in co.other.parameters()]
    step = TrainStep(state, open_feed(recipe, data, runtime.device), runtime, torch.contiguous_format)
    logs = step()
    assert logs is not None and math.isfinite(float(logs["co"])) and "co/feature_norm" in logs
    assert any(not torch.equal(a, b) for a, b in zip(before, co.other.parameters(), strict=True))
    saved = state.state_dict()
    assert any(k.startswith("other.") for k in saved["regularizers"][0])
    twin = _CoTraining(model)
    twin.load_state_dict(saved["regularizers"][0])
    for a, b in zip(twin.other.parameters(), co.other.parameters(), strict=True):
        assert torch.equal(a, b)


def test_twin_needs_a_network_made_by_create() -> None:
    config = UNetConfig(name="unet", num_classes=3, base_channels=4)
    made = config.create()
    twin = made.twin()
    assert type(twin) is type(made) and twin is not made and twin.config == config
    with pytest.raises(RuntimeError, match="BackboneConfig.create"):
        config.build().twin()


# ---------------------------------------------------------------------------------- augmentations


def test_intensity_jitter_is_the_training_jitter() -> None:
    x = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    cfg = AugmentConfig(crop=16, brightness=(0.7, 1.2), contrast=(0.8, 1.4))
    a = _jitter(x, cfg, torch.Generator().manual_seed(2))
    b = intensity_jitter(x, torch.Generator().manual_seed(2), (0.7, 1.2), (0.8, 1.4))
    assert torch.equal(a, b) and float(b.min()) >= 0.0 and float(b.max()) <= 1.0


def test_gaussian_blur_blurs_the_drawn_samples_and_keeps_constant_images() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 2, 20, 20, generator=g)
    assert torch.equal(gaussian_blur(x, g, p=0.0), x)
    blurred = gaussian_blur(x, g, sigma=(1.0, 2.0), p=1.0)
    assert blurred.shape == x.shape
    assert (blurred.std(dim=(2, 3)) < x.std(dim=(2, 3))).all()  # smoother in every sample
    flat = torch.full((3, 1, 12, 12), 0.4)
    assert torch.allclose(gaussian_blur(flat, g, p=1.0), flat, atol=1e-6)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(x, g, sigma=(0.0, 1.0))


def test_cutmix_boxes_are_rectangles_of_the_asked_area_and_mix_images_and_labels_alike() -> None:
    g = torch.Generator().manual_seed(3)
    boxes = cutmix_boxes(200, 40, 50, g, area=(0.1, 0.3), p=1.0)
    share = boxes.float().mean(dim=(1, 2))
    assert share.min() > 0.05 and share.max() < 0.4
    for box in boxes[:20]:  # each mask is one axis-aligned rectangle
        rows, cols = box.any(dim=1), box.any(dim=0)
        assert int(box.sum()) == int(rows.sum()) * int(cols.sum())
    assert not cutmix_boxes(50, 8, 8, g, p=0.0).any()
    x_a, x_b = torch.zeros(4, 1, 8, 8), torch.ones(4, 1, 8, 8)
    y_a, y_b = torch.zeros(4, 8, 8, dtype=torch.long), torch.full((4, 8, 8), 2)
    small = cutmix_boxes(4, 8, 8, g, p=1.0)
    assert torch.equal(mix(x_a, x_b, small)[:, 0] > 0, small)
    assert torch.equal(mix(y_a, y_b, small) == 2, small)
    with pytest.raises(ValueError, match="cannot mix"):
        mix(x_a, y_a, small)


# ------------------------------------------------------------------------- checks before the data


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_builds_on_the_meta_device(path: Path) -> None:
    from mireg.recipe import read_toml

    check_recipe(validate_recipe(read_toml(path), str(path)))


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (
            {"layers": ["Conv5", "Up_conv3", "Up_conv9"]},
            "regularizers[1] (mutual_information): layers ['Up_conv9'] are not taps of the backbone",
        ),
        (
            {"layers": ["Conv5", "Up_conv2"], "importance": [1.0, 1.0]},
            "radius has 2 entries but layers has 1 decoder",
        ),
    ],
)
def test_a_recipe_that_cannot_be_built_fails_at_validation_naming_its_key(
    tmp_path: Path, change: dict[str, object], fragment: str
) -> None:
    raw = tiny_recipe(tmp_path / "runs")
    raw["regularizers"][1].update(change)
    with pytest.raises(RecipeError) as info:
        validate_recipe(raw, "recipes/x.toml")
    assert info.value.message.startswith("recipes/x.toml: ") and fragment in info.value.message


def test_a_failed_start_generates_no_data_and_leaves_no_run_folder(
    cli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("MIREG_CACHE", str(cache))
    raw = tiny_recipe(tmp_path / "runs")
    raw["regularizers"][1]["layers"] = ["Conv5", "Up_conv3", "Up_conv9"]
    bad = tmp_path / "bad.toml"
    bad.write_text(dump_toml(raw))
    result = cli("train", bad)
    assert result.code == 1 and "Up_conv9" in result.err and "Traceback" not in result.err
    assert not cache.exists() or not any(cache.iterdir())  # the cohort was never generated
    assert not (tmp_path / "runs").exists()
    # A recipe whose data is missing: the error names it, and no run folder is left behind.
    result = cli(
        "train",
        REPO / "recipes" / "acdc_udaiic.toml",
        "--set",
        f"train.runs_dir={tmp_path / 'r'}",
        "--set",
        f"data.root={tmp_path / 'nowhere'}",
    )
    assert result.code == 1 and "data.root" in result.err
    assert not (tmp_path / "r").exists()
