"""``mireg study --executor slurm`` against a real Slurm: a single-node cluster of local processes
(:mod:`tests.slurm_cluster`), started once for this module. Skipped, with the reason, where Slurm
is not installed or cannot start (another OS, not root).

The option parsing and error tests at the top need no cluster.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mireg.errors import MiregError
from mireg.recipe import dump_toml
from mireg.study.executors.slurm import SlurmExecutor, SlurmOptions, _Job, parse_time

from .helpers import tiny_recipe, wait_for
from .slurm_cluster import SlurmCluster, why_not
from .test_study import _recipes, _study_file

ONE_RUN = """
name = "s"
seeds = [1]
labeled_ratios = [0.5]
full = "partial"
[methods.partial]
recipe = "partial.toml"
"""

# ------------------------------------------------------------------------------ without a cluster


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("240", 240), ("90:30", 91), ("4:00:00", 240), ("1-12:00:00", 2160), ("2-6", 3240), ("0-0:30", 30)],
)
def test_time_limits_are_read_as_slurm_writes_them(text: str, minutes: int) -> None:
    assert parse_time(text) == minutes


@pytest.mark.parametrize("text", ["", "4h", "1:2:3:4", "-5", "0", "0:00:00"])
def test_a_time_limit_slurm_would_not_take_is_refused_naming_the_option(text: str) -> None:
    with pytest.raises(MiregError, match="--time"):
        parse_time(text)


def test_extra_sbatch_options_reach_the_job_and_a_malformed_one_is_named() -> None:
    options = SlurmOptions(partition="gpu", gpus=2, mem="32G", sbatch=("--constraint=a100", "--exclusive"))
    params = options.parameters()
    assert params["partition"] == "gpu" and params["gpus_per_node"] == 2 and params["mem"] == "32G"
    assert params["additional_parameters"] == {"constraint": "a100", "exclusive": True}
    assert "account" not in params and "qos" not in params
    with pytest.raises(MiregError, match="'constraint=a100'"):
        SlurmOptions(sbatch=("constraint=a100",)).parameters()


def test_a_job_slurm_stopped_is_interrupted_when_its_run_can_resume_by_either_engine(tmp_path: Path) -> None:
    executor = SlurmExecutor(tmp_path / "slurm", SlurmOptions(), 1)

    def ending(run: Path, state: str = "TIMEOUT") -> str:
        return executor._ending(_Job("7", tmp_path / "job.log", run), state, "").status

    mine, theirs, fresh = tmp_path / "mireg", tmp_path / "nnunet", tmp_path / "fresh"
    mine.mkdir()
    (mine / "last.pt").write_bytes(b"checkpoint")
    (theirs / "nnunet").mkdir(parents=True)  # an nnU-Net run: its tree, no last.pt
    (theirs / "recipe.toml").write_text('name = "r"\n')
    fresh.mkdir()
    assert ending(mine) == ending(theirs) == "interrupted"
    assert ending(fresh) == "failed" and ending(theirs, "FAILED") == "failed"


def test_a_bad_time_limit_on_the_command_line_is_an_error_without_a_traceback(tmp_path: Path) -> None:
    _recipes(tmp_path)
    path = _study_file(tmp_path, ONE_RUN)
    command = [sys.executable, "-m", "mireg", "study", str(path), "--executor", "slurm", "--time", "4h"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 1
    assert "--time: '4h' is not a Slurm time limit" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------- on a cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    reason = why_not()
    if reason is None and importlib.util.find_spec("submitit") is None:
        reason = "submitit is not installed (pip install 'mireg[slurm]')"
    if reason is not None:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        pytest.skip(f"Slurm did not start here: {exc}")
    yield cluster
    cluster.stop()


def _study(
    cluster: SlurmCluster, path: Path, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mireg", "study", str(path), *args]
    env = {**cluster.env, "COLUMNS": "200"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def _slurm_study(cluster: SlurmCluster, path: Path, *args: str) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        "-m",
        "mireg",
        "study",
        str(path),
        "--executor",
        "slurm",
        "--cpus-per-run",
        "1",
        *args,
    ]
    env = {**cluster.env, "COLUMNS": "200"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _study_json(root: Path) -> dict[str, Any]:
    """A study's study.json but for the minutes runs took and the folder it lies in."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if "minutes" not in k}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value.replace(str(root), "<root>") if isinstance(value, str) else value

    return strip(json.loads((root / "out" / "s" / "study.json").read_text()))


def _job_id(study: Path, run: str) -> str:
    return str(json.loads((study / "out" / "s" / "slurm" / f"{run}.job").read_text())["job_id"])


