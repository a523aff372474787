"""The local backend of ``kdst launch``: jobs as subprocesses of this machine.

Jobs die with the launcher however it dies: SIGINT, SIGTERM and SIGHUP are passed on
to their process groups as SIGTERM (then SIGKILL after KILL_AFTER_S), and each job
runs under a guard (kdst/launch/guard.py) that stops it if the launcher is killed
outright.

It sets nothing for ``--gpu`` (no CUDA_VISIBLE_DEVICES): local jobs see every
GPU and must choose one themselves.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import threading
import time
from typing import Sequence

from kdst.launch.jobs import KILL_AFTER_S, Backend, Job, LaunchInterrupted, catch_signals, run_job


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
                return run_job(job, on_start=on_start, guarded=True)  # jobs die with this process
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
