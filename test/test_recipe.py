"""The ST recipe: option parsing, and the data stages of the mini recipe end to end."""

from __future__ import annotations

import json
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
    (["--no-such-option", "1"], "unknown option --no-such-option (see --help)"),
    (["--nj"], "option --nj needs a value (see --help)"),
    (["stray"], "unexpected argument 'stray' (see --help)"),
    (["--stage", "7", "--stop-stage", "7"],
     "stage 7 is not implemented yet (implemented: 0 1 2 3 4 5 9 11 12 )"),
    (["--kd-modes", "none word"], "--kd-modes word is not implemented yet: only 'none' (the baseline) is"),
])
def test_bad_options_are_errors(recipe: Path, args: list[str], message: str):
    result = run_recipe(recipe, *args)
    assert result.returncode == 2
    assert result.stderr.strip() == f"egs/mini/st1/run.sh: {message}"
    assert not (recipe / "data").exists()


def test_option_equals_form(recipe: Path):
    result = run_recipe(recipe, "--nj=3", "--help")
    assert result.returncode == 0 and "(now: 3)" in result.stdout


@pytest.mark.slow
@needs["espeak-ng"]
@needs["sox"]
def test_data_stages_end_to_end_and_idempotent(recipe: Path):
    args = ["--corpus-opts", TINY_CORPUS, "--speed-perturb", "0.9,1.0,1.1",
            "--src-vocab-size", "60", "--tgt-vocab-size", "60", "--stop-stage", "3"]
    result = run_recipe(recipe, *args)
    assert result.returncode == 0, result.stderr

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
    changed = run_recipe(recipe, *args[:-3], "50", "--stop-stage", "3")
    assert changed.returncode == 0, changed.stderr
    assert "stage 2: done already" in changed.stderr and "stage 3: train_tokenizers" in changed.stderr
    assert (recipe / "data" / "tokens" / "de_bpe50").is_dir()


@pytest.mark.slow
@needs["espeak-ng"]
def test_all_stages_on_a_tiny_corpus(recipe: Path):
    """Teacher, baseline student, decoding and scoring end to end (one epoch each: plumbing, not quality)."""
    result = run_recipe(recipe, "--corpus-opts", TINY_CORPUS, "--src-vocab-size", "60", "--tgt-vocab-size", "60",
                        "--train-opts", "--set train.epochs=2 --set train.keep_best=2", "--n-average", "2",
                        "--beam", "3", "--decode-nj", "2")
    assert result.returncode == 0, result.stderr
    for n, what in ((6, "teacher_topk_cache"), (7, "teacher_nbest"), (8, "rescore_nbest"), (10, "finetune_word_kd")):
        assert f"stage {n}: {what} is not implemented yet; skipped" in result.stderr
    results = json.loads((recipe / "exp" / "results.json").read_text())
    assert set(results) == {"mt_teacher", "st_none"}
    for system in results.values():
        assert {"bleu", "chrf", "ter", "n", "params", "sentences_per_s"} <= system.keys() and system["n"] == 4
    assert "rtf" in results["st_none"]
    table = (recipe / "exp" / "RESULTS.md").read_text()
    assert "| st_none |" in table and "nrefs:1|case:mixed" in table
    hyps = (recipe / "exp" / "st_none" / "decode_tst-COMMON" / "hyp.txt").read_text().splitlines()
    assert [h.split()[0] for h in hyps] == DataDir(recipe / "data" / "tst-COMMON").utterances()
    train_log = (recipe / "exp" / "st_none" / "train.log").read_text()
    assert train_log.startswith("# kdst train") and "# Ended (code 0)" in train_log
