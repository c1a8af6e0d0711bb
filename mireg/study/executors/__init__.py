"""Where a study's runs train: :class:`~mireg.study.executors.local.LocalExecutor` (subprocesses
on this machine) or :class:`~mireg.study.executors.slurm.SlurmExecutor` (one Slurm job per run).
Both are driven by the one scheduler of :mod:`mireg.study.runner` through the
:class:`~mireg.study.executors.base.Executor` interface; a new backend is one more subclass."""

from mireg.study.executors.base import Ending, Executor, Launch
from mireg.study.executors.local import LocalExecutor

__all__ = ["Ending", "Executor", "Launch", "LocalExecutor"]
