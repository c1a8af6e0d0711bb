"""Does flip test-time augmentation or keeping the largest component help? Measured on finished runs.

    python benchmarks/inference.py RUN_DIR... [--out inference.json]

Evaluates the best checkpoint of each run on its validation and test splits four ways: plain,
``tta``, ``largest`` and both (:mod:`mireg.inference`), and prints per option the mean over runs of
each run's mean 3D DSC and HD95 (over volumes and structures), the mean paired difference to plain,
and on how many runs the option raised the DSC. Nothing is written into the runs.

Selection rule, fixed before any number was seen: an option becomes a default of a recipe only if,
on the validation split, it raises the mean DSC over runs by at least 0.1 points, raises it on a
majority of the runs, and does not raise the mean HD95. The test split is reported for every option,
chosen or not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mireg.evaluation.evaluate import evaluate_volumes, summarize
from mireg.inference import InferenceOptions
from mireg.training.rundir import RunDir
from mireg.training.state import load_trained

OPTIONS = {
    "plain": InferenceOptions(),
    "tta": InferenceOptions(tta=True),
    "largest": InferenceOptions(keep_largest=True),
    "tta+largest": InferenceOptions(tta=True, keep_largest=True),
}


def measure(run_dir: Path) -> dict[str, Any]:
    """``{split: {option: {"dice": mean DSC, "hd95": mean HD95, "undefined": HD95s undefined}}}``."""
    run = RunDir.open(run_dir)
    trained = load_trained(run.checkpoint("best"), torch.device("cpu"))
    store = trained.recipe.data.load()
    recipe = trained.recipe
    out: dict[str, Any] = {"run": run_dir.name, "epoch": trained.checkpoint.epoch, "seed": recipe.seed}
    for split in ("validation", "test"):
        patients = getattr(run.split(), split)
        out[split] = {}
        for name, options in OPTIONS.items():
            batch = recipe.train.eval_batch
            results = evaluate_volumes(trained.model, store, patients, batch, options=options)
            summary = summarize(results, store.classes[1:])
            dice, hd95 = summary["dice"]["all"]["mean"], summary["hd95"]["all"]["mean"]
            out[split][name] = {"dice": dice["mean"], "hd95": hd95["mean"], "undefined": hd95["undefined"]}
    return out


def table(measured: list[dict[str, Any]], split: str) -> list[str]:
    """Markdown rows: option, mean DSC, paired DSC difference, runs improved, mean HD95, its difference."""
    rows = [
        f"| {split} | DSC (%) | Δ DSC vs plain (points) | runs with higher DSC | HD95 (mm) | Δ HD95 (mm) |",
        "|---|---|---|---|---|---|",
    ]
    for name in OPTIONS:
        dice = np.array([100 * m[split][name]["dice"] for m in measured])
        plain = np.array([100 * m[split]["plain"]["dice"] for m in measured])
        hd = np.array([m[split][name]["hd95"] for m in measured])
        hd_plain = np.array([m[split]["plain"]["hd95"] for m in measured])
        undefined = sum(m[split][name]["undefined"] for m in measured)
        better = int((dice > plain).sum())
        note = f" ({undefined} undef.)" if undefined else ""
        rows.append(
            f"| {name} | {dice.mean():.2f} | {(dice - plain).mean():+.2f} | {better} of {len(measured)} | "
            f"{hd.mean():.2f}{note} | {(hd - hd_plain).mean():+.2f} |"
        )
    return rows


def chosen(measured: list[dict[str, Any]]) -> dict[str, bool]:
    """The selection rule (module docstring) applied to the validation numbers of each option."""
    out = {}
    for name in ("tta", "largest"):
        dice = np.array([m["validation"][name]["dice"] - m["validation"]["plain"]["dice"] for m in measured])
        hd = np.array([m["validation"][name]["hd95"] - m["validation"]["plain"]["hd95"] for m in measured])
        out[name] = bool(100 * dice.mean() >= 0.1 and (dice > 0).sum() > len(measured) / 2 and hd.mean() <= 0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    parser.add_argument("--out", type=Path, help="write every number as JSON")
    args = parser.parse_args()
    measured = []
    for run in args.runs:
        measured.append(measure(run))
        print(f"{run.name}: {json.dumps(measured[-1])}", flush=True)
    for split in ("validation", "test"):
        print("\n".join(["", *table(measured, split)]))
    print(f"\nselection rule on validation: {chosen(measured)}")
    if args.out is not None:
        args.out.write_text(json.dumps({"runs": measured, "chosen": chosen(measured)}, indent=1))


if __name__ == "__main__":
    main()
