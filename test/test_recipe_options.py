"""Recipe options, progress and failures: nothing breaks quietly.

Every template (st, asr, rnnt) refuses a bad option with one line naming it and exit 2
before anything runs; a training stage says where its log is and how far it has got
(egs/TEMPLATE/utils/progress.sh); a failed job inside a stage says to rerun the recipe
from that stage (egs/TEMPLATE/utils/stages.sh exports the stage to kdst launch).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import helpers
from helpers import REPO, copy_recipe

UTILS = REPO / "egs" / "TEMPLATE" / "utils"
LAST_STAGE = {"mini/st1": 12, "mini/asr1": 10, "mini/rnnt1": 10}
A_NUMBER_OPTION = {"mini/st1": "--kd-temperature", "mini/asr1": "--gold-weight", "mini/rnnt1": "--min-confidence"}


@pytest.fixture(scope="module")
def recipes(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("recipes")
    return {name: copy_recipe(root, name)
            for name in (*LAST_STAGE, "mustc/st1", "wsj/asr1", "librispeech/rnnt1")}


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def bad_options(name: str) -> list[tuple[list[str], str]]:
    last = LAST_STAGE[name]
    number = A_NUMBER_OPTION[name]
    return [
        (["--stage", "abc"], "--stage 'abc': not a whole number (see --help)"),
        (["--stage", str(last + 1)], f"--stage {last + 1}: this recipe's stages are 0 to {last} (see --help)"),
        (["--stop-stage", "99"], f"--stop-stage 99: this recipe's stages are 0 to {last} (see --help)"),
        (["--stop-stage=-1"], "--stop-stage '-1': not a whole number (see --help)"),
        (["--stage", "5", "--stop-stage", "3"], "--stop-stage 3 is before --stage 5: no stage would run"),
        (["--bogus"], "unknown option --bogus (see --help)"),
        (["--bogus=1"], "unknown option --bogus (see --help)"),
        (["--bogus", "1"], "unknown option --bogus (see --help)"),
        (["stray"], "unexpected argument 'stray' (see --help)"),
        (["--"], "unexpected argument '--' (see --help)"),
        (["--nj"], "option --nj needs a value (see --help)"),
        (["--nj", "x"], "--nj 'x': not a whole number (see --help)"),
        (["--nj=0"], "--nj 0: must be at least 1"),
        (["--beam", "2.5"], "--beam '2.5': not a whole number (see --help)"),
        (["--decode-nj="], "--decode-nj '': not a whole number (see --help)"),
        ([number, "high"], f"{number} 'high': not a number (see --help)"),
        (["--seeds", "1 x"], "--seeds '1 x': seeds are whole numbers"),
        (["--seeds", "2 1 02"], "--seeds '2 1 02': seed 2 is given twice"),
        (["--seeds", " "], "--seeds is empty"),
    ]


CASES = [(name, args, message) for name in LAST_STAGE for args, message in bad_options(name)]


@pytest.mark.parametrize("name, args, message", CASES, ids=[f"{n}:{' '.join(a)}" for n, a, _ in CASES])
def test_a_bad_option_is_one_line_and_exit_2(recipes, name: str, args: list[str], message: str):
    recipe = recipes[name]
    before = listing(recipe)
    result = helpers.run_recipe(recipe, *args, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"egs/{name}/run.sh: {message}"]
    assert listing(recipe) == before  # nothing written: the checks come before any stage


@pytest.mark.parametrize("name", ["mustc/st1", "wsj/asr1", "librispeech/rnnt1"])
def test_the_corpus_recipes_check_their_options_too(recipes, name: str):
    for args, message in ((["--stage", "5", "--stop-stage", "3"], "--stop-stage 3 is before --stage 5: no stage would run"),
                          (["--stage", "13"], "--stage 13: this recipe's stages are 0 to"),
                          (["--bogus"], "unknown option --bogus (see --help)"),
                          (["--nj", "many"], "--nj 'many': not a whole number (see --help)")):
        result = helpers.run_recipe(recipes[name], *args, timeout=60)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.splitlines()) == 1
        assert result.stderr.startswith(f"egs/{name}/run.sh: {message}")


def test_word_kd_options_are_checked_before_any_stage(recipes):
    """--kd-weight and --student-modes are checked at option time: one line, nothing written."""
    recipe = recipes["mini/asr1"]
    before = listing(recipe)
    for value in ("1.5", "-0.1"):
        result = helpers.run_recipe(recipe, "--kd-weight", value, timeout=60)
        assert result.returncode == 2 and result.stderr.splitlines() == [
            f"egs/mini/asr1/run.sh: --kd-weight {value}: must be between 0 and 1"]
    unknown = helpers.run_recipe(recipe, "--student-modes", "gold words", timeout=60)
    assert unknown.returncode == 2 and unknown.stderr.splitlines() == [
        "egs/mini/asr1/run.sh: unknown --student-modes entry 'words' "
        "(gold 1best nbest_expand nbest_sample nbest_weighted word)"]
    assert listing(recipe) == before  # nothing written: the checks come before any stage

def test_options_declare_their_types(tmp_path: Path):
    """opt NAME DEFAULT HELP TYPE: int, count, num and their '?' forms (empty allowed)."""
    script = f"""
        set -euo pipefail
        prog=demo
        . {UTILS}/options.sh
        opt jobs 1 "" count
        opt epochs "" "" count?
        opt first 0 "" int
        opt scale 1.0 "" num
        opt floor "" "" num?
        parse_options "$@"
        echo "$jobs|$epochs|$first|$scale|$floor"
    """
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", script, "demo", *args], capture_output=True, text=True, timeout=30)

    ok = run("--jobs", "08", "--epochs=", "--first", "0", "--scale", "-2.5e-3", "--floor", ".5")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "8||0|-2.5e-3|.5\n"  # whole numbers in base 10 (08 is not octal here)
    for args, message in ((["--jobs", "0"], "--jobs 0: must be at least 1"),
                          (["--epochs", "two"], "--epochs 'two': not a whole number (see --help)"),
                          (["--first", "-1"], "--first '-1': not a whole number (see --help)"),
                          (["--scale", ""], "--scale '': not a number (see --help)"),
                          (["--floor", "1.2.3"], "--floor '1.2.3': not a number (see --help)")):
        bad = run(*args)
        assert (bad.returncode, bad.stderr) == (2, f"demo: {message}\n")
    typo = subprocess.run(["bash", "-c", f". {UTILS}/options.sh; opt x 1 '' integer"], capture_output=True,
                          text=True, timeout=30)
    assert typo.returncode == 2 and "unknown type 'integer'" in typo.stderr


# --- training progress -------------------------------------------------------------------

FAKE_TRAINING = r"""#!/usr/bin/env bash
# fake_launch LOG STATUS: what kdst launch + kdst train write into LOG, over about 3 s
log=$1
sleep 0.3
{ echo "# kdst train --exp-dir $(dirname "$log")"; echo "# Started at now"; } >"$log"
printf 'data:\n  epochs: 99\ntrain:\n  epochs: 3\n  max_steps: null\n' >"$(dirname "$log")/config.yaml"
for s in $(seq 1 30); do
  echo "2026-01-01 00:00:00,000 INFO kdst.train: epoch $(( (s - 1) / 10 + 1 )) step $s: ce=1 loss=$s.5 lr=1" >>"$log"
  if [ $((s % 10)) -eq 0 ]; then
    echo "2026-01-01 00:00:00,000 INFO kdst.train: epoch $((s / 10)) done: validation nll=$s.25 acc=0.5" >>"$log"
  fi
  sleep 0.1
