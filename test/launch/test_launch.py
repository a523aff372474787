"""kdst launch: real subprocesses, no mocks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdst.errors import KdstError
from kdst.launch import BACKENDS, Job, LocalBackend, launch, parse_job_range, run_job, shell_join

REPO = Path(__file__).resolve().parents[2]


def body(log: Path) -> list[str]:
    """The job's own output: the log without its two header and two footer lines."""
    return log.read_text().splitlines()[2:-2]


def test_parse_job_range():
    assert parse_job_range("JOB=1:4") == ("JOB", 1, 4)
    assert parse_job_range("SPLIT=2:8") == ("SPLIT", 2, 8)
    assert parse_job_range("JOB=3") == ("JOB", 3, 3)
    assert parse_job_range("exp/log/x.log") is None
    assert parse_job_range("exp/lr=0.1/x.log") is None


@pytest.mark.parametrize("spec", ["JOB=a:b", "JOB=1:", "JOB=:4", "JOB=4:1", "JOB=1:2:3", "JOB="])
def test_bad_range_is_a_kdst_error(spec, tmp_path):
    with pytest.raises(KdstError, match="bad job range"):
        launch([spec, str(tmp_path / "x.JOB.log"), "true"])


@pytest.mark.parametrize("argv", [[], ["JOB=1:2"], ["JOB=1:2", "log.JOB"], ["only.log"]])
def test_missing_command_is_a_kdst_error(argv):
    with pytest.raises(KdstError, match="missing"):
        launch(argv)


def test_range_needs_job_in_log_name(tmp_path):
    with pytest.raises(KdstError, match="put JOB in its name"):
        launch(["JOB=1:2", str(tmp_path / "x.log"), "true"])


def test_job_substitution_header_and_footer(tmp_path):
    assert launch(["JOB=1:3", str(tmp_path / "log" / "x.JOB.log"), "echo", "hello JOB", "JOB"]) == 0
    for i in (1, 2, 3):
        lines = (tmp_path / "log" / f"x.{i}.log").read_text().splitlines()
        assert lines[0] == f"# echo 'hello {i}' {i}"
        assert lines[1].startswith("# Started at ")
        assert lines[2] == f"hello {i} {i}"
        assert re.fullmatch(r"# Accounting: time=\d+ threads=1", lines[3])
        assert re.fullmatch(r"# Ended \(code 0\) at .+, elapsed time \d+ seconds", lines[4])


