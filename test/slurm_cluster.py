"""A real single-node Slurm cluster on localhost for the tests: munged, slurmctld and slurmd.

Nothing is installed here (tools/install.sh installs Debian's ``slurmctld slurmd
slurm-client munge`` when run as root).  The daemons are started directly, not
through systemd, with their config, state, sockets and logs under one temporary
directory, and stopped by PID.  Client commands find the cluster through
``SLURM_CONF``, which :func:`start_cluster` returns for the tests' environment.

    python test/slurm_cluster.py    # starts one, prints how to use it, stops it on Enter

Lessons this encodes:
- munged refuses a socket directory others cannot read; root needs ``--force``;
- ``batch_sched_delay=0`` and a short scheduler interval, or arrays start slowly;
- a job asking for more CPUs than the node has pends forever, so the node declares
  16 CPU slots whatever the machine has (``SlurmdParameters=config_overrides``);
- no accounting (``sacct`` does not work, and kdst must not need it);
- running jobs are cancelled before slurmd stops, or their processes outlive it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel", "sinfo")
CPUS = 16  # slots declared for the node, more than a CI machine has: jobs must never pend for CPUs
NODE = "kdstnode"


def unavailable_reason() -> str | None:
    """Why no cluster can be started here (shown as the skip reason), or None."""
    missing = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return (f"Slurm is not installed ({', '.join(missing)} missing): tools/install.sh installs "
                f"slurmctld slurmd slurm-client munge when run as root")
    if os.geteuid() != 0:
        return "the test Slurm cluster needs root (slurmd runs jobs as their user)"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


SLURM_CONF = """\
ClusterName=kdsttest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=2,bf_interval=1,default_queue_depth=1000
MpiDefault=none
LaunchParameters=use_interactive_step
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
MinJobAge=60
InactiveLimit=0
MessageTimeout=10
MailProg=/bin/true
PlugStackConfig={root}/plugstack.conf
NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=64000 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]  # os.environ plus SLURM_CONF: for the tests' subprocesses
    pids: dict[str, int] = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster."""
        result = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def queue(self) -> list[str]:
        """Job ids still in the queue (pending, running or completing); ["?"] when squeue fails."""
        result = self.run("squeue", "-h", "-o", "%i", check=False)
        return result.stdout.split() if result.returncode == 0 else ["?"]  # never "empty" by mistake

    def logs(self) -> str:
        """The daemons' logs, for a failing test's message."""
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                         for p in sorted((self.root / "log").glob("*.log")))


def _wait(predicate, timeout: float, what: str, cluster: Cluster | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise RuntimeError(f"test Slurm cluster: {what} within {timeout:.0f} s"
                       + (f"\n{cluster.logs()}" if cluster else ""))


def start_cluster(root: Path | None = None) -> Cluster:
    """Start munged, slurmctld and slurmd under ``root``; returns when the node is idle."""
    root = Path(root or tempfile.mkdtemp(prefix="kdst-slurm-"))
    for sub in ("munge", "state", "spool", "log", "etc"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    # munged checks every directory on its socket's path: others must be able to read and
    # traverse it (clients of every user connect), nobody but the owner may write it.
    for d in (root, root / "munge"):
        d.chmod(0o755)
    (root / "etc").chmod(0o700)  # the key's directory
    conf = root / "slurm.conf"
    ctld_port, slurmd_port = _free_ports(2)
    host = socket.gethostname().split(".")[0]
    conf.write_text(SLURM_CONF.format(root=root, host=host, node=NODE, cpus=CPUS, ctld_port=ctld_port,
                                      slurmd_port=slurmd_port))
    (root / "plugstack.conf").write_text("")
    (root / "cgroup.conf").write_text("CgroupAutomount=no\nConstrainCores=no\nConstrainRAMSpace=no\n")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    for var in [v for v in env if v.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and v != "SLURM_CONF"]:
        del env[var]  # from an outer Slurm job: they would steer these commands to it
    cluster = Cluster(root, env)
    try:
        key = root / "etc" / "munge.key"
        subprocess.run([_binary("mungekey"), "--create", f"--keyfile={key}", "--force"], check=True,
                       capture_output=True)
        key.chmod(0o600)
        munge_socket = root / "munge" / "munge.socket"
        _start(cluster, "munged", [_binary("munged"), "--foreground", "--force", f"--socket={munge_socket}",
                                   f"--key-file={key}", f"--pid-file={root / 'munge' / 'munged.pid'}",
                                   f"--log-file={root / 'log' / 'munged.log'}",
                                   f"--seed-file={root / 'munge' / 'munged.seed'}"])
        _wait(lambda: munge_socket.exists(), 10, "munged did not create its socket", cluster)
        _start(cluster, "slurmctld", [_binary("slurmctld"), "-D", "-c", "-f", str(conf)])
        _start(cluster, "slurmd", [_binary("slurmd"), "-D", "-f", str(conf), "-N", NODE])
        _wait(lambda: _node_state(cluster) == "idle", 60, "the node did not become idle", cluster)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def _start(cluster: Cluster, name: str, argv: list[str]) -> None:
    out = open(cluster.root / "log" / f"{name}.out", "wb")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=cluster.env,
                            start_new_session=True)  # no terminal signal reaches the daemons
    out.close()
    cluster.procs.append(proc)
    cluster.pids[name] = proc.pid


def _node_state(cluster: Cluster) -> str:
    for proc in cluster.procs:
        if proc.poll() is not None:
            name = Path(proc.args[0]).name
            output = (cluster.root / "log" / f"{name}.out").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"test Slurm cluster: {name} exited with {proc.returncode}: {output}\n{cluster.logs()}")
    result = cluster.run("sinfo", "-h", "-N", "-o", "%t", check=False, timeout=20)
    return result.stdout.strip() if result.returncode == 0 else ""


def cancel_all(cluster: Cluster, timeout: float = 30) -> None:
    """Cancel every job and wait until the queue is empty (their processes are gone then)."""
    if cluster.queue():
        cluster.run("scancel", "--user", "root", check=False)
        try:
            _wait(lambda: not cluster.queue(), timeout, "jobs did not leave the queue")
        except RuntimeError:
            cluster.run("scancel", "--signal=KILL", "--user", "root", check=False)
            _wait(lambda: not cluster.queue(), 10, "killed jobs did not leave the queue")


def stop_cluster(cluster: Cluster) -> None:
    """Cancel the jobs, then stop slurmd, slurmctld and munged (in that order) by PID."""
    if "slurmctld" in cluster.pids and "slurmd" in cluster.pids:
        try:
            cancel_all(cluster)
        except Exception as e:  # still stop the daemons
            print(f"test Slurm cluster: {e}", file=sys.stderr)
    for proc in reversed(cluster.procs):
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
    cluster.procs.clear()
    cluster.pids.clear()


if __name__ == "__main__":
    reason = unavailable_reason()
    if reason:
        sys.exit(reason)
    started = time.monotonic()
    c = start_cluster()
    print(f"up in {time.monotonic() - started:.1f} s: export SLURM_CONF={c.env['SLURM_CONF']}")
    try:
        input("Enter stops it: ")
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        started = time.monotonic()
        stop_cluster(c)
        print(f"stopped in {time.monotonic() - started:.1f} s; files in {c.root}")
