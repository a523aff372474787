"""Slurm backend of ``kdst launch``: the jobs of ``JOB=1:N`` as one ``sbatch`` job array.

    kdst launch --backend slurm --config conf/slurm.yaml [--gpu N] [--max-jobs M] JOB=1:N LOG CMD ...

Job ``i`` is array task ``i`` (``--array=1-N%M``).  Each task runs
``python -m kdst.launch.slurm task FILE`` on its node: that wrapper runs the command
through :func:`kdst.launch.jobs.run_job`, so the log has the same header and
exit-code footer as a local job, then writes the exit status to a status file
(temporary name + rename).  The launcher polls those files, with backoff, and
asks ``squeue`` now and then which tasks are still queued, to notice one that
left the queue without a status (killed with SIGKILL, node failure).  Nothing
here uses ``sacct``: many clusters run without job accounting.

The launcher's files live beside the first log, in ``.slurm/``:
``<tag>.jobs.json`` (the command and log of every task), ``<tag>.<i>.status``
and ``<tag>.<i>.out`` (what Slurm itself says about task i, e.g. a time limit);
they are removed when every task succeeded.  The node must see them and the
logs at the same paths as the submitting machine (a shared filesystem), and the
same Python: tasks run ``sys.executable`` of the launcher.

conf/slurm.yaml (every key optional; an unknown key is an error)::

    partition: gpu            # sbatch --partition
    time: "4:00:00"           # --time, per task
    mem: 16G                  # --mem, per task
    cpus_per_task: 4          # --cpus-per-task; OMP_NUM_THREADS follows it
    gpus_per_task: 0          # used when kdst launch has no --gpu
    gpu_option: "--gres=gpu:{n}"   # how this cluster asks for n GPUs
    max_jobs: 50              # tasks running at once (--array=...%50), unless --max-jobs
    extra: ["--qos=normal"]   # any other sbatch options
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import yaml

from kdst.data.files import atomic_write_text
from kdst.errors import KdstError
from kdst.launch.jobs import KILL_AFTER_S, Backend, Job, LaunchInterrupted, catch_signals, run_job
from kdst.launch.requeue import REQUEUED_EXIT, scontrol

# Status polling: fast at first (short tasks), then every few seconds (a long stage).
FIRST_POLL_S, MAX_POLL_S = 0.05, 5.0
SQUEUE_EVERY_S = 15.0  # squeue costs the controller an RPC: not at every poll
# A task that left the queue without a status file is reported this long after: a shared
# filesystem may show the submitting machine a new file later than Slurm forgets the task.
VANISHED_AFTER_S = 60.0


@dataclass(frozen=True)
class SlurmOptions:
    """What every task of an array asks Slurm for (conf/slurm.yaml)."""

    partition: str | None = None
    time: str | None = None
    mem: str | None = None
    cpus_per_task: int | None = None
    gpus_per_task: int = 0
    gpu_option: str = "--gres=gpu:{n}"
    max_jobs: int | None = None
    extra: tuple[str, ...] = ()


def load_options(path: str | os.PathLike) -> SlurmOptions:
    """SlurmOptions from a YAML file; unknown keys and wrong types are errors naming the file."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise KdstError(f"cannot read Slurm config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise KdstError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise KdstError(f"{path}: expected a mapping of Slurm options")
    known = {f.name: f for f in fields(SlurmOptions)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise KdstError(f"{path}: unknown Slurm option(s) {', '.join(unknown)} (known: {', '.join(known)})")
    values = {}
    for key, value in data.items():
        if value is None:
            continue
        if key in ("cpus_per_task", "gpus_per_task", "max_jobs"):
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "gpus_per_task" else 1):
                raise KdstError(f"{path}: {key} must be a whole number{'' if key == 'gpus_per_task' else ' >= 1'}, "
                                f"got {value!r}")
        elif key == "extra":
            if isinstance(value, str):
                raise KdstError(f"{path}: extra must be a list of sbatch options, e.g. [\"--qos=high\"]")
            value = tuple(str(v) for v in value)
        else:
            value = str(value)
        values[key] = value
    if "{n}" not in values.get("gpu_option", "{n}"):
        raise KdstError(f"{path}: gpu_option must contain {{n}} (the number of GPUs), e.g. --gres=gpu:{{n}}")
    return SlurmOptions(**values)


