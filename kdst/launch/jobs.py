"""``kdst launch``: run a command as N parallel jobs, each writing its own log (Kaldi run.pl semantics).

    kdst launch [--max-jobs N] [--backend local] [--gpu N] JOB=1:N exp/log/x.JOB.log CMD ...
    kdst launch exp/log/x.log CMD ...

The variable before ``=`` (JOB, SPLIT, ...) is replaced by the job number in
the log path and in every command word, as a plain substring like run.pl does.
The words are joined into one ``bash -c`` script: a word that is a shell
operator on its own (``|``, ``&&``, ``>``, ``2>&1``, ... as Kaldi recipes
write ``\\|``) stays an operator, every other word is quoted when it holds
whitespace or shell specials, so it reaches the program as the user typed it.

Each log starts with ``# <command>`` and ``# Started at <date>`` and ends with
``# Accounting: time=<s> threads=1`` and ``# Ended (code <rc>) at <date>,
elapsed time <s> seconds``; :func:`run_job` writes both, for every backend.

``--gpu N`` is recorded on the backend for cluster backends (e.g. Slurm's
``--gres``); the local backend sets nothing (no CUDA_VISIBLE_DEVICES), so
local jobs see every GPU and must choose one themselves.

``--backend slurm --config conf/slurm.yaml`` submits the jobs as one sbatch
array (kdst/slurm.py).  ``--rerun-failed`` runs only the jobs whose log does not
show this same command ending with code 0, e.g. after fixing what made 2 of 40
fail.
"""

from __future__ import annotations

import argparse
import concurrent.futures
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

# Words that stay shell syntax instead of being quoted into arguments.
SHELL_OPERATORS = frozenset({
    "|", "||", "|&", "&&", "&", ";", "!", "(", ")",
    "<", ">", ">>", "<<<", "2>", "2>>", "&>", "&>>", "2>&1", "1>&2", ">&2",
})

# After a first SIGTERM to the jobs, how long before SIGKILL (a second Ctrl-C does it at once).
KILL_AFTER_S = 10.0

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
            env: dict[str, str] | None = None, status_path: Path | None = None) -> int:
    """Run one job under ``bash -c`` with header and footer in its log; returns its exit status.

    This is the one place logs are framed: the local backend calls it in a
    thread, a cluster task wrapper calls it on the node (``status_path`` then
    receives the exit status, for clusters without job accounting).  The job
    gets its own process group so the whole group can be signalled;
    ``on_start`` receives the process for that.  A job killed by signal N
    returns 128+N, as a shell reports it.
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
            proc = subprocess.Popen(["bash", "-c", job.command], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as e:
            out.write(f"kdst launch: cannot start bash: {e}\n".encode())
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
    """The launcher got SIGINT/SIGTERM; running jobs were killed."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