done
echo "# Accounting: time=3 threads=1" >>"$log"
echo "# Ended (code $2) at now, elapsed time 3 seconds" >>"$log"
exit "$2"
"""


def run_with_progress(tmp_path: Path, status: int) -> tuple[subprocess.CompletedProcess, float]:
    fake = tmp_path / "fake_launch"
    fake.write_text(FAKE_TRAINING)
    fake.chmod(0o755)
    exp = tmp_path / "exp" / "st_word"
    exp.mkdir(parents=True)
    stale = exp / "train.log"  # an earlier run's log, until the launcher starts the job again
    stale.write_text("2025-01-01 00:00:00,000 INFO kdst.train: epoch 9 step 999: loss=0.1\n")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    script = f"""
        set -euo pipefail
        prog=egs/mini/st1/run.sh
        . {UTILS}/stages.sh
        . {UTILS}/progress.sh
        with_progress exp/st_word {fake} exp/st_word/train.log {status}
        echo "with_progress returned 0" >&2
        sleep 1  # the follower is gone: nothing more is printed
    """
    env = {**os.environ, "KDST_PROGRESS_INTERVAL": "1", "KDST_PROGRESS_POLL": "0.1"}
    start = time.monotonic()
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env,
                            timeout=60)
    return result, time.monotonic() - start


def progress_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "] exp/st_word: epoch" in line]


def test_training_prints_its_log_and_progress_at_a_modest_rate(tmp_path: Path):
    result, seconds = run_with_progress(tmp_path, 0)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].endswith("[egs/mini/st1/run.sh] training exp/st_word: log in exp/st_word/train.log")
    progress = progress_lines(result.stderr)
    # about 3 s of training (more on a busy machine), a line at most every second (bash counts whole ones)
    assert 2 <= len(progress) <= seconds + 2, result.stderr
    assert all(re.search(r"exp/st_word: epoch [1-3] step \d+, loss \d+\.5", line) for line in progress)
    assert "999" not in result.stderr  # the earlier run's log is not taken for this one
    # once an epoch has finished: its validation, and an estimate of the time left
    assert any(re.search(r"after epoch [12]: validation nll=[12]0\.25 acc=0\.5; about \d+ s left \(epoch [23] of 3\)$",
                         line) for line in progress), result.stderr
    assert lines[-2].endswith("training exp/st_word: finished: epoch 3 step 30, loss 30.5; "
                              "after epoch 3: validation nll=30.25 acc=0.5")
    assert lines[-1] == "with_progress returned 0"  # and the follower said nothing in the second after


def test_a_failed_training_keeps_its_exit_status(tmp_path: Path):
    result, _ = run_with_progress(tmp_path, 3)
    assert result.returncode == 3  # set -e stops the script with the training's status
    assert "with_progress returned" not in result.stderr
    assert result.stderr.splitlines()[-1].endswith(
        "training exp/st_word: failed (exit 3) at epoch 3 step 30, loss 30.5; after epoch 3: "
        "validation nll=30.25 acc=0.5; see exp/st_word/train.log")


def test_the_follower_stops_when_the_log_says_the_job_ended(tmp_path: Path):
    """Without with_progress to stop it (and no parent to watch), the log's last line ends it."""
    fake = tmp_path / "fake_launch"
    fake.write_text(FAKE_TRAINING)
    fake.chmod(0o755)
    (tmp_path / "exp" / "x").mkdir(parents=True)
    script = f"""
        set -euo pipefail
        prog=demo
        . {UTILS}/stages.sh
        . {UTILS}/progress.sh
        {fake} exp/x/train.log 0 &
        follow_training exp/x
        wait
    """
    env = {**os.environ, "KDST_PROGRESS_INTERVAL": "1", "KDST_PROGRESS_POLL": "0.1"}
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert progress_lines(result.stderr.replace("exp/x:", "exp/st_word:"))


