"""Training a study's runs (:func:`run_study`): the selection runs, and the configuration chosen on
validation for each gridded method as soon as its selection runs ended; each run reused when it
finished, resumed when it stopped, trained otherwise.

The scheduling is here, once; where a run trains is an executor's business
(:mod:`mireg.study.executors`): subprocesses on this machine or jobs on a Slurm cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mireg.errors import RunError, RunInterrupted
from mireg.files import atomic_write_text
from mireg.study.executors.base import Ending, Executor, Handle, Launch
from mireg.study.executors.local import LocalExecutor
from mireg.study.plan import Order, Study, duration, minutes_left
from mireg.study.runs import RunKey, RunRecord

__all__ = ["Scheduler", "gpu_count", "launch_of", "run_study"]


def run_study(
    study: Study,
    executor: Executor | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    order: Order = "seeds",
) -> list[RunRecord]:
    """Train (or reuse, or resume) every run; returns their records, in plan order. The runs of a
    ``chosen`` method whose choice the other study has not made yet wait
    (:meth:`~mireg.study.plan.Study.waiting_runs`): they have no record here.

    The selection runs go in ``order`` (:meth:`~mireg.study.plan.Study.selection_runs`). Once the
    last selection run of a gridded method at a labelled amount ended, the configuration is chosen
    (:meth:`~mireg.study.plan.Study.choose`) and its evaluation runs go ahead of the selection runs
    still waiting (behind evaluation runs queued earlier), so a method's result is complete as early
    as its own runs allow and no slot waits for other methods' selection.

    Args:
        executor: Where the runs train, and how many at a time (default: one at a time, here).
        progress: ``progress(done, total, description)``.
        order: ``seeds`` or ``methods``.

    Raises:
        MiregError: Every method waits for the other study's choices: nothing can train yet.
        RunInterrupted: The study was stopped (Ctrl+C); says what became of the runs in flight.
    """
    study.require_ready_methods()
    study.require_engines()
    study.out.mkdir(parents=True, exist_ok=True)
    if executor is None:
        executor = LocalExecutor(1)
    total = study.ready_total()
    done: list[RunRecord] = []

    def report(record: RunRecord, reused: bool) -> None:
        done.append(record)
        if progress is None:
            return
        text = f"{study.spec.name}: {record.name} {'reused' if reused else record.status}"
        if not reused and len(done) < total:
            left = minutes_left(*study.standing(), executor.capacity, executor.machine)
            if left is not None:
                text += f", about {duration(60 * left)} left"
        if record.status != "done" and record.log:
            text += f" ({record.log})"
        progress(len(done), total, text)

    def watch(queue: str) -> None:
        if progress is not None:
            failed = sum(r.status != "done" for r in done)
            finished = f"{len(done) - failed} finished" + (f", {failed} not" if failed else "")
            progress(len(done), total, f"{study.spec.name}: {finished}; {queue}")

    selection = [key for key in study.selection_runs(order) if study.ready(key.method)]
    gridded = set(study.gridded_methods())
    waiting: dict[tuple[str, str], set[str]] = {}  # a gridded method's selection runs not ended yet
    for key in selection:
        if key.method in gridded:
            waiting.setdefault((key.method, key.amount.label), set()).add(key.name)
    selected: list[RunRecord] = []

    def follow(record: RunRecord) -> list[RunKey]:
        """The evaluation runs that may start now ``record``'s run ended: those of its method and
        amount, chosen once their last selection run ended."""
        choice = (record.method, record.amount)
        if record.name not in waiting.get(choice, set()):
            return []  # an evaluation run, or a method without a grid
        selected.append(record)
        waiting[choice].discard(record.name)
        if waiting[choice] or choice not in (made := study.choose(selected)):
            return []  # more to end first, or no configuration finished all its selection runs
        return study.evaluation_runs({choice: made[choice]})

    if progress is not None:
        progress(0, total, f"{study.spec.name}: starting")
    records = Scheduler(study, executor).run(selection, report, watch, follow)
    planned = study.selection_runs() + study.evaluation_runs(study.choose(selected))
    return [records[key.name] for key in planned if study.ready(key.method)]


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def launch_of(study: Study, key: RunKey, processes: int = 1) -> Launch:
    """The run ``key`` as an executor launches it; writes its recipe file first, for a run that starts
    (a finished run keeps the recipe it trained on, a stopped one the recipe it resumes on)."""
    text = study.recipe_text(key)
    if not (study.run_dir(key).finished or study.resumable(key)):
        atomic_write_text(study.recipe_file(key), text)
    return Launch(
        key.name,
        study.engine(key),
        study.recipe_file(key),
        study.run_dir(key).path,
        study.log(key),
        processes,
    )


class Scheduler:
    """Puts runs through an executor, at most ``executor.capacity`` in flight, in the order given
    (the runs a ``follow`` adds ahead of the others, first added first)."""

    def __init__(self, study: Study, executor: Executor, poll_s: float = 0.2) -> None:
        self.study = study
        self.executor = executor
        self.poll_s = poll_s

    def run(
        self,
        keys: list[RunKey],
        report: Callable[[RunRecord, bool], None],
        watch: Callable[[str], None] | None = None,
        follow: Callable[[RunRecord], list[RunKey]] | None = None,
    ) -> dict[str, RunRecord]:
        """Train every run not finished yet; ``report(record, reused)`` as each one ends, and
        ``watch(line)`` when the executor's line on the runs in flight changes (jobs queued,
        running). ``follow(record)``: runs to start once that one ended, ahead of the runs of
        ``keys`` still waiting (and after those it added before). Returns the record of every run,
        those of ``keys`` and those ``follow`` added, by run name."""
        executor = self.executor
        records: dict[str, RunRecord] = {}
        queue = list(keys)
        ahead: list[RunKey] = []  # the runs ``follow`` added, still waiting

        def finish(key: RunKey, record: RunRecord, reused: bool) -> None:
            records[key.name] = record
            if record.status == "failed":  # kept for --plan, --interim and a follow-up's choice
                atomic_write_text(self.study.failed_file(key), record.log + "\n")
            report(record, reused)
            ahead.extend(follow(record) if follow is not None else [])

        in_flight: dict[str, tuple[RunKey, Handle, int]] = {}
        free_slots = list(range(executor.capacity))
        shown = ""
        try:
            while ahead or queue or in_flight:
                while (ahead or queue) and free_slots:
                    key = (ahead or queue).pop(0)
                    self.study.failed_file(key).unlink(missing_ok=True)  # tried again: not failed now
                    launch = launch_of(self.study, key, executor.processes)
                    slot = free_slots.pop(0)
                    handle = executor.attach(launch)
                    if handle is None:
                        try:
                            arguments = launch.arguments()
                        except RunError as exc:  # a folder it will not touch: this run fails, not the study
                            free_slots.insert(0, slot)
                            finish(key, self._record(key, Ending("failed", exc.message)), False)
                            continue
                        if arguments is None:
                            free_slots.insert(0, slot)
                            finish(key, self.study.record(key, "done"), True)
                            continue
                        handle = executor.start(launch, arguments, slot)
                    in_flight[key.name] = (key, handle, slot)
                ended = executor.poll({name: handle for name, (_, handle, _) in in_flight.items()})
                for name, ending in ended.items():
                    key, _, slot = in_flight.pop(name)
                    free_slots.append(slot)
                    finish(key, self._record(key, ending), False)
                line = executor.describe({name: handle for name, (_, handle, _) in in_flight.items()})
                if line and line != shown and watch is not None:
                    watch(line)
                shown = line
                if in_flight:
                    time.sleep(self.poll_s)
        except BaseException as exc:
            what = executor.stop({name: handle for name, (_, handle, _) in in_flight.items()})
            if isinstance(exc, KeyboardInterrupt):
                raise RunInterrupted(
                    f"study {self.study.spec.name} stopped" + (f"; {what}" if what else ""),
                    "run the same command again: finished runs are reused and stopped ones resumed",
                ) from None
            raise
        return records

    def _record(self, key: RunKey, ending: Ending) -> RunRecord:
        record = self.study.record(key, ending.status)
        if ending.note:
            record.log = f"{record.log} ({ending.note})"
        return record
