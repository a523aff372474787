"""Jobs of ``kdst launch``, whatever runs them: ranges, shell quoting, logs, signals, the Backend interface.

``JOB=1:N LOG CMD ...``: the variable before ``=`` (JOB, SPLIT, ...) is replaced by
the job number in the log path and in every command word, as a plain substring
like Kaldi's run.pl does.  The words are joined into one ``bash -c`` script: a
word that is a shell operator on its own (``|``, ``&&``, ``>``, ``2>&1``, ... as
Kaldi recipes write ``\\|``) stays an operator, every other word is quoted when
it holds whitespace or shell specials, so it reaches the program as the user
typed it.

Each log starts with ``# <command>`` and ``# Started at <date>`` and ends with
``# Accounting: time=<s> threads=1`` and ``# Ended (code <rc>) at <date>,
elapsed time <s> seconds``; :func:`run_job` writes both, for every backend.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from kdst.data.files import atomic_write_text
from kdst.errors import KdstError
import kdst.launch.guard as guard
from kdst.launch.guard import KILL_AFTER_S  # after a first SIGTERM to the jobs, how long before SIGKILL

# Words that stay shell syntax instead of being quoted into arguments.
SHELL_OPERATORS = frozenset({
    "|", "||", "|&", "&&", "&", ";", "!", "(", ")",
    "<", ">", ">>", "<<<", "2>", "2>>", "&>", "&>>", "2>&1", "1>&2", ">&2",
})

_RANGE_HEAD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.DOTALL)
_RANGE_BODY = re.compile(r"(\d+)(?::(\d+))?")


def parse_job_range(spec: str) -> tuple[str, int, int] | None:
    """``JOB=1:4`` -> ``("JOB", 1, 4)``; ``JOB=3`` -> ``("JOB", 3, 3)``; a log path -> None.

    A word that starts like ``NAME=`` but is no valid range is a KdstError.
    """
    head = _RANGE_HEAD.fullmatch(spec)
    if head is None:
        return None
    var, body = head.groups()
    r = _RANGE_BODY.fullmatch(body)
    if r is None:
        raise KdstError(f"bad job range '{spec}': expected {var}=START:END with whole numbers, e.g. {var}=1:4")
    start = int(r.group(1))
    end = int(r.group(2)) if r.group(2) is not None else start
    if start > end:
        raise KdstError(f"bad job range '{spec}': start {start} is after end {end}")
    return var, start, end


def shell_join(words: Sequence[str]) -> str:
    """One bash script from argv words: operators stay operators, everything else means itself."""
    return " ".join(w if w in SHELL_OPERATORS else shlex.quote(w) for w in words)


@dataclass(frozen=True)
class Job:
    index: int  # the job number substituted for JOB (1 for a single job)
    command: str  # a bash script, already substituted and quoted
    log: Path


def make_jobs(words: Sequence[str]) -> list[Job]:
    """Jobs from ``[JOB=a:b] LOG CMD ...``."""
    words = list(words)
    job_range = parse_job_range(words[0]) if words else None
    if job_range is not None:
        words = words[1:]
    if len(words) < 2:
        raise KdstError("missing " + ("LOG and " if not words else "")
                        + "command: usage is kdst launch [JOB=1:N] LOG CMD ...")
    log, command = words[0], words[1:]
    if job_range is None:
        return [Job(1, shell_join(command), Path(log))]
    var, start, end = job_range
    if start != end and var not in log:
        # run.pl refuses this too: N jobs would overwrite one log.
        raise KdstError(f"{end - start + 1} jobs would share the log '{log}': put {var} in its name")
    return [Job(i, shell_join([w.replace(var, str(i)) for w in command]), Path(log.replace(var, str(i))))
            for i in range(start, end + 1)]


def _now() -> str:
    return time.strftime("%a %b %d %H:%M:%S %Z %Y")


def run_job(job: Job, *, on_start: Callable[[subprocess.Popen], None] | None = None,
            env: dict[str, str] | None = None, status_path: Path | None = None, guarded: bool = False) -> int:
    """Run one job under ``bash -c`` with header and footer in its log; returns its exit status.

    This is the one place logs are framed: the local backend calls it in a
    thread, a cluster task wrapper calls it on the node (``status_path`` then
    receives the exit status, for clusters without job accounting).  The job
    gets its own session and process group so the whole group can be signalled;
    ``on_start`` receives the process for that.  ``guarded`` (the local backend)
    starts it under kdst/launch/guard.py, which stops the group if this process
    dies, even by SIGKILL; that guard watches the thread that started it, and
    this one waits for the job.  (On a cluster node the scheduler cleans up a
    task's processes itself.)  A job killed by signal N returns 128+N, as a
    shell reports it.
    """
    try:  # written in place, not via a temporary name: users tail running logs
        job.log.parent.mkdir(parents=True, exist_ok=True)
        with open(job.log, "w", encoding="utf-8") as f:
            f.write(f"# {job.command}\n# Started at {_now()}\n")
    except OSError as e:
        raise KdstError(f"cannot write log {job.log}: {e.strerror}") from None
    start = time.monotonic()
    with open(job.log, "ab") as out:  # append: the job's output goes after the header
        try:
            argv = ["bash", "-c", job.command]
            if guarded:
                argv = [sys.executable, guard.__file__, str(os.getpid()), job.command]
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        except OSError as e:
            out.write(f"kdst launch: cannot start the job: {e}\n".encode())
            returncode = 127
        else:
            if on_start is not None:
                on_start(proc)
            returncode = proc.wait()
    elapsed = round(time.monotonic() - start)
    status, ended = returncode, f"code {returncode}"
    if returncode < 0:  # killed by a signal
        status = 128 - returncode
        try:
            name = signal.Signals(-returncode).name
        except ValueError:  # a real-time signal has no name
            name = f"signal {-returncode}"
        ended = f"code {status}: killed by {name}"
    with open(job.log, "a", encoding="utf-8") as f:
        f.write(f"# Accounting: time={elapsed} threads=1\n"
                f"# Ended ({ended}) at {_now()}, elapsed time {elapsed} seconds\n")
    if status_path is not None:
        atomic_write_text(status_path, f"{status}\n")
    return status


class LaunchInterrupted(Exception):
    """The launcher got SIGINT/SIGTERM/SIGHUP; running jobs were killed."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


@contextmanager
def catch_signals(signums: Sequence[int] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)) -> Iterator[list[int]]:
    """Record SIGINT/SIGTERM/SIGHUP in the yielded list instead of dying, so jobs can be cleaned up.

    SIGHUP is a closed terminal or a lost ssh session: the jobs, in sessions of their own, do
    not get it, so the launcher must stop them.

    Only the main thread may install handlers; elsewhere nothing is caught.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in signums}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


class Backend(ABC):
    """Runs jobs somewhere; a cluster backend (Slurm array) implements the same ``run``."""

    def __init__(self, *, gpu: int = 0):
        self.gpu = gpu  # GPUs per job
        self.reasons: dict[int, str] = {}  # job index -> why it failed, where the exit code does not say

    @classmethod
    def from_config(cls, config: str | None, *, gpu: int = 0) -> Backend:
        """The backend for ``kdst launch --config``; only cluster backends take an options file."""
        if config:
            raise KdstError(f"--config {config} is for a cluster backend, not this one")
        return cls(gpu=gpu)

    def default_max_jobs(self) -> int | None:
        """Jobs at once without --max-jobs (None: no limit)."""
        return cpus()

    @abstractmethod
    def run(self, jobs: Sequence[Job], max_jobs: int | None) -> list[int]:
        """Run the jobs, at most ``max_jobs`` at once; exit statuses in job order.

        On SIGINT/SIGTERM/SIGHUP: stop the jobs and raise LaunchInterrupted.
        """


def succeeded_before(job: Job) -> bool:
    """Whether the job's log shows this very command ending with code 0 (for --rerun-failed)."""
    try:
        with open(job.log, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    return len(lines) >= 2 and lines[0] == f"# {job.command}" and lines[-1].startswith("# Ended (code 0) ")


def cpus() -> int:
    # The CPUs this process may use (a cgroup/affinity limit on a shared node), not the machine's.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


