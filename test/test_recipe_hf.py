"""The mini recipes with Hugging Face teachers (``--teacher hf:DIR``), every stage after the data stages.

Tiny random models are built in the test from the corpus the recipe synthesised (test/hf_models.py) and
saved with save_pretrained; nothing is downloaded, and the plumbing is under test, not the teachers:

- egs/mini/st1 with a Marian MT teacher: stage 3 exports its tokenizer as the students' target
  vocabulary, stage 4 trains nothing, stages 5-8 decode (generate()'s rules), cache and rescore with it,
  and the students (the top-k cache, Seq-KD, and Seq-Inter with the teacher online) train, are fine-tuned,
  decoded and scored (stages 9-12);
- egs/mini/asr1 and egs/mini/rnnt1 with a Whisper teacher: its features (data/<set>_whisper), its
  decodings and n-best, the pseudo labels normalised and filtered by WER (the students of the dropped
  utterances' complement train on data/<train>_pl), the students, decoding and the reports; in asr1 also
  the word student, from the teacher's top-k cache over Whisper's vocabulary, which every student adopts.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install 'kdst[hf]')")

import helpers  # noqa: E402
from helpers import copy_recipe, needs  # noqa: E402
from hf_models import save_marian, save_whisper  # noqa: E402

from kdst.data.kaldi_dir import DataDir  # noqa: E402
from kdst.data.teacher_cache import TeacherCache  # noqa: E402
from kdst.data.tokenizer import load_tokenizer  # noqa: E402

TINY_CORPUS = "--num-train 8 --num-dev 4 --num-test 4 --utts-per-talk 4 --seed 3"


def run_recipe(recipe: Path, *args: str) -> subprocess.CompletedProcess:
    return helpers.run_recipe(recipe, *args, timeout=900, env={"OMP_NUM_THREADS": "1"})


def texts(data: Path, name: str) -> list[str]:
    return list(DataDir(data).require(name).values())


def data_stages(recipe: Path, *args: str) -> None:
    result = run_recipe(recipe, "--corpus-opts", TINY_CORPUS, "--stop-stage", "2", *args)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
@needs["espeak-ng"]
def test_st_recipe_with_a_marian_teacher(tmp_path: Path):
    recipe = copy_recipe(tmp_path, "mini/st1")
    data_stages(recipe, "--corpus-opts", TINY_CORPUS + " --num-mt-extra 40")
    data = recipe / "data"
    marian = save_marian(tmp_path / "marian", texts(data / "train", "text.en") + texts(data / "train", "text.de"),
                         eos_bias=1.5)
    result = run_recipe(recipe, "--stage", "3", "--teacher", f"hf:{marian}", "--src-vocab-size", "60",
                        "--train-opts", "--set train.epochs=1 --set train.keep_best=1", "--n-average", "1",
                        "--kd-modes", "none word seqkd seqinter+word", "--topk", "4", "--nbest-beam", "3",
                        "--nbest-size", "3", "--finetune-opts", "--set train.epochs=1", "--beam", "2",
                        "--decode-nj", "1", "--pretrain", "no")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the teacher is the Hugging Face model" in result.stderr
    exp, train = recipe / "exp", data / "train"
    teacher = f"hf:{marian.resolve()}"
    registered = {s["name"]: s for s in json.loads((exp / "systems.json").read_text())["systems"]}
    assert registered["mt_teacher"]["model"] == teacher and registered["st_word"]["teacher"] == teacher
    # Stage 3: the students' target vocabulary is the teacher's exported tokenizer.
    tokens = load_tokenizer(data / "tokens" / "de_hf")
    assert tokens.tokens == load_tokenizer(marian / "kdst_tokens" / "default" / "tgt").tokens
    # Stages 5-8: the teacher decoded and was scored, its cache and n-best cover the training set.
    assert len((exp / "mt_teacher" / "decode_tst-COMMON" / "hyp.txt").read_text().splitlines()) == 4
    cache = TeacherCache(exp / "mt_teacher" / "topk_train")
    assert cache.ids == DataDir(train).utterances() and cache.k == 4
    nbest = (exp / "mt_teacher" / "nbest_train" / "nbest.txt").read_text().splitlines()
    assert len(nbest) == 3 * len(DataDir(train).utterances())
    for target in ("text.seqkd", "text.seqinter"):
        assert list(DataDir(train).require(target)) == DataDir(train).utterances()
    # Stages 9-12: the students learnt from it (the cache, its 1-best, online), were decoded and scored.
    online = yaml.safe_load((exp / "st_seqinter_word" / "config.yaml").read_text())
    assert online["kd"]["teacher"] == teacher and online["data"]["tokenizer"] == "data/tokens/de_hf"
    assert "word-level KD from the online teacher" in (exp / "st_seqinter_word" / "train.log").read_text()
    results = json.loads((exp / "results.json").read_text())
    assert set(results) == {"mt_teacher", "st_none", "st_word", "st_seqkd", "st_seqinter_word", "st_word_ft",
                            "st_seqinter_word_ft"}
    assert all(r["n"] == 4 for r in results.values())


def whisper_teacher(tmp_path: Path, data: Path) -> Path:
    # every utterance is transcribed "the": the references that hold it are within 100% WER, the others are not
    return save_whisper(tmp_path / "whisper", texts(data / "train", "text"), window_s=30, max_target_positions=48,
                        says="the")


def check_whisper_stages(recipe: Path, teacher_dir: str, labels_dir: Path, max_wer: float) -> None:
    """The features dirs, the decodings and the labels of a Whisper teacher, and what the WER filter dropped."""
    data, nbest_dir = recipe / "data", recipe / "exp" / teacher_dir / "nbest_train"
    for name in ("train", "dev", "tst-COMMON"):
        whisper = data / f"{name}_whisper"
        assert DataDir(whisper).utterances() == DataDir(data / name).utterances()
        assert (whisper / "text").read_text() == (data / name / "text").read_text()
    hyps = (recipe / "exp" / teacher_dir / "decode_tst-COMMON" / "hyp.txt").read_text().splitlines()
    assert [h.split(" ")[0] for h in hyps] == DataDir(data / "tst-COMMON").utterances()
    assert all(h == h.lower() for h in hyps)  # --hf-normalize lower, as the mini references are written
    stats = json.loads((nbest_dir / "pseudo_labels.json").read_text())
    dropped = (nbest_dir / "dropped.txt").read_text().splitlines()
    wer_dropped = [line for line in dropped if line.split()[1] == "wer"]
    assert stats["normalize"] == "lower" and stats["max_wer"] == max_wer
    assert stats["dropped_wer"] == len(wer_dropped) and all(float(line.split()[2]) > max_wer for line in wer_dropped)
    # the labels are "the": kept where the reference holds it (WER below 100%), dropped where it does not
    kept = DataDir(labels_dir).require("text.1best")
    references = DataDir(data / "train").require("text")
    assert sorted(kept) == sorted(u for u, text in references.items() if "the" in text.split()), stats
    assert set(kept.values()) == {"the"} and stats["kept"] == len(kept) and stats["dropped_wer"] == 8 - len(kept)
    assert set(kept).isdisjoint(line.split()[0] for line in dropped)
    assert sorted(kept) == DataDir(labels_dir).utterances()


@pytest.mark.slow
@needs["espeak-ng"]
def test_asr_recipe_with_a_whisper_teacher(tmp_path: Path):
    recipe = copy_recipe(tmp_path, "mini/asr1")
    data_stages(recipe)
    whisper = whisper_teacher(tmp_path, recipe / "data")
    max_wer = 99.0
    result = run_recipe(recipe, "--stage", "3", "--teacher", f"hf:{whisper},lang=en", "--vocab-size", "60",
                        "--hf-normalize", "lower", "--hf-max-len", "40", "--hf-max-wer", str(max_wer),
                        "--train-opts", "--set train.epochs=1 --set train.keep_best=1", "--n-average", "1",
                        "--student-modes", "gold 1best nbest_weighted word", "--nbest-beam", "3", "--nbest-size", "3",
                        "--topk", "4", "--beam", "2", "--decode-nj", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the teacher is the Whisper model" in result.stderr
    exp, data = recipe / "exp", recipe / "data"
    check_whisper_stages(recipe, "asr_teacher", data / "train_pl", max_wer)
    # Stage 3: with word students every student adopts Whisper's vocabulary (--vocab-size is unused)
    tokens = load_tokenizer(data / "tokens" / "whisper")
    [exported] = (whisper / "kdst_tokens").glob("*/tgt")
    assert tokens.tokens == load_tokenizer(exported).tokens
    assert not (data / "tokens" / "bpe60").exists()
    # Stage 6: Whisper forced with the references of every training utterance, its top 4 at each position
    cache = TeacherCache(exp / "asr_teacher" / "topk_train")
    assert cache.ids == DataDir(data / "train").utterances() and cache.k == 4 and cache.mode == "topk"
    prompt = transformers.AutoTokenizer.from_pretrained(whisper).convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"])  # lang=en, in HF's ids
    assert cache.fingerprint["source_text"] is None and cache.fingerprint["prompt"] == prompt
    references = DataDir(data / "train").require("text")
    assert cache.num_tokens == sum(len(tokens.encode(references[u])) + 1 for u in cache.ids)
    word = yaml.safe_load((exp / "asr_small_word" / "config.yaml").read_text())
    assert word["kd"]["cache"] == "exp/asr_teacher/topk_train" and word["kd"]["weight"] == 0.5
    assert word["data"]["train"] == "data/train" and word["data"]["tokenizer"] == "data/tokens/whisper"
    assert "word-level KD from the topk cache exp/asr_teacher/topk_train (k=4" in \
        (exp / "asr_small_word" / "train.log").read_text()
    one_best = yaml.safe_load((exp / "asr_small_1best" / "config.yaml").read_text())
    assert one_best["data"]["train"] == "data/train_pl" and one_best["data"]["text"] == "text.1best"
    gold = yaml.safe_load((exp / "asr_small_gold" / "config.yaml").read_text())
    assert gold["data"]["train"] == "data/train" and gold["data"]["tokenizer"] == "data/tokens/whisper"
    assert "kd" not in gold or gold["kd"] is None
    registered = {s["name"]: s for s in json.loads((exp / "systems.json").read_text())["systems"]}
    teacher = f"hf:{whisper.resolve()},lang=en"
    assert registered["asr_teacher"]["model"] == teacher
    assert (registered["asr_small_word"]["mode"], registered["asr_small_word"]["teacher"]) == ("word", teacher)
    assert word["kd"]["teacher"] == teacher
    compression = json.loads((exp / "results.json").read_text())
    assert {"asr_teacher", "asr_small_gold", "asr_small_1best", "asr_small_nbest_weighted",
            "asr_small_word"} <= set(compression)
    assert compression["asr_small_word"]["n"] == 4  # decoded and scored on the 4 test utterances
    assert "asr_small_word" in (exp / "RESULTS.md").read_text()


@pytest.mark.slow
@needs["espeak-ng"]
def test_rnnt_recipe_with_a_whisper_teacher(tmp_path: Path):
    recipe = copy_recipe(tmp_path, "mini/rnnt1")
    bad = run_recipe(recipe, "--teacher", "hf:/no/such/whisper")
    assert bad.returncode == 2 and "--teacher hf:/no/such/whisper: /no/such/whisper not found" in bad.stderr
    refused = run_recipe(recipe, "--teacher", f"hf:{tmp_path}", "--ns-iterations", "0")
    assert refused.returncode == 2 and "--kd-modes soft-full: a Whisper teacher has no transducer lattice" in \
        refused.stderr
    data_stages(recipe)
    whisper = whisper_teacher(tmp_path, recipe / "data")
    max_wer = 99.0
    result = run_recipe(recipe, "--stage", "3", "--teacher", f"hf:{whisper}", "--vocab-size", "60",
                        "--kd-modes", "none hard", "--ns-iterations", "0", "--student-archs", "same",
                        "--hf-normalize", "lower", "--hf-max-len", "40", "--hf-max-wer", str(max_wer),
                        "--train-opts", "--set train.epochs=1 --set train.keep_best=1", "--n-average", "1",
                        "--nbest-beam", "3", "--beam", "2", "--decode-nj", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    exp = recipe / "exp"
    check_whisper_stages(recipe, "rnnt_teacher", recipe / "data" / "train_pl", max_wer)
    hard = yaml.safe_load((exp / "rnnt_same_hard" / "config.yaml").read_text())
    assert hard["data"]["train"] == "data/train_pl" and hard["data"]["text"] == "text.1best"
    results = json.loads((exp / "results.json").read_text())
    assert {"rnnt_teacher", "rnnt_same_none", "rnnt_same_hard"} <= set(results)
