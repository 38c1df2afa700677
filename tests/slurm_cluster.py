"""A private single-node SLURM for the tests marked `slurm`: Debian's slurmctld/slurmd (22.05) and munged,
started as root with their own config, key, sockets, ports, state and logs under a temp dir, so a system
SLURM (if any) is never touched. Where a SLURM already answers here, it is used as it is (or the tests are
skipped if it has no idle node); where ours cannot start, the tests are skipped with the daemon's log."""
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

TOOLS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")
START_TIMEOUT_S = 30


@dataclass
class SlurmCluster:
    env: dict  # the environment for SLURM's clients (SLURM_CONF of the private cluster)

    def command(self, *args: str, check=True) -> str:
        return subprocess.run(args, env=self.env, capture_output=True, text=True, check=check, timeout=30).stdout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _idle_node(env: dict) -> bool:
    done = subprocess.run(["sinfo", "-h", "-t", "idle", "-o", "%n"], env=env, capture_output=True, text=True,
                          timeout=30)
    return done.returncode == 0 and bool(done.stdout.strip())


def _running_slurm_answers() -> bool:
    done = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    return done.returncode == 0 and " is UP" in done.stdout


def _log_tails(paths: list[Path], lines: int = 15) -> str:
    written = [p for p in paths if p.exists() and p.stat().st_size]
    return "\n".join(f"--- {p.name}:\n" + "\n".join(p.read_text(errors="replace").splitlines()[-lines:])
                     for p in written) or "(no daemon wrote a log)"


def slurm_conf(base: Path, node: str) -> str:
    cpus = os.cpu_count()
    mem_total_mb = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return f"""\
ClusterName=sparsesweep-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={base}/munge.socket
CredType=cred/munge
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/slurmctld.log
SlurmdLogFile={base}/slurmd.log
PlugStackConfig={base}/plugstack.conf
# No cgroups in a container: plain process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
# Each run takes its CPUs and memory, the rest of the node stays free for the others.
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
# Finished jobs leave the controller's tables after seconds; submitit requeues a timed-out job; a job past its
# limit (submitit ignores SIGTERM) is killed 5 s later, not 30.
MinJobAge=5
JobRequeue=1
KillWait=5
# As clusters often do, fewer tasks per job array than a sweep may have (the launcher splits a sweep's arrays).
MaxArraySize=4
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_total_mb * 9 // 10} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    if shutil.which("scontrol") and _running_slurm_answers():
        if not _idle_node(dict(os.environ)):
            pytest.skip("a SLURM is running here but has no idle node; left alone")
        yield SlurmCluster(env=dict(os.environ))
        return
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if missing:
        pytest.skip(f"no SLURM: {', '.join(missing)} missing (apt-get install slurmctld slurmd slurm-client munge)")
    if os.geteuid() != 0:
        pytest.skip("starting a private SLURM needs root (its daemons run as SlurmUser=root)")

    base = tmp_path_factory.mktemp("slurm")
    for folder in ("state", "spool"):
        (base / folder).mkdir()
    (base / "plugstack.conf").write_text("")
    node = socket.gethostname().split(".")[0]
    conf = base / "slurm.conf"
    conf.write_text(slurm_conf(base, node))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    # The daemons' stdout/stderr (.out) has what comes before their log file opens.
    logs = [base / name for name in ("munged.log", "slurmctld.log", "slurmctld.out", "slurmd.log", "slurmd.out")]
    started = []
    try:
        subprocess.run(["mungekey", "--create", "--keyfile", str(base / "munge.key")], check=True,
                       capture_output=True, timeout=30)
        # --force: munged refuses a socket whose folders are not executable by all (pytest's are 0700);
        # every client here is root. In the foreground it logs to stderr.
        with open(base / "munged.log", "w") as out:
            started.append(subprocess.Popen(
                ["munged", "--foreground", "--force", "--socket", str(base / "munge.socket"),
                 "--key-file", str(base / "munge.key"), "--pid-file", str(base / "munged.pid"),
                 "--seed-file", str(base / "munged.seed")], stdout=out, stderr=subprocess.STDOUT))
        for daemon in ("slurmctld", "slurmd"):
            with open(base / f"{daemon}.out", "w") as out:
                started.append(subprocess.Popen([daemon, "-D", "-f", str(conf)], env=env, stdout=out,
                                                stderr=subprocess.STDOUT))
            if daemon == "slurmctld":
                time.sleep(1)  # slurmd registers with a listening controller
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _idle_node(env):
            dead = [p for p in started if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{Path(dead[0].args[0]).name} exited" if dead else f"no idle node after {START_TIMEOUT_S} s"
                pytest.skip(f"the private SLURM did not start ({why}):\n{_log_tails(logs)}")
            time.sleep(0.5)
        yield SlurmCluster(env=env)
    finally:
        for process in reversed(started):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
