"""The first process of a local job: the job dies with its launcher, however the launcher dies.

``run_job(guarded=True)`` starts ``python guard.py LAUNCHER_PID COMMAND`` in a session of its
own; the guard runs ``bash -c COMMAND`` in its process group and waits for it.  Signals sent to
the group (the launcher's SIGTERM) reach the job directly, so the guard only survives them.
What nobody can forward is the launcher's own death (``kill -9`` of a recipe, a lost ssh
session): then the kernel sends the guard SIGTERM (PR_SET_PDEATHSIG, Linux; elsewhere it
notices within a second), and the guard sends SIGTERM to the group and SIGKILL after
KILL_AFTER_S.  A ``kdst train`` saves ``last.pt`` on that SIGTERM.

The guard exits as the job did: with its code, or killed by its signal.  It is run by path
and imports only the standard library, so it starts in milliseconds.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys

# After the first SIGTERM to a job, how long before SIGKILL.
KILL_AFTER_S = 10

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(signum: int = signal.SIGTERM) -> bool:
    """Have the kernel send ``signum`` when the thread that started this process ends (Linux only).

    It is the starting *thread*, not process: the launcher starts each job from the thread that
    then waits for it, so the signal comes when the job is over or the launcher is gone.
    False where it cannot be set.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def main(argv: list[str]) -> int:
    launcher, command = int(argv[0]), argv[1]
    stopping: list[bool] = []

    def launcher_gone() -> bool:
        return os.getppid() != launcher  # an orphan is adopted by init or a subreaper

    def stop_job() -> None:
        if stopping:
            return
        stopping.append(True)
        signal.signal(signal.SIGALRM, lambda signum, frame: os.killpg(0, signal.SIGKILL))
        signal.alarm(KILL_AFTER_S)
        os.killpg(0, signal.SIGTERM)  # the guard too, which survives it (on_signal)

    def on_signal(signum, frame) -> None:
        # A signal to the group has reached the job already; the launcher's death is the guard's to pass on.
        if launcher_gone():
            stop_job()

    # Handlers, not SIG_IGN: the job's programs start with every signal at its default again.
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, on_signal)
    watched = die_with_parent(signal.SIGTERM)
    if launcher_gone():  # it died before the kernel could be asked to tell
        return 128 + signal.SIGTERM
    job = subprocess.Popen(["bash", "-c", command])
    while True:
        try:
            code = job.wait(timeout=None if watched else 1.0)
            break
        except subprocess.TimeoutExpired:
            if launcher_gone():
                stop_job()
    if stopping:  # nobody waits for this status; leave no straggler of the job behind
        os.killpg(0, signal.SIGKILL)
    return code


def exit_as(code: int) -> None:
    """End this process as the job ended: ``code``, or (negative) killed by signal ``-code``."""
    if code >= 0:
        sys.exit(code)
    signum = -code
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the job dumped its core if it would; not the guard
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    sys.exit(128 + signum)  # a signal that does not kill


if __name__ == "__main__":
    exit_as(main(sys.argv[1:]))
