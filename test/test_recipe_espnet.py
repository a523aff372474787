"""egs/mini/st1 with ``--teacher-espnet``: an ESPnet2 MT model drives the recipe's teacher stages.

Stages 3-8 on a tiny MT task with a tiny ESPnet model built by ESPnet's own task class
(random weights: the plumbing is under test, not the translations): stage 3 exports the
teacher's token list and BPE model as the students' target tokenizer, stage 4 trains
nothing, stage 5 decodes the dev and test sets with it, stage 6 writes the top-k cache,
stage 7 the n-best on the training set and stage 8 rescores it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("espnet2", reason="ESPnet is not installed (pip install 'kdst[espnet]')")

from espnet_models import build_mt  # noqa: E402
from helpers import copy_recipe, make_mt_task, run_recipe  # noqa: E402

from kdst.data.files import file_digest  # noqa: E402
from kdst.data.kaldi_dir import DataDir  # noqa: E402
from kdst.data.teacher_cache import TeacherCache  # noqa: E402
from kdst.data.tokenizer import load_tokenizer  # noqa: E402



@pytest.mark.slow
def test_an_espnet_teacher_drives_the_teacher_stages(tmp_path: Path):
    recipe = copy_recipe(tmp_path, "mini/st1")
    data = make_mt_task(recipe / "data", sizes=(("train", 24, 1), ("dev", 6, 2), ("tst-COMMON", 6, 3)))
    train = DataDir(data / "train")
    texts = {name: [line.split(" ", 1)[1] for line in (data / "train" / name).read_text().splitlines()]
             for name in ("text.en", "text")}
    exp, _ = build_mt(tmp_path / "espnet", texts["text.en"], texts["text"], vocab=80, eos_bias=3.0)

    result = run_recipe(recipe, "--stage", "3", "--stop-stage", "8", "--teacher-espnet", str(exp),
                        "--kd-modes", "word seqkd seqinter", "--src-token-type", "char", "--topk", "4",
                        "--nbest-beam", "2", "--nbest-size", "2", "--beam", "2", "--decode-nj", "1",
                        "--pretrain", "no",  # a text-only task: no speech to pre-train on
                        env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "nothing to train" in result.stderr
    # --teacher-espnet EXP is --teacher espnet:EXP: the one reference every teacher stage was given
    registered = json.loads((recipe / "exp" / "systems.json").read_text())["systems"]
    assert [(s["name"], s["role"], s["model"]) for s in registered] == \
        [("mt_teacher", "teacher", f"espnet:{exp.resolve()}")]

    # Stage 3: the students' target vocabulary is the teacher's.
    tokens = load_tokenizer(recipe / "data" / "tokens" / "de_espnet")
    assert sorted(tokens.tokens) == sorted(load_tokenizer(exp / "kdst_tokens" / "tgt").tokens)
    # Stage 5: the teacher decoded the dev and test sets and was scored.
    for name in ("dev", "tst-COMMON"):
        hyp = recipe / "exp" / "mt_teacher" / f"decode_{name}" / "hyp.txt"
        assert len(hyp.read_text().splitlines()) == 6
    assert "mt_teacher" in (recipe / "exp" / "RESULTS.md").read_text()
    # Stage 6: the top-k cache says which model file made it.
    cache = TeacherCache(recipe / "exp" / "mt_teacher" / "topk_train")
    assert cache.fingerprint["teacher"] == file_digest(exp / "valid.acc.ave.pth")
    assert sorted(cache.ids) == sorted(train.utterances())
    # Stages 7 and 8: two hypotheses per training utterance, and the targets chosen from them.
    nbest = (recipe / "exp" / "mt_teacher" / "nbest_train" / "nbest.txt").read_text().splitlines()
    assert len(nbest) == 2 * len(train.utterances())
    for target in ("text.seqkd", "text.seqinter"):
        assert len((data / "train" / target).read_text().splitlines()) == len(train.utterances())
