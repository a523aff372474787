"""Processes: a training job dies with its recipe however the recipe dies, one trainer per exp dir,
and what killed runs left is removed by the next one.

Real processes, no mocks: a recipe stage is a shell in its own process group running ``kdst launch``,
as a terminal or an ssh session runs it.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import make_mt_task, write_config
from kdst.data.files import this_host
from kdst.errors import KdstError
from kdst.synth.speech import make_corpus

REPO = Path(__file__).resolve().parents[2]
KDST = [sys.executable, "-m", "kdst.cli"]

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")


@pytest.fixture(scope="module")
def long_config(tmp_path_factory) -> Path:
    """A tiny MT config that trains until it is stopped (1000 epochs), a log line per step."""
    root = make_mt_task(tmp_path_factory.mktemp("mt"))
    return write_config(root, root / "long.yaml", epochs=1000)


def environment() -> dict[str, str]:
    # one thread each: the machine running the tests may have two cores
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def processes_naming(exp: Path) -> list[int]:
    """Live processes whose command line names ``exp``: the trainer, and the shells and guard around it."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone meanwhile
            continue
        if state not in ("Z", "X") and any(os.fsencode(exp) in arg for arg in args):
            found.append(int(proc.name))
    return found


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def steps_logged(log: Path) -> int:
    return log.read_text(errors="replace").count(" step ") if log.exists() else 0


def train_argv(config: Path, exp: Path) -> list[str]:
    return [*KDST, "train", "--config", str(config), "--exp-dir", str(exp), "--resume"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGHUP])
def test_training_job_dies_with_its_recipe(long_config: Path, tmp_path: Path, signum: int):
    """kill -KILL of the recipe's process group (nothing can forward it), or a hangup: the trainer saves and stops."""
    exp = tmp_path / "exp"
    log = exp / "train.log"
    launch = shlex.join([*KDST, "launch", str(log), *train_argv(long_config, exp)])
    # `; echo`: the recipe's shell stays the launcher's parent instead of becoming it
    recipe = subprocess.Popen(["bash", "-c", f"{launch}; echo stage done"], env=environment(),
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: steps_logged(log) >= 2, timeout=60), "training did not start: " + \
            (log.read_text() if log.exists() else "no log")
        os.killpg(recipe.pid, signum)
        recipe.wait(timeout=10)
        assert wait_for(lambda: not processes_naming(exp), timeout=20), \
            f"still running after the recipe died: {processes_naming(exp)}\n{log.read_text()}"
    finally:
        for pid in processes_naming(exp):
            os.kill(pid, signal.SIGKILL)
    assert "kdst train: stopped by SIGTERM after saving" in log.read_text()
    assert (exp / "last.pt").is_file()


@pytest.mark.slow
def test_second_trainer_on_an_exp_dir_is_refused(long_config: Path, tmp_path: Path):
    exp, log = tmp_path / "exp", tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen(train_argv(long_config, exp), env=environment(), stdout=out,
                                 stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: steps_logged(log) >= 1, timeout=60), log.read_text()
        second = subprocess.run(train_argv(long_config, exp), env=environment(), capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 1
        assert second.stderr.splitlines() == [f"kdst train: error: {exp} is being trained by pid {first.pid} "
                                              f"on host {this_host()} ({exp}/.lock)"]
        steps = steps_logged(log)
        assert wait_for(lambda: steps_logged(log) > steps, timeout=20), "the first trainer goes on"
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if first.poll() is None:
            first.kill()
    assert (exp / "last.pt").is_file()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_corpus_build_left_by_a_killed_run_is_removed(tmp_path: Path):
    lang = tmp_path / "corpus" / "en-de"
    stale = lang / f".data.{dead_pid()}@{this_host()}.abcdefgh.tmp"
    live = lang / f".data.{os.getpid()}@{this_host()}.abcdefgh.tmp"  # a build still at work
    (stale / "train" / "wav").mkdir(parents=True)
    live.mkdir()
    # Even a run that goes no further (here: a corpus made with other settings) removes it.
    (lang / ".complete").write_text(json.dumps({"settings": {"seed": 0}, "stats": {}}))
    with pytest.raises(KdstError, match="other settings"):
        make_corpus(tmp_path / "corpus")
    assert not stale.exists() and live.exists()
