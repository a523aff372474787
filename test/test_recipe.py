"""The ST recipe: option parsing, and the data stages of the mini recipe end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import kaldiio
import pytest

from helpers import needs
from kdst.data.kaldi_dir import DataDir
from kdst.data.tokenizer import load_tokenizer
from kdst.data.validate import validate_data_dir

REPO = Path(__file__).resolve().parents[1]
RECIPE_OUTPUTS = ("corpus", "data", "dump", "exp", ".stages")
TINY_CORPUS = "--num-train 8 --num-dev 4 --num-test 4 --utts-per-talk 4 --seed 3"


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    """A private copy of egs/mini/st1 (sharing egs/TEMPLATE), so tests never touch the real one."""
    egs = tmp_path / "egs"
    (egs / "TEMPLATE").parent.mkdir(parents=True)
    (egs / "TEMPLATE").symlink_to(REPO / "egs" / "TEMPLATE")
    shutil.copytree(REPO / "egs" / "mini" / "st1", egs / "mini" / "st1", symlinks=True,
                    ignore=shutil.ignore_patterns(*RECIPE_OUTPUTS))  # a user's earlier run
    return egs / "mini" / "st1"


def run_recipe(recipe: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(recipe / "run.sh"), *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=600)


def test_help_lists_options_with_current_values(recipe: Path):
    result = run_recipe(recipe, "--tgt-vocab-size", "123", "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: egs/mini/st1/run.sh [--stage N] [--stop-stage M]")
    assert "--tgt-vocab-size" in result.stdout and "(now: 123)" in result.stdout
    assert "--stop-stage" in result.stdout and "(now: 12)" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--no-such-option", "1"], "unknown option --no-such-option"),
    (["--nj"], "option --nj needs a value"),
    (["stray"], "unexpected argument 'stray'"),
    (["--stage", "7"], "stage 7 is not implemented yet"),
])
def test_bad_options_are_errors(recipe: Path, args: list[str], message: str):
    result = run_recipe(recipe, *args)
    assert result.returncode == 2
    assert result.stderr.strip() == f"egs/mini/st1/run.sh: {message}" + (
        " (see --help)" if "stage 7" not in message else ": this version of kdst has stages 0-3 "
                                                         "(corpus, data, features, tokenizers)")
    assert not (recipe / "data").exists()


def test_option_equals_form(recipe: Path):
    result = run_recipe(recipe, "--nj=3", "--help")
    assert result.returncode == 0 and "(now: 3)" in result.stdout


@pytest.mark.slow
@needs["espeak-ng"]
@needs["sox"]
def test_data_stages_end_to_end_and_idempotent(recipe: Path):
    args = ["--corpus-opts", TINY_CORPUS, "--speed-perturb", "0.9,1.0,1.1",
            "--src-vocab-size", "60", "--tgt-vocab-size", "60"]
    result = run_recipe(recipe, *args)
    assert result.returncode == 0, result.stderr
    assert "stages 4-12 (teacher, KD, decoding, scoring) are not implemented yet" in result.stderr

    for split, n in (("train_sp", 24), ("dev", 4), ("tst-COMMON", 4)):
        data = recipe / "data" / split
        assert validate_data_dir(data) == []
        assert len(DataDir(data).utterances()) == n
        feats = kaldiio.load_scp(str(data / "feats.scp"))
        assert len(feats) == n and all(m.shape[1] == 80 for m in feats.values())
    assert (recipe / "data" / "train_sp" / "cmvn.ark").is_file()
    source = load_tokenizer(recipe / "data" / "tokens" / "en_bpe60")
    target = load_tokenizer(recipe / "data" / "tokens" / "de_bpe60")
    some_text = next(iter(DataDir(recipe / "data" / "train").require("text.de").values()))
    assert target.decode(target.encode(some_text)) == some_text
    assert len(source.tokens) <= 60

    # A second run with the same options does nothing.
    stamps = {p: p.stat().st_mtime_ns for p in (recipe / "data").rglob("*") if p.is_file()}
    again = run_recipe(recipe, *args)
    assert again.returncode == 0, again.stderr
    assert all(f"stage {n}: done already" in again.stderr for n in range(4))
    assert stamps == {p: p.stat().st_mtime_ns for p in (recipe / "data").rglob("*") if p.is_file()}

    # A changed option re-runs its stage (and only the stages from there on).
    changed = run_recipe(recipe, *args[:-1], "50")
    assert changed.returncode == 0, changed.stderr
    assert "stage 2: done already" in changed.stderr and "stage 3: train_tokenizers" in changed.stderr
    assert (recipe / "data" / "tokens" / "de_bpe50").is_dir()