# --- a failed job inside a stage -----------------------------------------------------------

DEMO_RECIPE = """#!/usr/bin/env bash
# A recipe of three stages whose stage 1 launches two jobs, one of which fails.
set -euo pipefail
cd "$(dirname "$0")"
template=$(cd ../../TEMPLATE && pwd -P)
prog=egs/demo/x1/run.sh
. "$template/utils/options.sh"
. "$template/utils/stages.sh"
opt stage 0 "first stage to run" int
opt stop_stage 2 "last stage to run" int
parse_options "$@"
implemented=" 0 1 2 "
check_stages
nothing() { :; }
two_jobs() { kdst launch JOB=1:2 exp/log/part.JOB.log test JOB -ne 2; }
run_stage 0 "" nothing
run_stage 1 "" two_jobs
run_stage 2 "" nothing
"""


def test_a_failed_job_in_a_stage_says_to_rerun_the_recipe_from_that_stage(tmp_path: Path):
    egs = tmp_path / "egs"
    (egs / "demo" / "x1").mkdir(parents=True)
    (egs / "TEMPLATE").symlink_to(REPO / "egs" / "TEMPLATE")
    run = egs / "demo" / "x1" / "run.sh"
    run.write_text(DEMO_RECIPE)
    run.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KDST_RECIPE")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    result = subprocess.run([str(run)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1, result.stderr
    err = result.stderr
    assert "kdst launch: job 2 failed (exit 1), log: exp/log/part.2.log" in err
    assert "kdst launch: rerun the recipe from this stage: egs/demo/x1/run.sh --stage 1\n" in err
    assert "--rerun-failed" not in err
    assert re.search(r"\] stage 1: failed \(exit 1\) after \d+ s; after fixing the cause, rerun the recipe "
                     r"from this stage: egs/demo/x1/run.sh --stage 1\n$", err), err
    stages = run.parent / ".stages"
    assert (stages / "stage0.done").is_file() and not (stages / "stage1.done").exists()
    assert "stage 2" not in err


def test_a_training_that_logged_nothing_is_described_as_nothing():
    """A trainer refused at once (a config error) logged no step: the failure line names only the log."""
    script = f". {UTILS}/progress.sh; echo \"[$(describe_state '')]\"; describe_state '3 40 2.5 2 30 nll=1.2'"
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["[]", "epoch 3 step 40, loss 2.5; after epoch 2: validation nll=1.2"]
