"""benchmarks/quality.py: the earlier studies' command line, now a front to `mireg study`."""

from __future__ import annotations

from pathlib import Path

from mireg.study.plan import Study
from mireg.study.runs import RunKey

from .helpers import REPO, load_benchmark


def test_the_arguments_become_a_study_of_the_phantom_recipes(tmp_path: Path) -> None:
    q = load_benchmark("quality")
    spec = q.study_spec(
        ["partial", "udaiic", "full"], [0.05, 0.1], [10, 11], tmp_path / "q60", ["train.epochs=60"]
    )
    assert (
        spec.name == "q60" and spec.runs_dir == tmp_path and (spec.baseline, spec.full) == ("partial", "full")
    )
    assert spec.methods["udaiic"].recipe == REPO / "recipes" / "phantom_udaiic.toml"
    study = Study(spec, REPO / "benchmarks" / "quality.py")
    study.check()
    assert study.out == tmp_path / "q60"
    assert len(study.selection_runs()) == 2 * (2 * 2 + 1)  # per seed: two methods at two ratios, and full
    [key] = [k for k in study.selection_runs() if k.name == "udaiic-c0-5pct-s11"]
    raw = study.recipe(key)
    assert raw["train"]["epochs"] == 60 and raw["seed"] == 11 and raw["data"]["labeled_ratio"] == 0.05
    assert isinstance(key, RunKey)


def test_without_full_supervision_there_is_no_gap_to_close(tmp_path: Path) -> None:
    spec = load_benchmark("quality").study_spec(["partial", "udaiic"], [0.05], [10], tmp_path / "q", [])
    assert spec.full is None