GRID = """
name = "s"
seeds = [1, 2]
select_seeds = [1]
labeled_ratios = [0.5]
[methods.partial]
recipe = "partial.toml"
[methods.partial.grid]
"optim.lr" = [1e-5, 3e-5]
[methods.full]
recipe = "full.toml"
"""


def test_each_run_is_a_slurm_job_chosen_on_validation_first_and_the_report_equals_a_local_one(
    cluster: SlurmCluster, tmp_path: Path
) -> None:
    here, there = tmp_path / "here", tmp_path / "there"
    for root in (here, there):
        root.mkdir()
        _recipes(root)
        _study_file(root, GRID)
    local = _study(cluster, here / "study.toml", "--jobs", "2")
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    proc = _slurm_study(cluster, there / "study.toml")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert _study_json(there) == _study_json(here)

    runs = sorted(p.name for p in (there / "out" / "s" / "runs").iterdir())
    assert len(runs) == 5
    jobs = {j["JobId"]: j for j in cluster.jobs_completed() if j.get("Name", "").startswith("mireg-")}
    by_run = {run: jobs[_job_id(there, run)] for run in runs}
    assert {j["Name"] for j in by_run.values()} == {f"mireg-{run}" for run in runs}
    assert all(j["JobState"] == "COMPLETED" for j in by_run.values())
    held_out = [r for r in runs if r.startswith("partial") and r.endswith("-s2")]
    selection = [r for r in runs if r.startswith("partial") and r.endswith("-s1")]
    assert len(held_out) == 1 and len(selection) == 2
    chosen_after = by_run[held_out[0]]["StartTime"]
    assert all(by_run[r]["EndTime"] <= chosen_after for r in selection)
    assert re.search(r"\d+ running \(jobs [\d, ]+\)", out), out[-3000:]


RUN = "partial-c0-all-s1"


