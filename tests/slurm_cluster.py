"""A real single-node Slurm cluster for the tests, started as plain local processes: munged with a
key of its own, slurmctld and slurmd, all in one temporary folder, on free ports. Debian's packages
(``slurmctld slurmd slurm-client munge``) provide them; ``.ci/run`` installs them.

Job states come from ``squeue`` (no accounting database: mireg's Slurm executor needs none), and
the job completion log (``jobcomp/filetxt``) keeps a line per finished job, which the tests read
as the cluster's own record of what ran.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol")


def why_not() -> str | None:
    """Why no cluster can start here, or None."""
    if not sys.platform.startswith("linux"):
        return "a Slurm cluster of local processes needs Linux"
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    if missing:
        install = "Debian: apt-get install slurmctld slurmd slurm-client munge"
        return f"Slurm is not installed ({', '.join(missing)} missing; {install})"
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    """One node (this machine, all its cores) in one partition, ``debug``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.jobcomp = root / "log" / "jobcomp.log"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> None:
        root = self.root
        for sub in ("munge", "state", "spool", "log"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "munge").chmod(0o700)
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        socket_path = root / "munge" / "socket"
        self._run(
            _binary("munged"),
            "--force",
            f"--key-file={key}",
            f"--socket={socket_path}",
            f"--pid-file={root / 'munge' / 'pid'}",
            f"--seed-file={root / 'munge' / 'seed'}",
            f"--log-file={root / 'log' / 'munged.log'}",
        )
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=mireg-test",
                    "SlurmctldHost=localhost(127.0.0.1)",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    # cred_expire: how long a requeued job waits before it starts again (120 s by
                    # default); 10 s keeps the requeue tests short.
                    f"AuthInfo=socket={socket_path},cred_expire=10",
                    f"StateSaveLocation={root / 'state'}",
                    f"SlurmdSpoolDir={root / 'spool'}",
                    f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                    f"SlurmdPidFile={root / 'slurmd.pid'}",
                    f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SchedulerType=sched/backfill",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "ReturnToService=2",
                    "MpiDefault=none",
                    "JobCompType=jobcomp/filetxt",
                    f"JobCompLoc={self.jobcomp}",
                    "AccountingStorageType=accounting_storage/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "MinJobAge=600",
                    "KillWait=30",
                    f"NodeName=mireg-node NodeHostname={host} NodeAddr=127.0.0.1 "
                    f"CPUs={os.cpu_count() or 1} State=UNKNOWN",
                    "PartitionName=debug Nodes=mireg-node Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        self._run(_binary("slurmctld"), "-i")
        self._run(_binary("slurmd"), "-N", "mireg-node")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip() in ("idle", "mix", "alloc"):
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Slurm node did not come up; see {root / 'log'}")

    def _run(self, *command: str) -> None:
        subprocess.run(command, env=self.env, check=True, capture_output=True, timeout=60)

    def stop(self) -> None:
        """Stop the daemons (and with them any job still running)."""
        for pid_file in (self.root / "slurmd.pid", self.root / "slurmctld.pid", self.root / "munge" / "pid"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid_file.read_text().split()[0]), 15)

    def jobs_completed(self) -> list[dict[str, str]]:
        """The job completion log: one ``{field: value}`` per job that ended."""
        if not self.jobcomp.is_file():
            return []
        jobs = []
        for line in self.jobcomp.read_text().splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            jobs.append(fields)
        return jobs

    def squeue(self, *args: str) -> str:
        return subprocess.run(
            ["squeue", *args], env=self.env, capture_output=True, text=True, check=True
        ).stdout
