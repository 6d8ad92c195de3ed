"""A real single-node SLURM cluster on this machine, from Debian's packages, for the profile's test.

``local_cluster()`` starts munged, slurmctld and slurmd (as root, every file under a temporary folder
except ``/etc/slurm/slurm.conf``: the job steps Snakemake starts drop ``SLURM_CONF`` from their
environment, so ``srun`` inside a job reads the default path) and stops them afterwards. Job completions
are written to a ``jobcomp/filetxt`` log, so a test can see every job that went through ``sbatch``:
without a slurmdbd (and its database) ``sacct`` is disabled, and the profile's status checks use
``squeue``, which keeps finished jobs for ``MinJobAge`` seconds.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "srun")
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
MUNGE_KEY = Path("/etc/munge/munge.key")


def unavailable() -> str | None:
    """Why a local cluster cannot start here, or None."""
    if os.geteuid() != 0:
        return "the local SLURM cluster needs root (slurmd runs jobs as any user)"
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()]
    if missing:
        return (f"SLURM is not installed ({', '.join(missing)} missing); on Debian: apt-get install slurmctld "
                "slurmd slurm-client munge (.ci/run does)")
    if SYSTEM_CONF.exists():
        return f"{SYSTEM_CONF} exists: this machine has a SLURM configuration, which the test will not replace"
    if not MUNGE_KEY.exists():
        return f"{MUNGE_KEY} is missing (the munge package creates it)"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _config(root: Path, host: str, cpus: int, mem_mb: int) -> str:
    return f"""ClusterName=mergeflow-test
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge.socket
CredType=cred/munge
SlurmctldPort=16817
SlurmdPort=16818
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=3600
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.log
NodeName={host} CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _wait(predicate, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(f"the local SLURM cluster did not {what} within {timeout:.0f} s")


@contextmanager
def local_cluster(root: Path) -> Iterator[dict]:
    """Run a one-node cluster (all this machine's CPUs, 90 % of its memory) while the block runs.

    Yields ``{"partition", "jobcomp", "env"}``: the partition to submit to, the job-completion log and the
    variables to add to an environment for ``sbatch``/``squeue`` to reach it.
    """
    root = Path(root)
    for sub in ("state", "spool"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    mem_mb = int(int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                          if line.startswith("MemTotal"))) / 1024 * 0.9)
    SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SYSTEM_CONF.write_text(_config(root, host, len(os.sched_getaffinity(0)), mem_mb))
    env = {**os.environ, "SLURM_CONF": str(SYSTEM_CONF)}
    started = []
    try:
        subprocess.run([_binary("munged"), f"--socket={root}/munge.socket", f"--pid-file={root}/munged.pid",
                        f"--log-file={root}/munged.log", f"--seed-file={root}/munge.seed",
                        f"--key-file={MUNGE_KEY}", "--force"], check=True, env=env, capture_output=True)
        started.append(root / "munged.pid")
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([_binary(daemon), "-f", str(SYSTEM_CONF)], check=True, env=env, capture_output=True)
            started.append(root / f"{daemon}.pid")
        _wait(lambda: subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,
                                     text=True).stdout.strip() == "idle", "bring its node up (idle)")
        yield {"partition": "debug", "jobcomp": root / "jobcomp.log", "env": {"SLURM_CONF": str(SYSTEM_CONF)}}
    finally:
        for pid_file in reversed(started):
            try:
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, 15)
                _wait(lambda pid=pid: not Path(f"/proc/{pid}").exists(), "stop", timeout=20)
            except (OSError, ValueError, TimeoutError):
                pass
        SYSTEM_CONF.unlink(missing_ok=True)


def completed_jobs(jobcomp: Path) -> list[dict[str, str]]:
    """The records of ``jobcomp/filetxt``: one ``{"JobId", "JobName", "JobState", ...}`` per finished job."""
    if not jobcomp.exists():
        return []
    return [dict(field.split("=", 1) for field in line.split() if "=" in field)
            for line in jobcomp.read_text().splitlines() if line.strip()]
