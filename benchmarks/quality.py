"""The semi-supervised gain on the synthetic cohort, as the earlier studies in docs/quality.md ran it.

    python benchmarks/quality.py [--methods partial udaiic full] [--ratios 0.05 0.1 0.25]
        [--seeds 10 11 12] [--out runs/quality] [--jobs 2] [--set train.epochs=40 ...]

A thin front to `mireg study` (mireg.study): the methods are `recipes/phantom_<method>.toml` as they
are (no grid), `--set` overrides every run, and the study is written to `--out` (its runs under
`--out/runs/`, its report as `--out/study.md|json|csv|png`). New studies are better written as study
files: `recipes/studies/phantom.toml` is this one with the validation-only grid.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mireg.errors import MiregError
from mireg.study.executors import LocalExecutor
from mireg.study.plan import Study
from mireg.study.report import summarize_study, write_study_report
from mireg.study.runner import run_study
from mireg.study.spec import MethodSpec, StudySpec

REPO = Path(__file__).resolve().parents[1]


def study_spec(
    methods: list[str], ratios: list[float], seeds: list[int], out: Path, overrides: list[str]
) -> StudySpec:
    """The study the arguments describe: each method's phantom recipe at each ratio and seed."""
    return StudySpec(
        name=out.name,
        runs_dir=out.parent,
        methods={m: MethodSpec(recipe=REPO / "recipes" / f"phantom_{m}.toml") for m in methods},
        baseline="partial" if "partial" in methods else methods[0],
        full="full" if "full" in methods else None,
        labeled_ratios=ratios,
        seeds=seeds,
        set=overrides,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["partial", "udaiic", "full"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.05, 0.1, 0.25])
    parser.add_argument("--seeds", nargs="+", type=int, default=[10, 11, 12])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "quality")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (threads are shared)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override every run's recipe (repeatable), as `mireg train --set`",
    )
    args = parser.parse_args()
    spec = study_spec(args.methods, args.ratios, args.seeds, args.out, args.overrides)
    try:
        study = Study(spec, Path(__file__))
        study.check()
        records = run_study(study, LocalExecutor(args.jobs))
        paths = write_study_report(study, records, summarize_study(study, records))
    except MiregError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(paths[0].read_text())
    print(f"wrote {', '.join(str(p) for p in paths)}")


if __name__ == "__main__":
    main()