@pytest.fixture(scope="module")
def uninterrupted(cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one-run study trained here without a stop: the run folder every stopped one must equal.
    One OpenMP thread, as in the jobs (--cpus-per-run 1): the thread count moves the CPU's sums."""
    root = tmp_path_factory.mktemp("uninterrupted")
    _recipes(root, epochs=3, iterations=30)
    done = _study(cluster, _study_file(root, ONE_RUN), "--jobs", str(os.cpu_count() or 1))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root / "out" / "s" / "runs" / RUN


def _same_run(run: Path, reference: Path) -> None:
    def metrics(path: Path) -> list[list[str]]:
        rows = [line.split(",") for line in (path / "metrics.csv").read_text().splitlines()]
        seconds = rows[0].index("seconds")
        return [row[:seconds] + row[seconds + 1 :] for row in rows]

    assert metrics(run) == metrics(reference)
    assert (run / "report.json").read_bytes() == (reference / "report.json").read_bytes()


def _one_run_training(cluster: SlurmCluster, root: Path) -> tuple[Path, Path, subprocess.Popen[str], str]:
    """The one-run study started on Slurm and waited for until its run has saved a checkpoint: the
    study file, the run folder, the study process and the run's job id."""
    _recipes(root, epochs=3, iterations=30)
    path = _study_file(root, ONE_RUN)
    run = root / "out" / "s" / "runs" / RUN
    proc = _slurm_study(cluster, path)
    wait_for(lambda: (run / "last.pt").is_file(), every=0.5)
    return path, run, proc, _job_id(root, RUN)


def test_a_cancelled_job_is_reported_and_the_study_run_again_resumes_it(
    cluster: SlurmCluster, tmp_path: Path, uninterrupted: Path
) -> None:
    path, run, proc, job = _one_run_training(cluster, tmp_path)
    subprocess.run(["scancel", job], env=cluster.env, check=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out[-3000:]
    flat = " ".join(out.split())
    assert "1 of 1 runs did not finish" in flat, out[-3000:]
    study_md = (tmp_path / "out" / "s" / "study.md").read_text()
    assert f"Slurm job {job} CANCELLED" in study_md and f"slurm/{job}/{job}_0_log.out" in study_md
    assert not (run / "report.json").exists()

    plan = _study(cluster, path, "--plan", "--executor", "slurm")
    assert plan.returncode == 0, plan.stderr
    assert re.search(rf"{RUN}\s+{job}\s+cancelled", plan.stdout), plan.stdout

    again = _slurm_study(cluster, path)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out[-3000:]
    assert _job_id(tmp_path, RUN) != job  # a new job resumed it
    assert "resuming" in (tmp_path / "out" / "s" / "logs" / f"{RUN}.log").read_text()
    _same_run(run, uninterrupted)


def test_a_job_slurm_stops_is_requeued_and_its_run_ends_as_if_never_stopped(
    cluster: SlurmCluster, tmp_path: Path, uninterrupted: Path
) -> None:
    path, run, proc, job = _one_run_training(cluster, tmp_path)
    # Preemption as Slurm does it: SIGTERM to the job's processes, then the checkpoint signal
    # (SIGUSR2, which a time limit sends alone, --signal=USR2@120 in each job's script).
    for sig in ("TERM", "USR2"):
        subprocess.run(["scancel", f"--signal={sig}", job], env=cluster.env, check=True)

    def requeued() -> bool:
        out = subprocess.run(
            ["scontrol", "show", "job", job], env=cluster.env, capture_output=True, text=True
        ).stdout
        return "Restarts=1" in out

    wait_for(requeued, timeout=120, every=0.5)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert _job_id(tmp_path, RUN) == job  # the same job, requeued, not a new submission
    states = [j["JobState"] for j in cluster.jobs_completed() if j["JobId"] == job]
    assert states[-1] == "COMPLETED" and len(states) == 2, states
    log = (tmp_path / "out" / "s" / "logs" / f"{RUN}.log").read_text()
    assert "SIGTERM: saving a checkpoint" in log and "resuming" in log
    _same_run(run, uninterrupted)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_study_started_again_follows_its_jobs_still_queued_instead_of_submitting_them_twice(
    cluster: SlurmCluster, tmp_path: Path, stop: signal.Signals
) -> None:
    _recipes(tmp_path, epochs=2, iterations=20)
    path = _study_file(tmp_path, ONE_RUN)
    proc = _slurm_study(cluster, path)
    wait_for(lambda: (tmp_path / "out" / "s" / "slurm" / f"{RUN}.job").is_file(), every=0.5)
    job = _job_id(tmp_path, RUN)
    proc.send_signal(stop)  # Ctrl+C or kill on the login node: the job stays queued
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out[-3000:]
    assert f"1 Slurm jobs stay queued ({job})" in " ".join(out.split())
    assert job in cluster.squeue("--noheader", "--format=%i")
    again = _slurm_study(cluster, path)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out[-3000:]
    assert _job_id(tmp_path, RUN) == job
    named = [j for j in cluster.jobs_completed() if j.get("Name") == f"mireg-{RUN}" and j["JobId"] == job]
    assert [j["JobState"] for j in named] == ["COMPLETED"]
    assert (tmp_path / "out" / "s" / "runs" / RUN / "report.json").is_file()


SBATCH = Path(__file__).resolve().parents[1] / "docs" / "slurm" / "train.sbatch"


def test_the_documented_sbatch_script_trains_one_run_under_torchrun_and_resumes_it_after_a_requeue(
    cluster: SlurmCluster, tmp_path: Path
) -> None:
    raw = tiny_recipe(tmp_path, name="one")
    raw["train"].update(epochs=3, iterations_per_epoch=30, unlabeled_batch=4, runs_dir=str(tmp_path / "runs"))
    (tmp_path / "one.toml").write_text(dump_toml(raw))
    env = {**cluster.env, "MIREG_PROCESSES": "2", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    # The same run, uninterrupted, as the script starts it (two gloo processes, one thread each).
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    reference = tmp_path / "reference.toml"
    reference.write_text(
        dump_toml({**raw, "train": {**raw["train"], "runs_dir": str(tmp_path / "reference")}})
    )
    done = subprocess.run([*torchrun, "-m", "mireg", "train", str(reference)], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "runs" / "one"
    submit = ["sbatch", "--parsable", "--cpus-per-task=2", str(SBATCH), str(tmp_path / "one.toml"), str(run)]
    job = subprocess.run(
        submit, env=env, cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.strip()
    wait_for(lambda: (run / "last.pt").is_file(), every=0.5)
    subprocess.run(
        ["scancel", "--batch", "--signal=TERM", job], env=env, check=True
    )  # the time limit's warning

    def requeued() -> bool:
        out = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
        return "Restarts=1" in out

    wait_for(requeued, timeout=120, every=0.5)
    wait_for(
        lambda: [j["JobState"] for j in cluster.jobs_completed() if j["JobId"] == job][-1:] == ["COMPLETED"],
        every=0.5,
    )
    log = (tmp_path / f"mireg-train-{job}.out").read_text()
    assert "checkpointing, then requeueing" in log and "resuming" in log
    _same_run(run, tmp_path / "reference" / "one")
