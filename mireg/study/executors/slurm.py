"""Runs as Slurm jobs (``--executor slurm``), submitted with submitit; one job per run.

**Submitting.** Each run becomes one batch job (``mireg-RUN``) that trains or resumes it
(:class:`RunJob`). The job's id is kept beside the study's logs, in ``slurm/RUN.job``; submitit's
own files (the sbatch script, the job's log) are in ``slurm/JOBID/``.

**Following.** The study polls ``squeue`` for its jobs, one call for all of them. A job that left the
queue is judged by the run folder (finished or not) and the last state the study saw, so the study
needs no accounting database (``sacct``): many lab clusters run without one.

**Reattaching.** A study started again (after Ctrl+C, from another login node with the study folder
on shared storage) reads the job files and follows the jobs still in the queue instead of submitting
their runs again.

**Preemption and time limits.** Slurm warns a job ``signal_delay_s`` before its time limit with
SIGUSR2, and preemption sends SIGTERM then SIGUSR2. :class:`RunJob` passes the stop on to
``mireg train``, which saves a checkpoint after its current step, and submitit requeues the job,
which then resumes the run from that checkpoint: resuming is exact, so the run ends as it would have
without the interruption.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mireg.errors import MiregError
from mireg.files import atomic_write_text
from mireg.processes import ending_with_parent
from mireg.study.executors.base import INTERRUPTED_CODES, Ending, Executor, Handle, Launch
from mireg.study.runs import resumable, trained_by
from mireg.training.rundir import RunDir

__all__ = ["RunJob", "SlurmExecutor", "SlurmOptions", "parse_time"]

#: States of a job that is still in the queue or running; any other state is final.
LIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "SUSPENDED",
        "STOPPED",
    }
)
#: Final states after which the run kept its checkpoint and a rerun of the study resumes it.
STOPPED_STATES = frozenset({"CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "DEADLINE"})


def parse_time(text: str, option: str = "--time") -> int:
    """Minutes in a Slurm time limit: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM`` or
    ``D-HH:MM:SS`` (seconds round up to a whole minute).

    Raises:
        MiregError: ``text`` is not such a time; names ``option``.
    """
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if match is None:
        raise MiregError(
            f"{option}: {text!r} is not a Slurm time limit",
            "write minutes (240), HH:MM:SS (4:00:00) or D-HH:MM:SS (1-12:00:00)",
        )
    days, first, second, third = match.groups()
    first_n, second_n, third_n = int(first), int(second or 0), int(third or 0)
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + first_n * 3600 + second_n * 60 + third_n
    elif third is not None:  # HH:MM:SS
        seconds = first_n * 3600 + second_n * 60 + third_n
    else:  # MM[:SS]
        seconds = first_n * 60 + second_n
    if seconds <= 0:
        raise MiregError(f"{option}: {text!r} is no time at all", "give each run a positive time limit")
    return -(-seconds // 60)


@dataclass(frozen=True)
class SlurmOptions:
    """What each run's job asks of the cluster.

    Attributes:
        partition, account, qos: ``--partition``, ``--account``, ``--qos`` (None: the cluster's
            default).
        time: Time limit of one job in minutes; a run that needs longer is requeued at the limit and
            resumes from its checkpoint.
        gpus: GPUs per run (more than one: the run trains under ``torchrun``, one process per GPU;
            None: one when the study trains on CUDA, else none).
        cpus: CPU cores per run (its data loading and, on the CPU, its OpenMP threads).
        mem: Memory per run (``--mem``, e.g. ``32G``; None: the cluster's default).
        sbatch: Further sbatch options, each ``--name=value`` or ``--flag``.
        signal_delay_s: Seconds before the time limit at which the job is told to checkpoint.
        requeues: How many time limits one run may hit (each requeues it) before it is reported
            failed.
        grace_s: Seconds a job whose run was stopped by a signal waits for Slurm's requeue signal
            before it ends.
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: int = 24 * 60
    gpus: int | None = None
    cpus: int = 4
    mem: str | None = None
    sbatch: tuple[str, ...] = field(default_factory=tuple)
    signal_delay_s: int = 120
    requeues: int = 50
    grace_s: float = 60.0

    def parameters(self) -> dict[str, Any]:
        """submitit's ``SlurmExecutor`` parameters."""
        extra: dict[str, Any] = {}
        for option in self.sbatch:
            name, sep, value = option.removeprefix("--").partition("=")
            if not option.startswith("--") or not name:
                raise MiregError(
                    f"--sbatch: {option!r} is not an sbatch option", "write it as --name=value or --flag"
                )
            extra[name.replace("-", "_")] = value if sep else True
        params: dict[str, Any] = {
            "time": self.time,
            "nodes": 1,
            "ntasks_per_node": 1,
            "cpus_per_task": self.cpus,
            "signal_delay_s": self.signal_delay_s,
            "stderr_to_stdout": True,
            "additional_parameters": extra,
        }
        if self.gpus:
            params["gpus_per_node"] = self.gpus
        for name in ("partition", "account", "qos", "mem"):
            if getattr(self, name) is not None:
                params[name] = getattr(self, name)
        return params


@dataclass(frozen=True)
class _Job:
    """A run's job as the study follows it."""

    job_id: str
    log: Path  # Slurm's log of the job
    run: Path  # the run folder


class SlurmExecutor(Executor):
    """Submits each run as a Slurm job, at most ``capacity`` in the queue at once.

    Args:
        folder: Where the job files go (the study's ``slurm/``); on storage the login and compute
            nodes share.
        options: What each job asks for.
        capacity: Runs queued or running at once.
        poll_s: Seconds between two looks at the queue.
    """

    name = "slurm"

    def __init__(self, folder: Path, options: SlurmOptions, capacity: int, poll_s: float = 5.0) -> None:
        super().__init__(capacity, processes=options.gpus or 1)
        self.folder = folder
        self.options = options
        self.poll_s = poll_s
        self.parameters = options.parameters()
        self._last_poll = 0.0
        self._states: dict[str, tuple[str, str]] = {}  # job id -> (state, reason), as last seen

    # ---------------------------------------------------------------------------------- job files

    def job_file(self, name: str) -> Path:
        """Where the id of run ``name``'s job is kept."""
        return self.folder / f"{name}.job"

    def _read_job(self, name: str) -> _Job | None:
        try:
            data = json.loads(self.job_file(name).read_text())
            return _Job(str(data["job_id"]), Path(data["log"]), Path(data["run"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # ------------------------------------------------------------------------------------ the queue

    def _squeue(self, job_ids: list[str]) -> dict[str, tuple[str, str]]:
        """``{job id: (state, reason)}`` of those of ``job_ids`` that Slurm still knows."""
        if not job_ids:
            return {}
        command = ["squeue", "--noheader", "--states=all", f"--jobs={','.join(job_ids)}", "--format=%i|%T|%r"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except FileNotFoundError as exc:
            raise MiregError(
                "--executor slurm: squeue is not on PATH", "run the study on a Slurm login node"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise MiregError(
                "squeue did not answer within 120 s", "is slurmctld up? run the study again later"
            ) from exc
        if done.returncode != 0:
            if "Invalid job id" in done.stderr:  # none of them is known any more
                return {}
            raise MiregError(f"squeue failed: {done.stderr.strip() or done.returncode}")
        states: dict[str, tuple[str, str]] = {}
        for line in done.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3 and parts[0] in job_ids:
                states[parts[0]] = (parts[1], "" if parts[2] in ("None", "(null)") else parts[2])
        return states

    def _refresh(self, jobs: list[_Job], force: bool = False) -> None:
        if not force and time.monotonic() - self._last_poll < self.poll_s:
            return
        self._last_poll = time.monotonic()
        ids = [j.job_id for j in jobs]
        seen = self._squeue(ids)
        for job_id in ids:
            if job_id in seen:
                self._states[job_id] = seen[job_id]
            elif self._states.get(job_id, ("", ""))[0] in LIVE_STATES | {""}:
                self._states[job_id] = ("GONE", "no longer in the queue")

    # ------------------------------------------------------------------------------ the executor

    def attach(self, launch: Launch) -> Handle | None:
        job = self._read_job(launch.name)
        if job is None:
            return None
        self._refresh([job], force=True)
        if self._states[job.job_id][0] in LIVE_STATES:
            return job
        return None

    def start(self, launch: Launch, arguments: list[str], slot: int) -> Handle:
        import submitit

        executor = submitit.SlurmExecutor(folder=self.folder / "%j", max_num_timeout=self.options.requeues)
        executor.update_parameters(job_name=f"mireg-{launch.name}", **self.parameters)
        try:
            job = executor.submit(RunJob(launch, self.options.cpus, self.options.grace_s))
        except subprocess.CalledProcessError as exc:  # sbatch refused the job
            output = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else str(exc.output)
            raise MiregError(
                f"sbatch refused run {launch.name}: {output.strip()}",
                "check the --partition, --account, --qos and --sbatch options",
            ) from exc
        record = _Job(str(job.job_id), Path(job.paths.stdout), launch.run)
        data = {"job_id": record.job_id, "log": str(record.log), "run": str(record.run)}
        atomic_write_text(self.job_file(launch.name), json.dumps(data) + "\n")
        self._states[record.job_id] = ("PENDING", "")
        return record

    def poll(self, handles: Mapping[str, Handle]) -> dict[str, Ending]:
        jobs = {name: job for name, job in handles.items() if isinstance(job, _Job)}
        self._refresh(list(jobs.values()))
        ended: dict[str, Ending] = {}
        for name, job in jobs.items():
            state, reason = self._states.get(job.job_id, ("PENDING", ""))
            if state in LIVE_STATES:
                continue
            ended[name] = self._ending(job, state, reason)
        return ended

    def _ending(self, job: _Job, state: str, reason: str) -> Ending:
        note = f"Slurm job {job.job_id} {state}{f' ({reason})' if reason else ''}, Slurm log {job.log}"
        run = RunDir(job.run)
        if run.finished:
            return Ending("done")
        if state in STOPPED_STATES and resumable(trained_by(run) or "mireg", run):  # mireg's or nnU-Net's
            return Ending("interrupted", note)
        return Ending("failed", note)

    def describe(self, handles: Mapping[str, Handle]) -> str:
        by_state: dict[str, list[str]] = {}
        for job in handles.values():
            if isinstance(job, _Job):
                state = self._states.get(job.job_id, ("PENDING", ""))[0]
                by_state.setdefault(state.lower(), []).append(job.job_id)
        parts = [f"{len(ids)} {state} (jobs {', '.join(ids)})" for state, ids in sorted(by_state.items())]
        return "; ".join(parts)

    def stop(self, handles: Mapping[str, Handle]) -> str:
        ids = [job.job_id for job in handles.values() if isinstance(job, _Job)]
        if not ids:
            return ""
        return (
            f"{len(ids)} Slurm jobs stay queued ({', '.join(ids)}): run the same command again to follow "
            f"them and write the report, or scancel {' '.join(ids)} to stop them"
        )

    def queue(self) -> list[list[str]]:
        """``[run, job id, state, reason]`` of every job the study submitted, for ``--plan``; a job
        Slurm no longer knows shows as ``gone``."""
        names = sorted(p.stem for p in self.folder.glob("*.job"))
        jobs = {name: job for name in names if (job := self._read_job(name)) is not None}
        self._refresh(list(jobs.values()), force=True)
        rows = []
        for name, job in jobs.items():
            state, reason = self._states[job.job_id]
            rows.append([name, job.job_id, state.lower(), reason])
        return rows


class RunJob:
    """What a study's Slurm job runs: train or resume one run in a ``mireg`` subprocess.

    On Slurm's checkpoint signal (SIGUSR2, before a time limit or after a preemption's SIGTERM),
    submitit calls :meth:`checkpoint`: the run is told to stop (SIGTERM: it saves a checkpoint after
    its current step), and submitit requeues the job with a fresh :class:`RunJob`, which resumes it.

    Args:
        launch: The run.
        threads: OpenMP threads of the run (the job's CPU cores).
        grace_s: How long to wait for the requeue signal after the run was stopped by a signal.
    """

    def __init__(self, launch: Launch, threads: int, grace_s: float = 60.0) -> None:
        self.launch = launch
        self.threads = threads
        self.grace_s = grace_s
        self._process: subprocess.Popen[bytes] | None = None
        self._code: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"launch": self.launch, "threads": self.threads, "grace_s": self.grace_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["launch"], state["threads"], state["grace_s"])  # type: ignore[misc]

    def __call__(self) -> str:
        launch = self.launch
        arguments = launch.arguments()
        if arguments is None:
            return f"{launch.name}: finished"
        launch.log.parent.mkdir(parents=True, exist_ok=True)
        with open(launch.log, "ab") as fh:
            self._process = subprocess.Popen(
                launch.command(arguments),
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=launch.environment(self.threads),
                preexec_fn=_run_process_setup,
            )
        # The blocking wait happens in a thread: this (main) thread must stay free for the signal
        # handler, which waits for the same process to stop.
        threading.Thread(target=self._wait, daemon=True).start()
        while self._code is None:
            time.sleep(0.2)
        if self._code == 0:
            return f"{launch.name}: finished"
        if self._code in INTERRUPTED_CODES:  # Slurm stopped it: a requeue signal may follow
            time.sleep(self.grace_s)
            raise RuntimeError(
                f"{launch.name}: stopped by a signal at a checkpoint; running the study again resumes it "
                f"(its log: {launch.log})"
            )
        raise RuntimeError(
            f"{launch.name}: mireg {arguments[0]} exited with code {self._code} (its log: {launch.log})"
        )

    def _wait(self) -> None:
        assert self._process is not None
        self._code = self._process.wait()

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Stop the run at a checkpoint; the job requeued resumes it (called by submitit)."""
        import submitit

        if self._process is not None and self._code is None:
            self._process.send_signal(signal.SIGTERM)
            while self._code is None:
                time.sleep(0.2)
        return submitit.helpers.DelayedSubmission(RunJob(self.launch, self.threads, self.grace_s))


def _run_process_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    """The run ignores Slurm's checkpoint signals (its job passes them on as SIGTERM) and ends with
    its job."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    setup = ending_with_parent()
    if setup is not None:
        setup()
