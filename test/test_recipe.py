"""The ST recipe: option parsing, and the data stages of the mini recipe end to end."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import kaldiio
import pytest
import yaml

import helpers
from helpers import copy_recipe, needs
from kdst.data.kaldi_dir import DataDir
from kdst.data.teacher_cache import TeacherCache
from kdst.data.tokenizer import load_tokenizer
from kdst.data.validate import validate_data_dir

TINY_CORPUS = "--num-train 8 --num-dev 4 --num-test 4 --utts-per-talk 4 --num-mt-extra 40 --seed 3"


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    return copy_recipe(tmp_path, "mini/st1")


def run_recipe(recipe: Path, *args: str) -> subprocess.CompletedProcess:
    return helpers.run_recipe(recipe, *args, timeout=600)


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
    (["--kd-modes", "none words"],
     "unknown --kd-modes entry 'words' (none word seqkd seqinter seqkd+word seqinter+word)"),
    (["--word-kd-source", "disk"], "--word-kd-source must be cache or online"),
    (["--teacher", "exp/mt/avg_best5.pt"],
     "--teacher exp/mt/avg_best5.pt: empty (stage 4 trains the teacher), espnet:PATH or hf:PATH"),
    (["--teacher", "hf:./no/such/model"], "--teacher hf:./no/such/model: ./no/such/model not found"),
    (["--teacher", "espnet:/no/such/model"], "--teacher espnet:/no/such/model: /no/such/model not found"),
    (["--teacher-espnet", "/no/such/model"], "--teacher espnet:/no/such/model: /no/such/model not found"),
    (["--teacher", "espnet:a", "--teacher-espnet", "b"],
     "--teacher espnet:a and --teacher-espnet b name two teachers: give one"),
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
    """Teacher, a student per KD mode, fine-tuning, decoding and scoring end to end (two epochs each:
    plumbing, not quality)."""
    result = run_recipe(recipe, "--corpus-opts", TINY_CORPUS, "--src-vocab-size", "60", "--tgt-vocab-size", "60",
                        "--train-opts", "--set train.epochs=2 --set train.keep_best=2", "--n-average", "2",
                        "--kd-modes", "none word seqkd seqinter seqinter+word", "--topk", "4",
                        "--finetune-opts", "--set train.epochs=1", "--beam", "3", "--decode-nj", "2",
                        "--pretrain", "no")
    assert result.returncode == 0, result.stderr
    exp, train = recipe / "exp", recipe / "data" / "train"
    systems = {"mt_teacher", "st_none", "st_word", "st_seqkd", "st_seqinter", "st_seqinter_word", "st_word_ft",
               "st_seqinter_word_ft"}
    results = json.loads((exp / "results.json").read_text())
    assert set(results) == systems
    for system in results.values():
        assert {"bleu", "chrf", "ter", "len_ratio", "n", "params", "sentences_per_s"} <= system.keys()
        assert system["n"] == 4
    assert "rtf" in results["st_none"]
    table = (exp / "RESULTS.md").read_text()
    assert "| st_seqinter_word_ft |" in table and "nrefs:1|case:mixed" in table
    assert (exp / "results.png").is_file()

    # Stage 4: the teacher learns from the ST training text and the extra text.
    teacher_config = yaml.safe_load((exp / "mt_teacher" / "config.yaml").read_text())
    assert teacher_config["data"]["train"] == "data/mt_train"
    assert len(DataDir(recipe / "data" / "mt_train").require("text")) == 8 + 40
    # Stage 6: the cache covers every training utterance; stages 7-8: one target per utterance.
    cache = TeacherCache(exp / "mt_teacher" / "topk_train")
    assert cache.ids == DataDir(train).utterances() and cache.k == 4
    for name in ("text.seqkd", "text.seqinter"):
        assert list(DataDir(train).require(name)) == DataDir(train).utterances()
    # Students: what each one trained on.
    word_config = yaml.safe_load((exp / "st_word" / "config.yaml").read_text())
    assert word_config["kd"]["cache"] == "exp/mt_teacher/topk_train"
    combined = yaml.safe_load((exp / "st_seqinter_word" / "config.yaml").read_text())
    assert combined["data"]["text"] == "text.seqinter" and "cache" not in combined["kd"]  # online
    assert combined["kd"]["src_text"] == "text.en" and "src_text" not in word_config["kd"]
    finetuned = yaml.safe_load((exp / "st_word_ft" / "config.yaml").read_text())
    assert finetuned["train"]["init"] == "exp/st_word/avg_best2.pt" and finetuned["kd"] is None
    hyps = (exp / "st_word" / "decode_tst-COMMON" / "hyp.txt").read_text().splitlines()
    assert [h.split()[0] for h in hyps] == DataDir(recipe / "data" / "tst-COMMON").utterances()
    train_log = (exp / "st_word" / "train.log").read_text()
    assert train_log.startswith("# kdst train") and "# Ended (code 0)" in train_log
    assert "word-level KD from the topk cache" in train_log

    # ASR pre-training (the recipe's default) and seeds: stage 4 trains the ASR model (the teacher is done
    # already), then every student twice per seed; seed 1's students from scratch are the ones trained above.
    again = run_recipe(recipe, "--corpus-opts", TINY_CORPUS, "--src-vocab-size", "60", "--tgt-vocab-size", "60",
                       "--train-opts", "--set train.epochs=2 --set train.keep_best=2", "--n-average", "2",
                       "--kd-modes", "none word", "--topk", "4", "--finetune", "no", "--beam", "3",
                       "--decode-nj", "2", "--stage", "4", "--pretrain", "both", "--seeds", "1 2")
    assert again.returncode == 0, again.stderr
    pretrain_config = yaml.safe_load((exp / "asr_pretrain" / "config.yaml").read_text())
    assert pretrain_config["data"]["text"] == "text.en" and pretrain_config["data"]["tokenizer"].endswith("en_bpe60")
    pretrained = {"st_pt", "st_pt_word", "st_pt_s2", "st_pt_word_s2"}
    seeded = pretrained | {"st_none", "st_word", "st_none_s2", "st_word_s2"}
    results = json.loads((exp / "results.json").read_text())
    assert seeded | {"mt_teacher"} <= set(results)  # beside the systems scored by the first run
    assert results["st_pt_word_s2"]["seeds"]["group"] == "st_pt_word"  # one row per student, over both seeds
    assert sorted(results["st_pt_word_s2"]["seeds"]["runs"]) == ["st_pt_word", "st_pt_word_s2"]
    for name in seeded:
        config = yaml.safe_load((exp / name / "config.yaml").read_text())
        assert config["train"]["seed"] == (2 if name.endswith("_s2") else 1)
        if name in pretrained:
            # the mini recipe's --decoder-init mt: the decoder comes from the MT teacher
            assert config["train"]["init_parts"] == [
                {"checkpoint": "exp/asr_pretrain/avg_best2.pt", "modules": ["encoder", "ctc"]},
                {"checkpoint": "exp/mt_teacher/avg_best2.pt", "modules": ["decoder"]}]
        else:
            assert config["train"]["init_parts"] is None
    manifest = {s["name"]: s for s in json.loads((exp / "systems.json").read_text())["systems"]}
    assert manifest["asr_pretrain"]["role"] == "pretrained" and manifest["st_pt_word_s2"]["seed"] == 2
    assert manifest["st_pt_word"]["init"] == "exp/asr_pretrain/avg_best2.pt"