def test_other_variable_name_and_start(tmp_path):
    assert launch(["SPLIT=2:3", str(tmp_path / "s.SPLIT.log"), "echo", "part", "SPLIT"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.2.log", "s.3.log"]
    assert body(tmp_path / "s.3.log") == ["part 3"]


def test_single_job_creates_log_dir(tmp_path):
    log = tmp_path / "a" / "b" / "one.log"
    assert launch([str(log), "echo", "hi"]) == 0
    assert body(log) == ["hi"]


def test_quoting_keeps_arguments_and_operators(tmp_path):
    args = ["a b $HOME `x`", "it's", 'say "hi"', "ark:gunzip -c x.gz|", "semi;colon", "*", ""]
    log = tmp_path / "q.log"
    assert launch([str(log), "printf", "%s\\n", *args]) == 0
    assert body(log) == args
    # Operators as separate words (Kaldi's \|) stay shell syntax; stderr goes to the log too.
    log = tmp_path / "p.log"
    assert launch([str(log), "echo", "abc", "|", "tr", "a-z", "A-Z", "&&", "echo", "err", ">&2"]) == 0
    assert body(log) == ["ABC", "err"]
    assert shell_join(["echo", "x y", "2>&1"]) == "echo 'x y' 2>&1"


def test_command_options_are_not_eaten(tmp_path):
    log = tmp_path / "o.log"
    assert launch(["--max-jobs", "1", str(log), "echo", "--max-jobs", "-h", "--gpu"]) == 0
    assert body(log) == ["--max-jobs -h --gpu"]


def test_failing_job_is_reported(tmp_path, capsys):
    log = str(tmp_path / "f.JOB.log")
    # Job 2 exits 3, the others succeed.
    assert launch(["JOB=1:3", log, "test", "JOB", "-ne", "2", "||", "exit", "3"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"kdst launch: job 2 failed (exit 3), log: {tmp_path / 'f.2.log'}",
                   "kdst launch: 1 / 3 failed", "kdst launch: to run only the failed jobs again, add --rerun-failed"]
    assert (tmp_path / "f.2.log").read_text().splitlines()[-1].startswith("# Ended (code 3) at ")
    assert (tmp_path / "f.1.log").read_text().splitlines()[-1].startswith("# Ended (code 0) at ")


PROBE = """
import fcntl, os, sys, time
state = sys.argv[1]

def update(delta):
    # running count and peak, changed under an exclusive lock
    with open(state + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        running, peak = (map(int, open(state).read().split()) if os.path.exists(state) else (0, 0))
        running += delta
        peak = max(peak, running)
        with open(state, "w") as f:
            f.write(f"{running} {peak}")
        return peak

update(+1)
# Wait (bounded) until two jobs have overlapped, so a serial launcher fails the test
# instead of passing it by luck; a correct one reaches the peak at once.
deadline = time.monotonic() + 5
while update(0) < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
time.sleep(0.05)
update(-1)
"""


def test_max_jobs_limits_concurrency(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    state = tmp_path / "state"
    argv = ["--max-jobs", "2", "JOB=1:6", str(tmp_path / "p.JOB.log"), sys.executable, str(probe), str(state)]
    assert launch(argv) == 0
    running, peak = map(int, state.read_text().split())
    assert (running, peak) == (0, 2)


def test_backend_registry_and_run_job(tmp_path):
    assert BACKENDS["local"] is LocalBackend
    jobs = [Job(1, "exit 4", tmp_path / "a.log"), Job(2, "true", tmp_path / "b.log")]
    assert LocalBackend().run(jobs, 1) == [4, 0]
    status = tmp_path / "status"
    assert run_job(Job(7, "exit 5", tmp_path / "c.log"), status_path=status) == 5
    assert status.read_text() == "5\n"


def _dead(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie nobody reaped yet is dead too


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_signal_kills_jobs(tmp_path, signum, code):
    # Each job records its shell and a background child: both must die with the launcher.
    script = f"echo $$ > {tmp_path}/shell.JOB.tmp; sleep 60 & echo $! > {tmp_path}/child.JOB.tmp; " \
             f"mv {tmp_path}/shell.JOB.tmp {tmp_path}/shell.JOB; mv {tmp_path}/child.JOB.tmp {tmp_path}/child.JOB; wait"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    launcher = subprocess.Popen([sys.executable, "-m", "kdst.launch", "JOB=1:2", str(tmp_path / "k.JOB.log"),
                                 "bash", "-c", script], env=env, stderr=subprocess.PIPE, text=True)
    try:
        files = [tmp_path / f"{kind}.{i}" for kind in ("shell", "child") for i in (1, 2)]
        assert _wait_for(lambda: all(f.exists() for f in files)), "jobs did not start"
        pids = [int(f.read_text()) for f in files]
        launcher.send_signal(signum)
        _, err = launcher.communicate(timeout=10)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == code
    assert f"interrupted by {signum.name}" in err
    assert _wait_for(lambda: all(_dead(pid) for pid in pids), timeout=5)
    for i in (1, 2):
        footer = (tmp_path / f"k.{i}.log").read_text().splitlines()[-1]
        assert footer.startswith("# Ended (code 143: killed by SIGTERM) at ")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_jobs_die_when_the_launcher_is_killed(tmp_path):
    # SIGKILL cannot be caught: the jobs' guards must notice the launcher is gone by themselves.
    script = f"sleep 60 & echo $! > {tmp_path}/child.tmp; mv {tmp_path}/child.tmp {tmp_path}/child; wait"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    launcher = subprocess.Popen([sys.executable, "-m", "kdst.launch", str(tmp_path / "k.log"), "bash", "-c", script],
                                env=env)
    try:
        assert _wait_for(lambda: (tmp_path / "child").exists()), "the job did not start"
        child = int((tmp_path / "child").read_text())
        launcher.kill()
        launcher.wait(timeout=10)
        assert _wait_for(lambda: _dead(child), timeout=5), "the job outlived its launcher"
    finally:
        if launcher.poll() is None:
            launcher.kill()
