"""Running jobs: ``kdst launch`` (Kaldi run.pl semantics) on this machine or a Slurm cluster.

    jobs.py     job ranges, quoting, logs, signals; the Backend interface
    local.py    the local backend (subprocesses, each under guard.py)
    guard.py    a job's process-group leader that dies with the launcher and takes the job with it
    slurm.py    the Slurm backend (one sbatch array per launch); imported only when asked for
    command.py  the ``kdst launch`` command and the backend registry
    split.py    one kdst command as N jobs over the parts of a split data dir
    requeue.py  what a trainer needs under Slurm, and nothing more

Imports go one way: jobs <- local, slurm <- command; split and requeue stand apart
(split starts the launcher as a subprocess).
"""

from kdst.launch.command import BACKENDS, add_arguments, launch, main, make_backend, run
from kdst.launch.jobs import Backend, Job, LaunchInterrupted, make_jobs, parse_job_range, run_job, shell_join
from kdst.launch.local import LocalBackend

__all__ = ["BACKENDS", "Backend", "Job", "LaunchInterrupted", "LocalBackend", "add_arguments", "launch", "main",
           "make_backend", "make_jobs", "parse_job_range", "run", "run_job", "shell_join"]
