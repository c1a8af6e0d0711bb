"""Runs as subprocesses of the study on this machine (``--executor local``, the default)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping

from mireg.processes import ending_with_parent
from mireg.study.executors.base import INTERRUPTED_CODES, Ending, Executor, Handle, Launch
from mireg.study.runs import runs_counted

__all__ = ["LocalExecutor"]


class LocalExecutor(Executor):
    """``capacity`` runs at a time, each a ``mireg train`` (or ``mireg nnunet``) subprocess with
    its share of the CPU cores and, on CUDA, its own GPU (round-robin over ``gpus``). They end with
    the study: stopped, they checkpoint; killed, they see it and checkpoint too."""

    name = "local"

    def __init__(self, capacity: int, gpus: int = 0, device: str = "") -> None:
        super().__init__(capacity)
        self.gpus = gpus
        self.threads = max(1, (os.cpu_count() or 1) // self.capacity)
        if device:  # what trains the runs: the device the runs' recipes resolve to, at their threads
            from mireg.training.runtime import hardware, resolve_device

            self.machine = hardware(resolve_device(device), self.threads)

    def start(self, launch: Launch, arguments: list[str], slot: int) -> Handle:
        env = launch.environment(self.threads)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % self.gpus)
        launch.log.parent.mkdir(parents=True, exist_ok=True)
        with open(launch.log, "ab") as fh:
            return subprocess.Popen(
                launch.command(arguments),
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=ending_with_parent(),
            )

    def poll(self, handles: Mapping[str, Handle]) -> dict[str, Ending]:
        ended: dict[str, Ending] = {}
        for name, handle in handles.items():
            assert isinstance(handle, subprocess.Popen)
            code = handle.poll()
            if code is None:
                continue
            if code == 0:
                ended[name] = Ending("done")
            else:
                ended[name] = Ending("interrupted" if code in INTERRUPTED_CODES else "failed")
        return ended

    def stop(self, handles: Mapping[str, Handle]) -> str:
        processes = [h for h in handles.values() if isinstance(h, subprocess.Popen)]
        for process in processes:  # they checkpoint and stop; running the study again resumes them
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait()
        return f"{runs_counted(len(processes))} stopped at a checkpoint" if processes else ""
