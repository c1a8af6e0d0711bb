"""The quality study's bookkeeping: grouping over seeds, the gap closed, the table and the plot."""

from __future__ import annotations

from pathlib import Path

from .helpers import REPO, load_benchmark


def test_table_reports_mean_std_over_seeds_and_the_share_of_the_gap_closed(tmp_path: Path) -> None:
    q = load_benchmark("quality")
    runs = [
        q.Run("full", 1.0, 10, dice=0.90, hd95=10.0, seconds=600),
        q.Run("full", 1.0, 11, dice=0.88, hd95=12.0, seconds=600),
        q.Run("partial", 0.05, 10, dice=0.70, hd95=40.0, seconds=540),
        q.Run("partial", 0.05, 11, dice=0.68, hd95=44.0, seconds=540),
        q.Run("udaiic", 0.05, 10, dice=0.80, hd95=20.0, seconds=900),
        q.Run("udaiic", 0.05, 11, dice=0.78, hd95=22.0, seconds=900),
    ]
    text = q.table(runs)
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "| 5 % | 2 | 69.0 ± 1.4 | 42.0 ± 2.8 |  | 9.0 |" in rows["partial"]
    assert "| 100 % | 2 | 89.0 ± 1.4 | 11.0 ± 1.4 |  | 10.0 |" in rows["full"]
    assert "| 5 % | 2 | 79.0 ± 1.4 | 21.0 ± 1.4 | 50 % | 15.0 |" in rows["udaiic"]  # (79-69)/(89-69)
    assert "6 runs, 68 min of training in all" in text
    q.plot(runs, tmp_path / "quality.png")
    assert (tmp_path / "quality.png").stat().st_size > 0


def test_the_gap_closed_is_na_without_both_baselines() -> None:
    q = load_benchmark("quality")
    runs = [
        q.Run("full", 1.0, 10, dice=0.90, hd95=10.0, seconds=600),
        q.Run("udaiic", 0.1, 10, dice=0.80, hd95=20.0, seconds=900),
    ]  # no partial at 10 %
    [row] = [line for line in q.table(runs).splitlines() if line.startswith("| udaiic")]
    assert row.endswith("| n/a | 15.0 |")


def test_run_names_keep_method_ratio_and_seed_apart() -> None:
    q = load_benchmark("quality")
    assert q.Run("udaiic", 0.05, 11).name == "udaiic_5pct_seed11"
    assert q.Run("full", 1.0, 10).name == "full_all_seed10"


def test_each_run_gets_its_own_name_seed_and_ratio_then_the_study_overrides(tmp_path: Path) -> None:
    q = load_benchmark("quality")
    command = q.train_command(q.Run("udaiic", 0.05, 11), tmp_path, ["train.epochs=40"])
    assert command[:2] == ["train", str(REPO / "recipes" / "phantom_udaiic.toml")]
    assert command[2::2] == ["--set"] * 5
    assert command[3::2] == [
        "name=udaiic_5pct_seed11",
        "seed=11",
        f"train.runs_dir={tmp_path}",
        "data.labeled_ratio=0.05",
        "train.epochs=40",
    ]
    full = q.train_command(q.Run("full", 1.0, 10), tmp_path, [])
    assert not any(o.startswith("data.labeled_ratio") for o in full)  # full uses every label
