"""egs/mini/st1/local/study.sh: its options, and a study end to end on a tiny corpus after a main run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import copy_recipe, needs, run_recipe
from test_recipe import TINY_CORPUS

TINY = ["--corpus-opts", TINY_CORPUS, "--src-vocab-size", "60", "--tgt-vocab-size", "60",
        "--train-opts", "--set train.epochs=2 --set train.keep_best=2", "--n-average", "2", "--topk", "4",
        "--finetune-opts", "--set train.epochs=1", "--beam", "3", "--decode-nj", "2"]


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    return copy_recipe(tmp_path, "mini/st1")


def study(recipe: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(recipe / "local" / "study.sh"), *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def test_help_says_the_study_options_and_where_the_others_go(recipe: Path):
    result = study(recipe, "--seeds", "1 2", "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: egs/mini/st1/local/study.sh [options] [run.sh options]")
    assert "--seeds V          training seeds of every student (now: 1 2)" in result.stdout
    assert "(now: none word seqkd seqinter)" in result.stdout and "egs/mini/st1/run.sh --help" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--pretrain", "yes"], "--pretrain: the study sets it"),
    (["--stage=9"], "--stage: the study sets it"),
    (["--stop-stage", "8"], "--stop-stage: the study sets it"),
    (["--seeds"], "option --seeds needs a value (see --help)"),
    (["--out", "study.txt"], "a markdown file (.md); the chart goes beside it"),
    (["--findings", "/no/such.yaml"], "--findings /no/such.yaml: not found"),
])
def test_options_the_study_refuses(recipe: Path, args: list[str], message: str):
    result = study(recipe, *args)
    assert result.returncode == 2
    assert result.stderr.startswith("egs/mini/st1/local/study.sh: ") and message in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not (recipe / "exp").exists() and not (recipe / "data").exists()


@pytest.mark.parametrize("args, message", [
    (["--no-such-option", "1"], "egs/mini/st1/run.sh: unknown option --no-such-option (see --help)"),
    (["--kd-modes", "none words"],  # the study's option, handed to run.sh
     "egs/mini/st1/run.sh: unknown --kd-modes entry 'words' (none word seqkd seqinter seqkd+word seqinter+word)"),
    (["--seeds", "1 x"], "egs/mini/st1/run.sh: --seeds '1 x': seeds are whole numbers"),
    (["--word-kd-source=disk"], "egs/mini/st1/run.sh: --word-kd-source must be cache or online"),
])
def test_the_other_options_go_to_run_sh(recipe: Path, args: list[str], message: str):
    result = study(recipe, *args)
    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert not (recipe / "exp").exists() and not (recipe / "data").exists()


@pytest.mark.slow
@needs["espeak-ng"]
def test_a_study_after_the_main_run(recipe: Path, tmp_path: Path):
    """The main run (two pre-trained students, one seed), then the study of both with and without pre-training
    over two seeds: it reuses the main run's students, and writes its document and chart."""
    main_run = run_recipe(recipe, *TINY, "--kd-modes", "none word", timeout=900)
    assert main_run.returncode == 0, main_run.stderr
    exp = recipe / "exp"
    # the recipe's default: every student pre-trained (the study adds those from scratch)
    trained = {p: p.stat().st_mtime_ns for s in ("st_pt", "st_pt_word", "st_pt_word_ft")
               for p in (exp / s).glob("epoch-*.pt")}
    assert trained

    out = tmp_path / "docs" / "results" / "mini_st1.md"
    result = study(recipe, *TINY, "--kd-modes", "none word", "--seeds", "1 2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "stage 3: done already" in result.stderr  # the data stages are the main run's
    assert trained == {p: p.stat().st_mtime_ns for p in trained}  # and so are its students
    log = (exp / "study.tsv").read_text().splitlines()
    assert len(log) == 1
    started, seconds, status, commit, cores, cpu, mem_kb, registered, command = log[0].split("\t")
    assert status == "0" and int(seconds) > 0 and int(cores) >= 1 and int(mem_kb) > 0
    assert sorted(registered.split()) == ["asr_pretrain", "mt_teacher", "st_pt", "st_pt_word", "st_pt_word_ft"]
    assert command.startswith("egs/mini/st1/local/study.sh --corpus-opts '--num-train 8 ")
    assert command.endswith(f"--kd-modes 'none word' --seeds '1 2' --out {out}")

    doc = out.read_text()
    lines = doc.splitlines()
    assert f"- **Command** (from the repository root): `{command}`" in lines
    assert f"- **Reused**: trained before the study began, and not again: {registered}" in lines
    rows = {line.split("|")[1].strip(): line for line in lines[:lines.index("## Findings")] if line.startswith("| `")}
    assert list(rows) == ["`mt_teacher` (teacher)", "`st_none`", "`st_word`", "`st_word_ft`", "`st_pt`",
                          "`st_pt_word`", "`st_pt_word_ft`"]  # the spec's order
    for name, row in rows.items():
        cells = [c.strip() for c in row.strip("|").split("|")]
        if name != "`mt_teacher` (teacher)":
            assert cells[1] == "1 2" and " ± " in cells[2] and cells[3].startswith("[")
        assert cells[-1] == "-" if name == "`st_none`" else cells[-1].replace(".", "").isdigit()
    results = json.loads((exp / "results.json").read_text())
    assert results["st_pt_word_s2"]["seeds"]["baseline"] == "st_none"
    verdicts = {line.split("|")[1].strip(): line.split("|")[5].strip()
                for line in lines[lines.index("## Findings"):] if line.startswith("| ") and "**" in line}
    assert verdicts["Word-level KD then fine-tuning on gold is the best student"] == "**not measured**"  # no seqkd
    assert {verdicts[c] for c in ("Word-level KD beats the baseline (gold references)",
                                  "Word-level KD beats ASR pre-training",
                                  "Fine-tuning repairs word-level KD's shorter outputs (length ratio closer to 1)")} <= \
        {"**holds**", "**does not hold**", "**not significant**"}
    assert (out.parent / "mini_st1.png").read_bytes().startswith(b"\x89PNG")
    assert "holds" in result.stdout or "not significant" in result.stdout


def processes_in(directory: Path) -> list[int]:
    """The processes working in ``directory`` (or below it)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")).is_relative_to(directory):
                found.append(int(proc.name))
        except OSError:  # ended meanwhile, or not ours to read
            pass
    return found


@pytest.mark.slow
@needs["espeak-ng"]
def test_a_stopped_study_stops_everything_under_it(recipe: Path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    # trainings long enough that a trainer left behind would still run when the test looks
    long = ["--train-opts", "--set train.epochs=500 --set train.keep_best=2"]
    proc = subprocess.Popen([str(recipe / "local" / "study.sh"), *TINY, *long, "--kd-modes", "none"], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (recipe / "exp" / "mt_teacher" / "train.log").is_file():  # stage 4 trains two models at once
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 30  # a trainer finishes its step first
    while processes_in(recipe) and time.monotonic() < deadline:
        time.sleep(1)
    left = processes_in(recipe)
    for pid in left:  # a failing test leaves nothing running either
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert left == []
    assert "the recipe stopped with exit status 143" in proc.stderr.read()
    assert (recipe / "exp" / "study.tsv").read_text().split("\t")[2] == "143"


# --- the ASR compression and RNN-T studies (egs/mini/{asr1,rnnt1}/local/study.sh, egs/TEMPLATE/utils/study.sh) ---

# each study's option of the students it trains, with its default
STUDIED = {"asr1": ("--student-modes", "gold 1best nbest_sample nbest_weighted word"),
           "rnnt1": ("--kd-modes", "none hard soft-full")}


@pytest.mark.parametrize("name", sorted(STUDIED))
def test_help_of_the_asr_and_rnnt_studies(tmp_path: Path, name: str):
    recipe = copy_recipe(tmp_path, f"mini/{name}")
    option, default = STUDIED[name]
    result = study(recipe, "--seeds", "1 2", "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"Usage: egs/mini/{name}/local/study.sh [options] [run.sh options]")
    assert f"(egs/mini/{name}/run.sh --help);\n--stage and --stop-stage are the study's to set." in result.stdout
    assert "  --seeds V          training seeds of every student (now: 1 2)" in result.stdout
    assert f"  {option + ' V':<18} " in result.stdout and f"(now: {default})" in result.stdout
    assert f"(now: $KDST_ROOT/docs/results/findings/mini_{name}.yaml)" in result.stdout
    assert f"(now: $KDST_ROOT/docs/results/mini_{name}.md)" in result.stdout


@pytest.mark.parametrize("name", sorted(STUDIED))
@pytest.mark.parametrize("args, message", [
    (["--stage=9"], "study.sh: --stage: the study sets it (every stage)"),
    (["--stop-stage", "8"], "study.sh: --stop-stage: the study sets it (every stage)"),
    (["--seeds"], "study.sh: option --seeds needs a value (see --help)"),
    (["--out", "study.txt"], "a markdown file (.md); the chart goes beside it"),
    (["--findings", "/no/such.yaml"], "study.sh: --findings /no/such.yaml: not found"),
    (["--seeds", "1 x"], "run.sh: --seeds '1 x': seeds are whole numbers"),  # the study's option, run.sh checks it
    (["--seeds=2 2"], "run.sh: --seeds '2 2': seed 2 is given twice"),
    (["--no-such-option", "1"], "run.sh: unknown option --no-such-option (see --help)"),
    (["--nj=x"], "run.sh: --nj 'x': not a whole number (see --help)"),
    (["--corpus-opts", "--help", "stray"], "run.sh: unexpected argument 'stray' (see --help)"),  # a value, not help
])
def test_options_of_the_asr_and_rnnt_studies(tmp_path: Path, name: str, args: list[str], message: str):
    recipe = copy_recipe(tmp_path, f"mini/{name}")
    result = study(recipe, *args)
    assert result.returncode == 2
    assert result.stderr.startswith(f"egs/mini/{name}/") and result.stderr.strip().endswith(message)
    assert len(result.stderr.splitlines()) == 1
    assert not (recipe / "exp").exists() and not (recipe / "data").exists()


@pytest.mark.parametrize("name, entry, message", [
    ("asr1", "gold nbest", "unknown --student-modes entry 'nbest' (gold 1best nbest_expand nbest_sample "
                           "nbest_weighted word)"),
    ("rnnt1", "none word", "unknown --kd-modes entry 'word' (none hard soft-full soft-collapsed hard+soft)"),
])
def test_the_studied_students_are_run_sh_options(tmp_path: Path, name: str, entry: str, message: str):
    recipe = copy_recipe(tmp_path, f"mini/{name}")
    result = study(recipe, STUDIED[name][0], entry)
    assert result.returncode == 2
    assert result.stderr.strip() == f"egs/mini/{name}/run.sh: {message}"


@pytest.mark.slow
@needs["espeak-ng"]
def test_an_asr_study(tmp_path: Path):
    """The ASR compression study from nothing on the tiny corpus: gold, 1-best and weighted 5-best students
    under two seeds, and the document: a row per student over its seeds, the findings decided."""
    from test_recipe_asr import TINY as ASR_TINY

    recipe = copy_recipe(tmp_path, "mini/asr1")
    out = tmp_path / "docs" / "mini_asr1.md"
    result = study(recipe, *ASR_TINY, "--student-modes", "gold 1best nbest_weighted", "--seeds", "1 2", "--out",
                   str(out))
    assert result.returncode == 0, result.stderr
    exp = recipe / "exp"
    started, seconds, status, commit, cores, cpu, mem_kb, registered, command = \
        (exp / "study.tsv").read_text().rstrip("\n").split("\t")
    assert (status, registered) == ("0", "") and int(seconds) > 0  # nothing trained before it
    assert command.endswith(f"--student-modes 'gold 1best nbest_weighted' --seeds '1 2' --out {out}")

    lines = out.read_text().splitlines()
    assert f"- **Command** (from the repository root): `{command}`" in lines
    assert "- **Reused**: nothing: every system was trained by the study" in lines
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in lines[:lines.index("## Findings")] if line.startswith("| `")}
    assert list(rows) == ["`asr_teacher` (teacher)", "`asr_small_gold`", "`asr_small_1best`",
                          "`asr_small_nbest_weighted`"]  # the spec's order
    results = json.loads((exp / "results.json").read_text())
    for group in ("asr_small_gold", "asr_small_1best", "asr_small_nbest_weighted"):
        cells = rows[f"`{group}`"]  # system, seeds, WER, its CI, CER, its CI, ΔWER, p, against
        record = results[f"{group}_s2"]["seeds"]
        assert cells[1] == "1 2" and record["runs"] == [group, f"{group}_s2"]
        assert cells[2].rstrip("†") == f"{record['mean']['wer']:.2f} ± {record['sd']['wer']:.2f}"
        wers = [results[run]["wer"] for run in record["runs"]]  # the sample sd of two is their distance / sqrt 2
        assert record["mean"]["wer"] == pytest.approx(sum(wers) / 2, abs=0.02)
        assert record["sd"]["wer"] == pytest.approx(abs(wers[0] - wers[1]) / 2 ** 0.5, abs=0.02)
    # the students' baseline is the gold one (the gold student's is the teacher: what compression costs)
    weighted = rows["`asr_small_nbest_weighted`"]
    delta = results["asr_small_nbest_weighted"]["seeds"]["delta"]["wer"]
    assert weighted[-3:-1] == [f"{delta:+.2f}", f"{results['asr_small_nbest_weighted']['seeds']['p']['wer']:.3f}"]
    assert weighted[-1] == "`asr_small_gold`" and rows["`asr_small_gold`"][-1] == "`asr_teacher`"
    verdicts = {line.split("|")[1].strip(): line.split("|")[5].strip()
                for line in lines[lines.index("## Findings"):] if line.startswith("| ") and "**" in line}
    for unmeasured in ("Several teacher hypotheses beat the 1-best (one of the 5-best drawn per epoch)",
                       "Word-level KD (the teacher's top-8 at every reference position, half the loss) beats the "
                       "references alone", "Sequence-level KD (the teacher's 1-best) beats word-level KD"):
        assert verdicts.pop(unmeasured) == "**not measured**"  # no nbest_sample or word student in this study
    assert list(verdicts) == ["Several teacher hypotheses beat the 1-best (the 5-best weighted by the teacher's "
                              "posterior)"]
    assert next(iter(verdicts.values())) in {"**holds**", "**does not hold**", "**not significant**"}
    assert "len ratio" not in out.read_text()  # no BLEU, no length ratio: neither column nor footnote
    assert (out.parent / "mini_asr1.png").read_bytes().startswith(b"\x89PNG")
