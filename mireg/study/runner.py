"""Training a study's runs: ``mireg train`` (or ``mireg nnunet``) subprocesses, at most ``jobs`` at a
time, selection runs first, then the configurations chosen on validation (:func:`run_study`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from mireg.files import atomic_write_text
from mireg.processes import ending_with_parent
from mireg.study.plan import Study, duration, minutes_left
from mireg.study.runs import RunKey, RunRecord
from mireg.training.workflow import next_step

__all__ = ["Runner", "gpu_count", "run_study"]


def run_study(
    study: Study, jobs: int = 1, progress: Callable[[int, int, str], None] | None = None
) -> list[RunRecord]:
    """Train (or reuse, or resume) every run; returns their records, in plan order.

    Args:
        jobs: Runs at a time. On CUDA each running job gets its own GPU, round-robin.
        progress: ``progress(done, total, description)``.
    """
    study.require_engines()
    study.out.mkdir(parents=True, exist_ok=True)
    total = study.total_runs()
    done: list[RunRecord] = []

    def report(record: RunRecord, reused: bool) -> None:
        done.append(record)
        if progress is None:
            return
        text = f"{study.spec.name}: {record.name} {'reused' if reused else record.status}"
        if not reused and len(done) < total:
            left = minutes_left(*study.standing(), jobs)
            if left is not None:
                text += f", about {duration(60 * left)} left"
        progress(len(done), total, text)

    if progress is not None:
        progress(0, total, f"{study.spec.name}: starting")
    first = Runner(study, jobs).run(study.selection_runs(), report)
    second = Runner(study, jobs).run(study.evaluation_runs(study.choose(first)), report)
    return first + second


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class Runner:
    """Runs ``mireg train`` subprocesses, at most ``jobs`` at a time, from one thread."""

    def __init__(self, study: Study, jobs: int) -> None:
        self.study = study
        self.jobs = max(1, jobs)
        self.threads = max(1, (os.cpu_count() or 1) // self.jobs)
        self.gpus = gpu_count() if (study.device or "").startswith("cuda") else 0

    def _command(self, key: RunKey) -> list[str] | None:
        """The ``mireg`` arguments that train or resume the run, or None if it is finished."""
        study = self.study
        run = study.run_dir(key)
        atomic_write_text(study.recipe_file(key), study.recipe_text(key))
        command = "nnunet" if study.engine(key) == "nnunet" else "train"
        step = next_step(run, study.resumable(key))
        if step == "finished":
            return None
        if step == "resume":
            return [command, "--resume", str(run)]
        return [command, str(study.recipe_file(key))]

    def run(self, keys: list[RunKey], report: Callable[[RunRecord, bool], None]) -> list[RunRecord]:
        """Train every run not finished yet; ``report(record, reused)`` as each one ends."""
        records: dict[RunKey, RunRecord] = {}
        queue = list(keys)
        running: dict[RunKey, tuple[subprocess.Popen[bytes], int]] = {}
        free_slots = list(range(self.jobs))
        try:
            while queue or running:
                while queue and free_slots:
                    key = queue.pop(0)
                    command = self._command(key)
                    if command is None:
                        records[key] = self.study.record(key, "done")
                        report(records[key], True)
                        continue
                    slot = free_slots.pop(0)
                    running[key] = (self._start(key, command, slot), slot)
                for key, (proc, slot) in list(running.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    del running[key]
                    free_slots.append(slot)
                    status = "done" if code == 0 else ("interrupted" if code in (130, -2, -15) else "failed")
                    records[key] = self.study.record(key, status)
                    report(records[key], False)
                if running:
                    time.sleep(0.2)
        except BaseException:
            for proc, _ in running.values():  # they checkpoint and stop; a rerun resumes them
                proc.send_signal(signal.SIGTERM)
            for proc, _ in running.values():
                proc.wait()
            raise
        return [records[k] for k in keys]

    def _start(self, key: RunKey, command: list[str], slot: int) -> subprocess.Popen[bytes]:
        log = self.study.log(key)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "COLUMNS": "120"}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % self.gpus)
        with open(log, "ab") as fh:
            return subprocess.Popen(
                [sys.executable, "-m", "mireg", *command],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=ending_with_parent(),
            )