@contextmanager
def catch_signals(signums: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[list[int]]:
    """Record SIGINT/SIGTERM in the yielded list instead of dying, so jobs can be cleaned up.

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

    def default_max_jobs(self) -> int | None:
        """Jobs at once without --max-jobs (None: no limit)."""
        return _cpus()

    @abstractmethod
    def run(self, jobs: Sequence[Job], max_jobs: int | None) -> list[int]:
        """Run the jobs, at most ``max_jobs`` at once; exit statuses in job order.

        On SIGINT/SIGTERM: stop the jobs and raise LaunchInterrupted.
        """


def _kill_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


class LocalBackend(Backend):
    """Jobs as subprocesses of this machine, one thread waiting on each running job."""

    def run(self, jobs: Sequence[Job], max_jobs: int) -> list[int]:
        if not jobs:
            return []
        lock = threading.Lock()
        live: set[subprocess.Popen] = set()
        stopping = False

        def register(proc: subprocess.Popen) -> None:
            with lock:
                live.add(proc)
                if stopping:  # started while the main thread was killing the others
                    _kill_group(proc, signal.SIGTERM)

        def work(job: Job) -> int | None:
            with lock:
                if stopping:
                    return None  # never started
            started: list[subprocess.Popen] = []

            def on_start(proc: subprocess.Popen) -> None:
                started.append(proc)
                register(proc)

            try:
                return run_job(job, on_start=on_start)
            finally:
                with lock:
                    live.difference_update(started)

        def kill_live(signum: int) -> None:
            with lock:
                procs = list(live)
            for proc in procs:
                _kill_group(proc, signum)

        with catch_signals() as received, \
                concurrent.futures.ThreadPoolExecutor(max_workers=min(max_jobs, len(jobs))) as pool:
            futures = [pool.submit(work, job) for job in jobs]
            pending = set(futures)
            handled = 0
            term_sent_at: float | None = None
            while pending:
                # Poll: signal handlers run in this thread between waits.
                _, pending = concurrent.futures.wait(pending, timeout=0.1,
                                                     return_when=concurrent.futures.FIRST_COMPLETED)
                if len(received) > handled:
                    with lock:
                        stopping = True
                    kill_live(signal.SIGTERM if handled == 0 else signal.SIGKILL)
                    term_sent_at = time.monotonic() if handled == 0 else None
                    handled = len(received)
                elif term_sent_at is not None and time.monotonic() - term_sent_at > KILL_AFTER_S:
                    kill_live(signal.SIGKILL)  # a job ignored SIGTERM
                    term_sent_at = None
            codes = [f.result() for f in futures]
        if received:
            raise LaunchInterrupted(received[0])
        return [c if c is not None else 1 for c in codes]


BACKENDS: dict[str, type[Backend]] = {"local": LocalBackend}
CLUSTER_BACKENDS = ("slurm",)  # imported when asked for: kdst/slurm.py builds on this module


def make_backend(name: str, *, gpu: int = 0, config: str | None = None) -> Backend:
    """The backend called ``name``; ``config`` is a cluster backend's options file."""
    if name == "slurm":
        from kdst.slurm import SlurmBackend, SlurmOptions, load_options

        return SlurmBackend(gpu=gpu, options=load_options(config) if config else SlurmOptions())
    if name not in BACKENDS:
        raise KdstError(f"unknown backend '{name}' (known: {', '.join([*BACKENDS, *CLUSTER_BACKENDS])})")
    if config:
        raise KdstError(f"--config {config} is for a cluster backend ({', '.join(CLUSTER_BACKENDS)}), "
                        f"not --backend {name}")
    return BACKENDS[name](gpu=gpu)


def succeeded_before(job: Job) -> bool:
    """Whether the job's log shows this very command ending with code 0 (for --rerun-failed)."""
    try:
        with open(job.log, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    return len(lines) >= 2 and lines[0] == f"# {job.command}" and lines[-1].startswith("# Ended (code 0) ")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``kdst launch``; the job words land in ``args.launch_argv`` untouched."""
    parser.add_argument("--max-jobs", type=int, metavar="N",
                        help="run at most N jobs at once (default: local: the number of CPUs; "
                             "slurm: max_jobs of --config, else no limit)")
    parser.add_argument("--backend", default="local",
                        help=f"where jobs run: {', '.join([*BACKENDS, *CLUSTER_BACKENDS])} (default: local)")
    parser.add_argument("--config", metavar="YAML", help="options of a cluster backend, e.g. conf/slurm.yaml")
    parser.add_argument("--gpu", type=int, default=0, metavar="N",
                        help="GPUs per job, for cluster backends; the local backend sets nothing")
    parser.add_argument("--rerun-failed", action="store_true",
                        help="run only the jobs whose log does not show this command ending with code 0")
    # dest differs from kdst's top-level --verbose so one does not reset the other.
    parser.add_argument("--verbose", dest="launch_verbose", action="store_true",
                        help="say how many jobs ran when all succeed")
    # REMAINDER: from the first positional on, options belong to the command, not to kdst.
    parser.add_argument("launch_argv", nargs=argparse.REMAINDER, metavar="[JOB=1:N] LOG CMD ...",
                        help="job range, log path (with JOB in it for a range) and command")


def _cpus() -> int:
    # The CPUs this process may use (a cgroup/affinity limit on a shared node), not the machine's.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run(args: argparse.Namespace) -> int:
    """Run ``kdst launch`` from parsed arguments; 0 if every job succeeded, 1 if any failed, 128+signal."""
    words = list(args.launch_argv)
    if words[:1] == ["--"]:
        words = words[1:]
    jobs = make_jobs(words)
    backend = make_backend(args.backend, gpu=args.gpu, config=getattr(args, "config", None))
    max_jobs = args.max_jobs if args.max_jobs is not None else backend.default_max_jobs()
    if max_jobs is not None and max_jobs < 1:
        raise KdstError(f"--max-jobs must be at least 1, got {max_jobs}")
    for directory in {job.log.parent for job in jobs}:
        try:  # fail before starting anything rather than in the middle
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise KdstError(f"cannot create log directory {directory}: {e.strerror}") from None
    if getattr(args, "rerun_failed", False):
        done = [job for job in jobs if succeeded_before(job)]
        jobs = [job for job in jobs if job not in done]
        print(f"kdst launch: {len(done)} job(s) succeeded before; running the other {len(jobs)}", file=sys.stderr)
        if not jobs:
            return 0
    try:
        codes = backend.run(jobs, max_jobs)
    except LaunchInterrupted as e:
        print(f"kdst launch: {e}; running jobs were killed", file=sys.stderr)
        return 128 + e.signum
    failed = [(job, code) for job, code in zip(jobs, codes) if code != 0]
    for job, code in failed:
        why = backend.reasons.get(job.index, f"exit {code}")
        print(f"kdst launch: job {job.index} failed ({why}), log: {job.log}", file=sys.stderr)
    if failed:
        print(f"kdst launch: {len(failed)} / {len(jobs)} failed", file=sys.stderr)
        if len(jobs) > 1:
            print("kdst launch: to run only the failed jobs again, add --rerun-failed", file=sys.stderr)
        return 1
    if getattr(args, "launch_verbose", False):
        print(f"kdst launch: {len(jobs)} job(s) succeeded", file=sys.stderr)
    return 0


def launch(argv: list[str]) -> int:
    """``kdst launch`` from an argv list (without the program name)."""
    parser = argparse.ArgumentParser(prog="kdst launch", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    try:
        return launch(sys.argv[1:] if argv is None else argv)
    except KdstError as e:
        print(f"kdst launch: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # Run the imported module, not this __main__ copy: kdst.slurm's classes build on kdst.launch's.
    from kdst.launch import main as _main

    sys.exit(_main())
