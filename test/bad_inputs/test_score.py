"""kdst score: a hypothesis path that is a directory; empty reference and hypothesis texts scored like sacrebleu."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sacrebleu

from kdst.cli import main

REFS = {"a": "the cat sat on the mat", "b": "", "c": "hello world", "d": ""}  # empty segments, as in real sets
HYPS = {"a": "the cat sat on a mat", "b": "", "c": "", "d": "something"}


def write(path: Path, table: dict[str, str]) -> Path:
    path.write_text("".join(f"{k} {v}".rstrip() + "\n" for k, v in table.items()))
    return path


def test_hyp_is_a_directory(fails, tmp_path: Path):
    (tmp_path / "hyp").mkdir()
    fails(["score", "--ref", write(tmp_path / "ref", REFS), "--hyp", tmp_path / "hyp"], tmp_path / "hyp",
          "directory")


def test_missing_reference(fails, tmp_path: Path):
    fails(["score", "--ref", tmp_path / "ref", "--hyp", write(tmp_path / "hyp", HYPS)], tmp_path / "ref", "missing")


def test_empty_texts_are_scored_like_sacrebleu(tmp_path: Path, capsys):
    capsys.readouterr()
    assert main(["score", "--ref", str(write(tmp_path / "ref", REFS)), "--hyp", str(write(tmp_path / "hyp", HYPS)),
                 "--metrics", "bleu,chrf,ter,wer", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    ids = sorted(REFS)
    refs, hyps = [REFS[k] for k in ids], [HYPS[k] for k in ids]
    assert result["n"] == 4
    assert result["bleu"] == round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)
    assert result["chrf"] == round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2)
    assert result["ter"] == round(sacrebleu.corpus_ter(hyps, [refs]).score, 2)
    # Kaldi's compute-wer: an empty reference adds no words; a hypothesis word against it is an insertion.
    assert result["wer_counts"] == {"sub": 1, "del": 2, "ins": 1, "ref_words": 8}
    assert result["wer"] == pytest.approx(100 * 4 / 8)


def test_only_empty_references(tmp_path: Path, capsys):
    capsys.readouterr()
    assert main(["score", "--ref", str(write(tmp_path / "ref", {"a": "", "b": ""})),
                 "--hyp", str(write(tmp_path / "hyp", {"a": "", "b": "x"})), "--metrics", "bleu,wer", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bleu"] == round(sacrebleu.corpus_bleu(["", "x"], [["", ""]]).score, 2)
    assert "len_ratio" not in result  # no reference length to divide by
