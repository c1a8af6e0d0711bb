from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import tomllib

from mireg.errors import RecipeError
from mireg.recipe import apply_override, dump_toml, load_recipe, validate_recipe

from .helpers import REPO, tiny_recipe

RECIPES = sorted(p for p in (REPO / "recipes").glob("**/*.toml") if "studies" not in p.parts)


def _ratio_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate", REPO / "recipes" / "ratios" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_recipes() -> None:
    names = {p.stem for p in RECIPES}
    for method in ("partial", "full", "uda", "iic", "udaiic"):
        assert f"acdc_{method}" in names and f"phantom_{method}" in names


def test_the_papers_labelled_ratio_experiments_are_all_there_as_generated() -> None:
    expected = _ratio_generator().expected_files()
    on_disk = {p.name: p.read_text() for p in (REPO / "recipes" / "ratios").glob("*.toml")}
    assert on_disk == expected  # python recipes/ratios/generate.py rewrites them
    for method in ("partial", "entmin", "meanteacher", "uda", "iic", "udaiic", "midl"):
        for pct, ratio in ((2, 0.02), (3, 0.03), (4, 0.04), (5, 0.05), (10, 0.1)):
            recipe = load_recipe(REPO / "recipes" / "ratios" / f"acdc_{method}_{pct}pct.toml")
            base = load_recipe(REPO / "recipes" / f"acdc_{method}.toml")
            assert recipe.data.labeled_ratio == ratio  # type: ignore[attr-defined]
            assert recipe.model_dump(exclude={"name", "data"}) == base.model_dump(exclude={"name", "data"})
    for dataset in ("prostate", "spleen"):
        for method in ("partial", "uda", "iic", "udaiic"):
            for pct in (5, 10):
                assert f"{dataset}_{method}_{pct}pct.toml" in on_disk


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_validates_and_round_trips(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    again = validate_recipe(tomllib.loads(dump_toml(recipe.to_dict())), "dumped")
    assert again == recipe


def test_acdc_recipes_carry_the_papers_defaults() -> None:
    udaiic = load_recipe(REPO / "recipes" / "acdc_udaiic.toml")
    assert udaiic.optim.lr == 1e-7 and udaiic.optim.multiplier == 400
    assert udaiic.train.iterations_per_epoch == 300 and udaiic.train.epochs == 100
    assert udaiic.data.labeled_ratio == 0.05
    weights = {r.name: r.weight for r in udaiic.regularizers}
    assert weights == {"consistency": 10.0, "mutual_information": 0.1}
    full = load_recipe(REPO / "recipes" / "acdc_full.toml")
    assert full.data.labeled_ratio == 1.0 and full.regularizers == []


def _errors(raw: dict, source: str = "r.toml") -> str:
    with pytest.raises(RecipeError) as info:
        validate_recipe(raw, source)
    return info.value.message


def test_errors_name_the_file_and_every_key_path(tmp_path: Path) -> None:
    raw = tiny_recipe(tmp_path)
    raw["regularizers"][0]["wieght"] = 1
    raw["train"]["epochs"] = 0
    raw["optim"]["lr"] = -1
    raw["colour"] = "blue"
    message = _errors(raw, "recipes/x.toml")
    assert message.startswith("recipes/x.toml: 4 problems")
    for fragment in (
        "regularizers[0].wieght: unknown key",
        "train.epochs:",
        "optim.lr:",
        "colour: unknown key",
    ):
        assert fragment in message


def test_plugin_problems_are_reported_with_the_rest(tmp_path: Path) -> None:
    raw = tiny_recipe(tmp_path)
    raw["regularizers"].append({"name": "no_such_thing", "weight": 1})
    raw["backbone"] = {"name": "unet"}
    raw["seed"] = "ten"
    message = _errors(raw)
    assert "regularizers[2].name: unknown regularizer 'no_such_thing'" in message
    assert "backbone.num_classes: missing required key" in message
    assert "seed:" in message


def test_values_out_of_range_are_refused(tmp_path: Path) -> None:
    cases = [
        ("regularizers", [{"name": "consistency", "weight": -1.0}], "regularizers[0].weight"),
        ("data", {**tiny_recipe(tmp_path)["data"], "labeled_ratio": 1.5}, "data.labeled_ratio"),
        (
            "regularizers",
            [{"name": "mutual_information", "weight": 0.1, "radius": [1, -3]}],
            "radius values must be >= 0",
        ),
        ("augment", {"crop": 50}, "augment.crop"),
    ]
    for key, value, fragment in cases:
        assert fragment in _errors({**tiny_recipe(tmp_path), key: value})


def test_toml_syntax_errors_give_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\n[data\n')
    with pytest.raises(RecipeError, match=r"bad.toml: invalid TOML: .*line 2, column"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.toml")


def test_overrides_address_keys_indices_and_plugins_by_name(tmp_path: Path) -> None:
    raw = tiny_recipe(tmp_path)
    apply_override(raw, "train.epochs=7")
    apply_override(raw, "regularizers[0].kind=kl")
    apply_override(raw, "regularizers.mutual_information.weight=0.5")
    apply_override(raw, "regularizers.1.radius=[2, 4]")
    apply_override(raw, "data.name=phantom")  # a bare word is a string
    apply_override(raw, "optim.new_table_key=1")  # created, then refused by validation
    assert raw["train"]["epochs"] == 7
    assert raw["regularizers"][0]["kind"] == "kl"
    assert raw["regularizers"][1]["weight"] == 0.5 and raw["regularizers"][1]["radius"] == [2, 4]
    assert "optim.new_table_key: unknown key" in _errors(raw)


@pytest.mark.parametrize(
    ("assignment", "fragment"),
    [
        ("train.epochs", "expected key.path=value"),
        ("regularizers[5].weight=1", "out of range"),
        ("regularizers.entropy.weight=1", "no entry named"),
        ("seed.x=1", "is a value"),
    ],
)
def test_bad_overrides_are_explained(tmp_path: Path, assignment: str, fragment: str) -> None:
    with pytest.raises(RecipeError, match=fragment):
        apply_override(tiny_recipe(tmp_path), assignment)
