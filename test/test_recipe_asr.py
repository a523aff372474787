"""The ASR compression recipe (egs/TEMPLATE/asr.sh): options, and every stage of egs/mini/asr1 on a tiny corpus."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

import helpers
from helpers import copy_recipe, needs
from kdst.data.nbest_targets import read_pseudo_nbest

TINY_CORPUS = "--num-train 8 --num-dev 4 --num-test 4 --utts-per-talk 4 --seed 3"
MODES = ("gold", "1best", "nbest_expand", "nbest_sample", "nbest_weighted", "word")
TINY = ["--corpus-opts", TINY_CORPUS, "--vocab-size", "60",
        "--train-opts", "--set train.epochs=2 --set train.keep_best=2", "--n-average", "2",
        "--nbest-beam", "3", "--nbest-size", "3", "--gold-weight", "0.2", "--beam", "3", "--decode-nj", "2"]


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    return copy_recipe(tmp_path, "mini/asr1")


def run_recipe(recipe: Path, *args: str) -> subprocess.CompletedProcess:
    return helpers.run_recipe(recipe, *args, timeout=900)


def test_help_lists_the_stages_and_options(recipe: Path):
    result = run_recipe(recipe, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: egs/mini/asr1/run.sh [--stage N] [--stop-stage M]")
    assert "--student-modes" in result.stdout and "--gold-weight" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--student-modes", "gold nbest"],
     "unknown --student-modes entry 'nbest' (gold 1best nbest_expand nbest_sample nbest_weighted word)"),
    (["--student-sizes", "huge"], "--student-sizes huge: conf/train_student_huge.yaml not found"),
    (["--nbest-size", "8", "--nbest-beam", "4"], "--nbest-size 8 exceeds --nbest-beam 4"),
    (["--seeds", "1 two"], "--seeds '1 two': seeds are whole numbers"),
    (["--seeds", "2 1 02"], "--seeds '2 1 02': seed 2 is given twice"),
    (["--seeds", " "], "--seeds is empty"),
])
def test_bad_options_are_errors(recipe: Path, args: list[str], message: str):
    result = run_recipe(recipe, *args)
    assert result.returncode == 2
    assert result.stderr.strip() == f"egs/mini/asr1/run.sh: {message}"
    assert not (recipe / "data").exists()


@pytest.mark.slow
@needs["espeak-ng"]
def test_all_stages_on_a_tiny_corpus(recipe: Path):
    """Teacher, n-best, pseudo labels, a student per mode, decoding and the compression report
    (two epochs each: plumbing, not quality)."""
    result = run_recipe(recipe, *TINY, "--student-modes", " ".join(MODES))
    assert result.returncode == 0, result.stderr
    # a training stage names its log, and how training ended (egs/TEMPLATE/utils/progress.sh)
    assert "training exp/asr_teacher: log in exp/asr_teacher/train.log" in result.stderr
    assert re.search(r"training exp/asr_teacher: finished: (epoch 2 step \d+, loss \S+; )?after epoch 2: "
                     r"validation nll=", result.stderr)
    exp, train = recipe / "exp", recipe / "data" / "train"

    one_best = dict(line.split(" ", 1) for line in (train / "text.1best").read_text().splitlines())
    nbest = read_pseudo_nbest(train / "pseudo_nbest3.txt")
    assert set(one_best) == set(nbest) and len(nbest) == 8
    assert all(abs(sum(w for w, _ in hyps) - 1) < 1e-4 and len(hyps) <= 3 for hyps in nbest.values())
    stats = json.loads((exp / "asr_teacher" / "nbest_train" / "pseudo_labels.json").read_text())
    assert stats["utterances"] == 8 and "wer_oracle" in stats

    for mode in MODES:  # each student trained on what its mode says (config.yaml lists every key, unset: null)
        data = yaml.safe_load((exp / f"asr_small_{mode}" / "config.yaml").read_text())["data"]
        assert bool(data.get("nbest_targets")) == mode.startswith("nbest_")
        assert (data["text"] == "text.1best") == (mode == "1best")
    assert "gold_weight: 0.2" in (exp / "asr_small_nbest_weighted" / "config.yaml").read_text()
    # word: the references and the top-k cache of the teacher stage 4 trained, over the training set's features
    kd = yaml.safe_load((exp / "asr_small_word" / "config.yaml").read_text())["kd"]
    assert (kd["cache"], kd["teacher"], kd["weight"]) == ("exp/asr_teacher/topk_train", "exp/asr_teacher/avg_best2.pt",
                                                          0.5)
    cache = json.loads((exp / "asr_teacher" / "topk_train" / "meta.json").read_text())
    assert cache["k"] == 8 and cache["fingerprint"]["features"].startswith("feats.scp, CMVN ")
    assert "word-level KD from the topk cache exp/asr_teacher/topk_train" in \
        (exp / "asr_small_word" / "train.log").read_text()
    # expand: 8 utterances become their hypotheses (plus the reference where it differs)
    log = (exp / "asr_small_nbest_expand" / "train.log").read_text()
    expanded = int(log.split(" training utterances")[0].rsplit(" ", 1)[1])
    assert expanded > 8

    results = json.loads((exp / "results.json").read_text())
    systems = ["asr_teacher", *(f"asr_small_{m}" for m in MODES)]
    assert list(results) == systems
    teacher = results["asr_teacher"]
    assert teacher["param_reduction"] == 1.0 and teacher["wer_abs_change"] == 0.0
    for name in systems[1:]:
        r = results[name]
        assert r["param_reduction"] == pytest.approx(teacher["params"] / r["params"], abs=1e-3)
        assert r["param_reduction"] > 10  # the mini students are 1/16 of the teacher
        assert r["wer_abs_change"] == pytest.approx(r["wer"] - teacher["wer"], abs=0.01)
        assert r["size_estimated"] is False and r["decode"] == teacher["decode"]
    # what the training stages registered, and the report took the teacher and the modes from
    registered = {s["name"]: s for s in json.loads((exp / "systems.json").read_text())["systems"]}
    assert sorted(registered) == sorted(systems)  # in the order they finished: students train side by side
    assert {k: registered["asr_teacher"][k] for k in ("task", "role", "model")} == \
        {"task": "asr", "role": "teacher", "model": "exp/asr_teacher/avg_best2.pt"}
    for mode in MODES:
        student = registered[f"asr_small_{mode}"]
        assert (student["role"], student["mode"], student["arch"], student["seed"]) == ("student", mode, "small", 1)
        assert student["teacher"] == (None if mode == "gold" else "exp/asr_teacher/avg_best2.pt")
    table = (exp / "RESULTS.md").read_text()
    assert "× smaller" in table and "Warning" not in table and "teacher asr_teacher" in table
    assert (exp / "compression.png").read_bytes()[:4] == b"\x89PNG"

    again = run_recipe(recipe, *TINY, "--student-modes", " ".join(MODES))
    assert again.returncode == 0, again.stderr
    assert all(f"stage {n}: done already" in again.stderr for n in range(11))

    # Seeds: two students under seeds 1 and 2; seed 1's are those trained above, resumed at their end.
    trained = {p: p.stat().st_mtime_ns for s in ("asr_small_gold", "asr_small_nbest_weighted")
               for p in (exp / s).glob("epoch-*.pt")}
    seeded = run_recipe(recipe, *TINY, "--student-modes", "gold nbest_weighted", "--seeds", "1 2", "--stage", "8")
    assert seeded.returncode == 0, seeded.stderr
    assert trained and trained == {p: p.stat().st_mtime_ns for p in trained}
    registered = {s["name"]: s for s in json.loads((exp / "systems.json").read_text())["systems"]}
    for mode in ("gold", "nbest_weighted"):
        for name, seed in ((f"asr_small_{mode}", 1), (f"asr_small_{mode}_s2", 2)):
            assert yaml.safe_load((exp / name / "config.yaml").read_text())["train"]["seed"] == seed
            assert (registered[name]["seed"], registered[name]["group"]) == (seed, f"asr_small_{mode}")
            assert registered[name]["mode"] == mode
    results = json.loads((exp / "results.json").read_text())
    assert {"asr_small_gold_s2", "asr_small_nbest_weighted_s2"} <= set(results)
    group = results["asr_small_nbest_weighted_s2"]["seeds"]  # one row over both seeds, paired seed by seed
    assert group["group"] == "asr_small_nbest_weighted" and group["baseline"] == "asr_small_gold"
    assert sorted(map(tuple, group["pairs"])) == [("asr_small_nbest_weighted", "asr_small_gold"),
                                                  ("asr_small_nbest_weighted_s2", "asr_small_gold_s2")]
    wers = {name: results[name]["wer"] for name in ("asr_small_gold", "asr_small_gold_s2", "asr_small_nbest_weighted",
                                                     "asr_small_nbest_weighted_s2")}
    assert group["mean"]["wer"] == pytest.approx((wers["asr_small_nbest_weighted"] + wers["asr_small_nbest_weighted_s2"])
                                                 / 2, abs=0.02)
    assert group["delta"]["wer"] == pytest.approx(
        (wers["asr_small_nbest_weighted"] - wers["asr_small_gold"] + wers["asr_small_nbest_weighted_s2"]
         - wers["asr_small_gold_s2"]) / 2, abs=0.02)
    table = (exp / "RESULTS.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| asr_small_")]
    assert [row.split("|")[1:3] for row in rows] == [[" asr_small_gold ", " 1 2 "], [" asr_small_nbest_weighted ", " 1 2 "]]
