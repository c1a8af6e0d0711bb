"""benchmarks/step.py: times full training steps of any ACDC recipe's method, or of any recipe as it is."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mireg.recipe import dump_toml

from .helpers import load_benchmark, tiny_recipe


def test_every_acdc_recipe_is_a_method_and_a_step_is_timed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    step = load_benchmark("step")
    methods = sorted(p.stem.removeprefix("acdc_") for p in step.RECIPES.glob("acdc_*.toml"))
    assert {"partial", "udaiic", "fixmatch", "unimatch", "cps", "bcp"} <= set(methods)
    argv = ["step.py", "--method", "bcp", "--size", "32", "--labeled-batch", "2"]
    argv += ["--unlabeled-batch", "2", "--steps", "1", "--warmup", "1", "--device", "cpu"]
    monkeypatch.setattr(sys, "argv", argv)
    step.main()
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["method"] == "bcp" and row["size"] == 32 and row["steps"] == 1
    assert row["ms_per_step"] > 0 and row["peak_mem_mb"] > 0


def test_a_recipe_is_timed_as_it_is_with_its_keys_changed_by_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    step = load_benchmark("step")
    raw = tiny_recipe(tmp_path / "runs", regularizers=[])
    raw["backbone"] = {"name": "plain_unet", "num_classes": 4, "stages": 3, "base_channels": 4}
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(dump_toml(raw))
    argv = ["step.py", "--recipe", str(recipe), "--set", "train.labeled_batch=3", "--set"]
    argv += ['train.precision="bf16"', "--steps", "1", "--warmup", "1", "--device", "cpu"]
    monkeypatch.setattr(sys, "argv", argv)
    step.main()
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (row["crop"], row["labeled_batch"], row["unlabeled_batch"]) == (32, 3, 3)
    assert row["precision"] == "bf16" and row["compile"] is False  # the recipe's, as --set left it
    # A supervised step on plain_unet runs the network on the 3 labelled slices alone.
    assert row["images_per_s"] == pytest.approx(3 / (row["ms_per_step"] / 1000), rel=0.05)
    assert not (tmp_path / "runs").exists()  # timing steps writes no run


@pytest.mark.parametrize(
    ("options", "refused"),
    [(["--method", "partial", "--set", "train.epochs=2"], "--set"), (["--size", "32"], "--size")],
)
def test_options_that_would_be_ignored_are_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    refused: str,
) -> None:
    step = load_benchmark("step")
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(dump_toml(tiny_recipe(tmp_path / "runs")))
    argv = ["step.py", *options] + ([] if "--method" in options else ["--recipe", str(recipe)])
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        step.main()
    assert exit_info.value.code == 2 and refused in capsys.readouterr().err
