"""The RNN-T distillation recipe (egs/TEMPLATE/rnnt.sh): options, and every stage of egs/mini/rnnt1 on a tiny corpus."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

import helpers
from helpers import copy_recipe, needs

TINY_CORPUS = "--num-train 8 --num-dev 4 --num-test 4 --utts-per-talk 4 --seed 3"
ARCHS = ("same", "streaming")
MODES = {"none": "none", "hard": "hard", "soft-full": "soft_full", "soft-collapsed": "soft_collapsed",
         "hard+soft": "hard_soft"}


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    return copy_recipe(tmp_path, "mini/rnnt1")


def run_recipe(recipe: Path, *args: str) -> subprocess.CompletedProcess:
    return helpers.run_recipe(recipe, *args, timeout=1500)


def test_help_lists_the_stages_and_options(recipe: Path):
    result = run_recipe(recipe, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: egs/mini/rnnt1/run.sh [--stage N] [--stop-stage M]")
    for option in ("--student-archs", "--kd-modes", "--kd-weight", "--kd-temperature", "--hard-soft-mode",
                   "--ns-iterations", "--ns-mode", "--ns-unlabelled-set", "--ns-min-confidence",
                   "--min-confidence", "--student-jobs"):
        assert option in result.stdout
    assert "(now: same streaming)" in result.stdout and "(now: 100)" in result.stdout  # mini: BPE 100


@pytest.mark.parametrize("args, message", [
    (["--kd-modes", "none word"],
     "unknown --kd-modes entry 'word' (none hard soft-full soft-collapsed hard+soft)"),
    (["--student-archs", "huge"], "--student-archs huge: conf/train_student_huge.yaml not found"),
    (["--student-archs", "big_one"], "--student-archs big_one: an architecture name is letters and digits only"),
    (["--hard-soft-mode", "top"], "--hard-soft-mode top: full or collapsed"),
    (["--ns-mode", "soft+hard"], "--ns-mode soft+hard: hard, soft or hard+soft"),
    (["--ns-iterations", "two"], "--ns-iterations 'two': not a whole number (see --help)"),
    (["--ns-min-confidence", "high"], "--ns-min-confidence 'high': not a number (see --help)"),
    (["--kd-weight", "1.5"], "--kd-weight 1.5: a number in [0, 1]"),
    (["--report-set", "dev"], "--report-set dev: not among --test-sets (tst-COMMON)"),
    (["--beam-size", "3"], "unknown option --beam-size (see --help)"),
    (["--seeds", "1 2 x"], "--seeds '1 2 x': seeds are whole numbers"),
    (["--seeds", "3 03"], "--seeds '3 03': seed 3 is given twice"),
])
def test_bad_options_are_errors(recipe: Path, args: list[str], message: str):
    result = run_recipe(recipe, *args)
    assert result.returncode == 2
    assert result.stderr.strip() == f"egs/mini/rnnt1/run.sh: {message}"
    assert not (recipe / "data").exists()


def tiny_run(recipe: Path, *more: str) -> subprocess.CompletedProcess:
    return run_recipe(recipe, "--corpus-opts", TINY_CORPUS, "--vocab-size", "60",
                      "--train-opts", "--set train.epochs=1 --set train.keep_best=1", "--n-average", "1",
                      "--nbest-beam", "3", "--beam", "3", "--kd-weight", "0.3", "--student-jobs", "2",
                      "--min-confidence", "0", "--ns-min-confidence", "0", *more)


def kaldi_keys(path: Path) -> set[str]:
    return {line.split(" ", 1)[0] for line in path.read_text().splitlines()}


@pytest.mark.slow
@needs["espeak-ng"]
def test_all_stages_on_a_tiny_corpus(recipe: Path):
    """Teacher, hard targets, 2 architectures x 5 KD modes, a noisy-student generation, decoding and the
    matrix (one epoch each: plumbing, not quality)."""
    result = tiny_run(recipe)
    assert result.returncode == 0, result.stderr
    exp, data = recipe / "exp", recipe / "data"
    teacher = "exp/rnnt_teacher/avg_best1.pt"

    # stage 6: the hard targets, in data/train or (utterances dropped) in the subset data/train_pl
    stats = json.loads((exp / "rnnt_teacher" / "nbest_train" / "pseudo_labels.json").read_text())
    assert stats["dropped"] == 0 and stats["min_confidence"] == 0 and stats["kept"] + stats["empty"] == 8
    hard = data / "train_pl" if (data / "train_pl" / "text.1best").is_file() else data / "train"
    assert (hard == data / "train") == (stats["empty"] == 0)
    assert len(kaldi_keys(hard / "text.1best")) == stats["kept"]
    assert kaldi_keys(hard / "text.1best") == kaldi_keys(hard / "utt2num_frames")

    # stage 7: each student trained on what its mode says
    for arch in ARCHS:
        for mode, name in MODES.items():
            config = yaml.safe_load((exp / f"rnnt_{arch}_{name}" / "config.yaml").read_text())
            assert config["model"]["encoder"]["type"] == ("conformer" if arch == "same" else "streaming_conformer")
            is_hard, kd = mode in ("hard", "hard+soft"), config.get("kd")
            assert config["data"]["text"] == ("text.1best" if is_hard else "text")
            assert config["data"]["train"] == (f"data/{hard.name}" if is_hard else "data/train")
            assert (kd is not None) == (mode.startswith("soft") or mode == "hard+soft")
            if kd is not None:
                assert kd["teacher"] == teacher and kd["weight"] == 0.3
                assert kd["mode"] == ("collapsed" if mode == "soft-collapsed" else "full")

    # stage 8: one noisy-student generation taught by the stage-4 teacher (hard+soft, filtered labels)
    config = yaml.safe_load((exp / "ns_gen1" / "config.yaml").read_text())
    assert config["data"]["train"] == "data/ns_gen1" and config["kd"]["teacher"] == teacher
    assert config["model"]["encoder"]["type"] == "conformer"
    ns_stats = json.loads((exp / "ns_gen1" / "pseudo_labels.json").read_text())
    assert ns_stats["dropped"] == 0 and ns_stats["kept"] == stats["kept"]
    assert (data / "ns_gen1" / "text").read_text() == (data / "ns_gen1" / "text.1best").read_text()
    assert "wer" in json.loads((exp / "ns_gen1" / "score_tst-COMMON.json").read_text())

    # stages 9-10: every system scored, the matrix beside the results table
    systems = ["rnnt_teacher", *(f"rnnt_{a}_{m}" for a in ARCHS for m in MODES.values()), "ns_gen1"]
    results = json.loads((exp / "results.json").read_text())
    assert list(results) == systems
    assert all({"wer", "cer", "params", "sentences_per_s"} <= set(r) for r in results.values())
    assert results["rnnt_streaming_none"]["params"] < results["rnnt_same_none"]["params"]
    assert results["rnnt_same_none"]["params"] == results["rnnt_teacher"]["params"]
    matrix = json.loads((exp / "rnnt_matrix.json").read_text())
    assert matrix["archs"] == list(ARCHS) and matrix["modes"] == list(MODES)
    assert matrix["cells"]["hard+soft"]["streaming"]["wer"] == results["rnnt_streaming_hard_soft"]["wer"]
    assert [r["system"] for r in matrix["noisy_student"]] == ["rnnt_teacher", "ns_gen1"]
    registered = {s["name"]: s for s in json.loads((exp / "systems.json").read_text())["systems"]}
    assert sorted(registered) == sorted(systems)  # each training stage registered what it trained
    assert registered["rnnt_streaming_hard_soft"]["mode"] == "hard+soft"
    assert registered["ns_gen1"]["role"] == "noisy-student"
    assert registered["ns_gen1"]["teacher"] == registered["rnnt_teacher"]["model"]
    table = (exp / "RESULTS.md").read_text()
    assert table.startswith("# Results (tst-COMMON)") and "| rnnt_streaming_soft_collapsed |" in table
    assert "| mode | same (" in table and "| hard + soft |" in table and "### Noisy-student generations" in table
    assert (exp / "rnnt_matrix.png").read_bytes()[:4] == b"\x89PNG"

    again = tiny_run(recipe)
    assert again.returncode == 0, again.stderr
    assert all(f"stage {n}: done already" in again.stderr for n in range(11))

    # Seeds: the "same" column's none and hard students under seeds 1 and 2 (seed 1's resumed at their end);
    # each cell is its group, its mean over the seeds tested seed by seed against the none cell's runs
    trained = {p: p.stat().st_mtime_ns for s in ("rnnt_same_none", "rnnt_same_hard") for p in (exp / s).glob("epoch-*.pt")}
    seeded = tiny_run(recipe, "--stage", "7", "--student-archs", "same", "--kd-modes", "none hard", "--seeds", "1 2")
    assert seeded.returncode == 0, seeded.stderr
    assert trained and trained == {p: p.stat().st_mtime_ns for p in trained}
    registered = {s["name"]: s for s in json.loads((exp / "systems.json").read_text())["systems"]}
    for mode in ("none", "hard"):
        for name, seed in ((f"rnnt_same_{mode}", 1), (f"rnnt_same_{mode}_s2", 2)):
            assert yaml.safe_load((exp / name / "config.yaml").read_text())["train"]["seed"] == seed
            assert (registered[name]["seed"], registered[name]["group"], registered[name]["mode"]) == \
                (seed, f"rnnt_same_{mode}", mode)
    hard_s2 = yaml.safe_load((exp / "rnnt_same_hard_s2" / "config.yaml").read_text())["data"]
    assert (hard_s2["train"], hard_s2["text"]) == (f"data/{hard.name}", "text.1best")
    assert "ns_gen1_s2" not in registered and (exp / "ns_gen1" / "score_tst-COMMON.json").is_file()  # trained once
    results = json.loads((exp / "results.json").read_text())
    wers = {name: results[name]["wer"] for name in ("rnnt_same_none", "rnnt_same_none_s2", "rnnt_same_hard",
                                                     "rnnt_same_hard_s2")}
    assert results["rnnt_same_hard_s2"]["seeds"]["runs"] == ["rnnt_same_hard", "rnnt_same_hard_s2"]
    cell = json.loads((exp / "rnnt_matrix.json").read_text())["cells"]["hard"]["same"]
    assert cell["system"] == "rnnt_same_hard" and cell["runs"] == ["rnnt_same_hard", "rnnt_same_hard_s2"]
    assert cell["wer"] == pytest.approx((wers["rnnt_same_hard"] + wers["rnnt_same_hard_s2"]) / 2, abs=0.01)
    assert cell["baseline"] == "rnnt_same_none rnnt_same_none_s2" and "sd" in cell