def array_spec(indices: Sequence[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``"1-3,5"``: the task ids of ``sbatch --array``."""
    parts: list[str] = []
    ordered = sorted(set(indices))
    start = prev = ordered[0]
    for i in ordered[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(parts)


def sbatch_argv(options: SlurmOptions, *, indices: Sequence[int], max_jobs: int | None, gpu: int, name: str,
                output: str, command: str) -> list[str]:
    """The sbatch command line of one array."""
    array = array_spec(indices) + (f"%{max_jobs}" if max_jobs else "")
    argv = ["sbatch", "--parsable", f"--job-name={name}", f"--array={array}", f"--output={output}",
            f"--chdir={os.getcwd()}", "--export=ALL"]  # tasks see the launcher's environment (PATH, venv)
    if options.partition:
        argv.append(f"--partition={options.partition}")
    if options.time:
        argv.append(f"--time={options.time}")
    if options.mem:
        argv.append(f"--mem={options.mem}")
    if options.cpus_per_task:
        argv.append(f"--cpus-per-task={options.cpus_per_task}")
    if gpu:
        argv.append(options.gpu_option.format(n=gpu))
    return [*argv, *options.extra, f"--wrap={command}"]


def _slurm(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)
    except FileNotFoundError:
        raise KdstError(f"{argv[0]} not found: the Slurm backend needs the Slurm client commands on PATH") from None
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"{argv[0]} timed out after {timeout:.0f} s")


def queued_tasks(job_id: str) -> set[int] | None:
    """Array task ids of ``job_id`` still in the queue (pending, running, completing); None if unknown."""
    result = _slurm(["squeue", "--noheader", "--array", f"--jobs={job_id}", "--format=%K"])
    if result.returncode != 0:
        # Slurm forgets a finished job MinJobAge seconds after it ended.
        return set() if "Invalid job id" in result.stderr else None
    return {int(w) for w in result.stdout.split() if w.isdigit()}


class SlurmBackend(Backend):
    """Jobs as the tasks of one sbatch array; the launcher waits on their status files."""

    def __init__(self, *, gpu: int = 0, options: SlurmOptions = SlurmOptions()):
        super().__init__(gpu=gpu or options.gpus_per_task)
        self.options = options

    @classmethod
    def from_config(cls, config: str | None, *, gpu: int = 0) -> SlurmBackend:
        return cls(gpu=gpu, options=load_options(config) if config else SlurmOptions())

    def default_max_jobs(self) -> int | None:
        return self.options.max_jobs  # None: as many as the cluster gives

    def run(self, jobs: Sequence[Job], max_jobs: int | None) -> list[int]:
        if not jobs:
            return []
        first = jobs[0]
        work = first.log.parent / ".slurm"
        stem = first.log.name.split(".")[0] or "job"
        work.mkdir(parents=True, exist_ok=True)
        # A fresh name per launch: a status file of an earlier launch must never be read as this one's.
        fd, name = tempfile.mkstemp(prefix=f"{stem}.{time.strftime('%Y%m%d-%H%M%S')}.", suffix=".jobs.json",
                                    dir=work)
        os.close(fd)
        jobs_file = Path(name).resolve()
        tag = jobs_file.name[:-len(".jobs.json")]
        atomic_write_text(jobs_file, json.dumps(
            {str(j.index): {"command": j.command, "log": str(j.log.resolve())} for j in jobs}, indent=1) + "\n")
        output = str(work.resolve() / tag).replace("%", "%%") + ".%a.out"  # sbatch expands %a: the task id
        argv = sbatch_argv(self.options, indices=[j.index for j in jobs], max_jobs=max_jobs, gpu=self.gpu,
                           name=f"kdst-{stem}", output=output,
                           command=f"exec {sys.executable} -m kdst.launch.slurm task {jobs_file}")
        with catch_signals() as received:
            result = _slurm(argv)
            if result.returncode != 0:
                jobs_file.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    jobs_file.parent.rmdir()
                raise KdstError(f"sbatch refused the array of {first.log}: "
                                + (result.stderr.strip().splitlines() or ["no message"])[-1])
            job_id = result.stdout.strip().split(";")[0]
            self.job_id = job_id
            codes = self._wait(job_id, jobs, jobs_file, received)
        if all(c == 0 for c in codes):
            for job in jobs:
                for path in (status_path(jobs_file, job.index), output_path(jobs_file, job.index)):
                    path.unlink(missing_ok=True)
            jobs_file.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # not empty: files of an earlier launch that failed
                jobs_file.parent.rmdir()
        return codes

    def _wait(self, job_id: str, jobs: Sequence[Job], jobs_file: Path, received: list[int]) -> list[int]:
        codes: dict[int, int] = {}
        missing_since: dict[int, float] = {}
        delay, last_squeue = FIRST_POLL_S, time.monotonic()
        while len(codes) < len(jobs):
            slept_until = time.monotonic() + delay
            while time.monotonic() < slept_until and not received:
                time.sleep(min(0.05, delay))
            if received:
                self._cancel(job_id, received)
            in_queue = None
            if time.monotonic() - last_squeue >= SQUEUE_EVERY_S:
                in_queue, last_squeue = queued_tasks(job_id), time.monotonic()  # before the status files: no race
            found = False
            for job in jobs:
                if job.index in codes:
                    continue
                code = read_status(status_path(jobs_file, job.index))
                if code is not None:
                    codes[job.index], found = code, True
                    missing_since.pop(job.index, None)
                elif in_queue is not None and job.index not in in_queue:
                    since = missing_since.setdefault(job.index, time.monotonic())
                    if time.monotonic() - since >= VANISHED_AFTER_S:
                        codes[job.index] = 1
                        self.reasons[job.index] = (f"left the Slurm queue without an exit status: killed by Slurm? "
                                                   f"see {output_path(jobs_file, job.index)}")
                elif in_queue is not None:
                    missing_since.pop(job.index, None)
            # Tasks end in bursts: after one, look again soon.
            delay = FIRST_POLL_S if found else min(delay * 1.2, MAX_POLL_S)
        return [codes[job.index] for job in jobs]

    def _cancel(self, job_id: str, received: list[int]) -> None:
        """scancel the array and wait until it has left the queue; a second signal kills at once."""
        _slurm(["scancel", job_id])
        handled = len(received)
        deadline = time.monotonic() + KILL_AFTER_S + 30  # Slurm's KillWait (30 s by default), then SIGKILL
        while time.monotonic() < deadline:
            if len(received) > handled:
                _slurm(["scancel", "--signal=KILL", "--full", job_id])
                break
            queued = queued_tasks(job_id)
            if queued is not None and not queued:
                break
            time.sleep(0.2)
        print(f"kdst launch: cancelled Slurm job {job_id}", file=sys.stderr)
        raise LaunchInterrupted(received[0])


def status_path(jobs_file: Path, index: int) -> Path:
    return jobs_file.with_name(jobs_file.name.replace(".jobs.json", f".{index}.status"))


def output_path(jobs_file: Path, index: int) -> Path:
    return jobs_file.with_name(jobs_file.name.replace(".jobs.json", f".{index}.out"))


def read_status(path: Path) -> int | None:
    """The exit status in a status file, or None while there is none."""
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):  # ValueError: not possible with atomic writes, but never crash
        return None


# --- on the node -----------------------------------------------------------------------

def requeued() -> bool:
    """Whether Slurm requeued this job while it ran (its restart count went up)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    result = scontrol("show", "job", "--oneliner", job)
    match = re.search(r"\bRestarts=(\d+)", result.stdout)
    return bool(match) and int(match.group(1)) > int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def run_task(jobs_file: Path, index: int) -> int:
    """Run array task ``index`` of ``jobs_file`` (the sbatch script does this); write its status."""
    status = status_path(jobs_file, index)
    try:
        spec = json.loads(jobs_file.read_text(encoding="utf-8"))[str(index)]
        job = Job(index, spec["command"], Path(spec["log"]))
    except (OSError, ValueError, KeyError) as e:
        print(f"kdst slurm task: cannot read task {index} of {jobs_file}: {e}", file=sys.stderr)
        atomic_write_text(status, "1\n")
        return 1
    if "SLURM_CPUS_PER_TASK" in os.environ and "OMP_NUM_THREADS" not in os.environ:
        # torch would start a thread per core of the node, not per CPU the task was given.
        os.environ["OMP_NUM_THREADS"] = os.environ["SLURM_CPUS_PER_TASK"]
    procs: list[subprocess.Popen] = []
    stopping: list[int] = []

    def forward(signum, frame) -> None:
        # Slurm signals the batch shell (this process): the job runs in its own process group.
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping.append(signum)
        for proc in procs:
            try:
                os.killpg(proc.pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
    for signum in forwarded:
        signal.signal(signum, forward)
    code = run_job(job, on_start=procs.append)
    if (stopping or code == REQUEUED_EXIT) and requeued():
        # The task runs again (e.g. a trainer saved and requeued itself): that run writes the status.
        print(f"kdst slurm task: task {index} was requeued; its next run writes the exit status", file=sys.stderr)
        return 0
    atomic_write_text(status, f"{code}\n")
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "task" or "SLURM_ARRAY_TASK_ID" not in os.environ:
        print("usage: python -m kdst.launch.slurm task JOBS_FILE   (inside a Slurm array task)", file=sys.stderr)
        return 2
    return run_task(Path(argv[1]), int(os.environ["SLURM_ARRAY_TASK_ID"]))


if __name__ == "__main__":
    sys.exit(main())
