"""Requeueing a Slurm job from inside it: all the trainer needs of Slurm.

Only the standard library here: the trainer imports this on every run, under
Slurm or not.
"""

from __future__ import annotations

import os
import subprocess
import sys

# A trainer that saved a checkpoint and had its Slurm job requeued exits with this (EX_TEMPFAIL);
# the array task wrapper (kdst/launch/slurm.py) then leaves the exit status to the next run.
REQUEUED_EXIT = 75


def scontrol(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """``scontrol ARGS``; a missing or hanging scontrol is a failed call, not an exception."""
    argv = ["scontrol", *args]
    try:
        return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)
    except FileNotFoundError:
        return subprocess.CompletedProcess(argv, 127, "", "scontrol not found on PATH")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"scontrol timed out after {timeout:.0f} s")


def requeue() -> bool:
    """Requeue this Slurm job (it restarts from its batch script, later); False if not under Slurm or refused."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    result = scontrol("requeue", job)
    if result.returncode != 0:
        print(f"kdst: cannot requeue Slurm job {job}: {result.stderr.strip()}", file=sys.stderr)
    return result.returncode == 0
