"""Overhead of ``kdst launch``: a 4-task array, submit -> all done, local backend vs Slurm backend.

    tools/venv/bin/python bench/launch_overhead.py [--tasks 4] [--repeats 5]

Each backend runs ``JOB=1:N`` with tasks ``true`` and ``sleep 1``, in this process
(no interpreter start-up in the figures); the overhead is the wall time minus what
the task itself takes.  With ``SLURM_CONF`` set it uses that cluster; otherwise, as
root with Slurm installed, it starts the tests' single-node cluster on localhost
(test/slurm_cluster.py) and stops it at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))
sys.path.insert(0, str(REPO))

from kdst.launch import launch  # noqa: E402


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    if launch(argv) != 0:
        raise SystemExit(f"kdst launch {' '.join(argv)} failed")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    cluster = None
    if "SLURM_CONF" not in os.environ:
        from slurm_cluster import start_cluster, stop_cluster, unavailable_reason

        reason = unavailable_reason()
        if reason:
            raise SystemExit(reason)
        started = time.perf_counter()
        cluster = start_cluster()
        os.environ["SLURM_CONF"] = cluster.env["SLURM_CONF"]
        print(f"single-node test cluster up in {time.perf_counter() - started:.1f} s")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"{args.tasks}-task array, {args.repeats} runs each: wall time submit -> all done "
                  f"(median, min), overhead = median - task time")
            print(f"{'backend':8} {'task':8} {'median s':>9} {'min s':>7} {'overhead s':>11}")
            for task, seconds in (("true", 0.0), ("sleep 1", 1.0)):
                for backend in ("local", "slurm"):
                    times = [timed(["--backend", backend, "--max-jobs", str(args.tasks), f"JOB=1:{args.tasks}",
                                    f"{tmp}/{backend}.{i}.JOB.log", *task.split()])
                             for i in range(args.repeats)]
                    median = statistics.median(times)
                    print(f"{backend:8} {task:8} {median:9.2f} {min(times):7.2f} {median - seconds:11.2f}")
    finally:
        if cluster is not None:
            stop_cluster(cluster)
            shutil.rmtree(cluster.root, ignore_errors=True)


if __name__ == "__main__":
    main()
