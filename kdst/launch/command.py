"""``kdst launch``: run a command as N parallel jobs, each writing its own log (Kaldi run.pl semantics).

    kdst launch [--max-jobs N] [--backend local] [--gpu N] JOB=1:N exp/log/x.JOB.log CMD ...
    kdst launch exp/log/x.log CMD ...

Jobs, logs and quoting: kdst/launch/jobs.py.  ``--gpu N`` is recorded on the
backend for cluster backends (e.g. Slurm's ``--gres``); the local backend sets
nothing.  ``--backend slurm --config conf/slurm.yaml`` submits the jobs as one
sbatch array (kdst/launch/slurm.py).  ``--rerun-failed`` runs only the jobs whose
log does not show this same command ending with code 0, e.g. after fixing what
made 2 of 40 fail.
"""

from __future__ import annotations

import argparse
import os
import sys

from kdst.errors import KdstError
from kdst.launch.jobs import Backend, LaunchInterrupted, make_jobs, succeeded_before
from kdst.launch.local import LocalBackend

BACKENDS: dict[str, type[Backend]] = {"local": LocalBackend}
CLUSTER_BACKENDS = ("slurm",)  # imported when asked for: a local launch does without them (and yaml)


def make_backend(name: str, *, gpu: int = 0, config: str | None = None) -> Backend:
    """The backend called ``name``; ``config`` is a cluster backend's options file."""
    if name == "slurm":
        from kdst.launch.slurm import SlurmBackend

        return SlurmBackend.from_config(config, gpu=gpu)
    if name not in BACKENDS:
        raise KdstError(f"unknown backend '{name}' (known: {', '.join([*BACKENDS, *CLUSTER_BACKENDS])})")
    if config:
        raise KdstError(f"--config {config} is for a cluster backend ({', '.join(CLUSTER_BACKENDS)}), "
                        f"not --backend {name}")
    return BACKENDS[name](gpu=gpu)


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
        stage = os.environ.get("KDST_RECIPE_STAGE")  # set for a recipe stage's jobs (egs/TEMPLATE/utils/stages.sh)
        if stage:
            print(f"kdst launch: rerun the recipe from this stage: {os.environ.get('KDST_RECIPE', 'run.sh')} "
                  f"--stage {stage}", file=sys.stderr)
        elif len(jobs) > 1:
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

