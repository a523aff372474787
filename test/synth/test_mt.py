"""Extra MT text for the mini teacher: held-out sentences stay out, reruns are no-ops."""

from __future__ import annotations

from kdst.synth.mt import make_text_corpus
from kdst.synth.text import generate_pairs
from kdst.data.kaldi_dir import DataDir


def test_text_corpus_avoids_held_out_sentences_and_is_idempotent(tmp_path):
    held_out = generate_pairs(300, seed=5)
    (tmp_path / "test.en").write_text("".join(f"{p.en}\n" for p in held_out))
    out = tmp_path / "mt_extra"
    assert make_text_corpus(out, 400, seed=5, exclude_files=[tmp_path / "test.en"])
    data = DataDir(out)
    english = data.require("text.en")
    assert len(english) == 400
    assert not set(english.values()) & {p.en for p in held_out}  # same seed, yet no held-out sentence
    assert data.require("text") == data.require("text.de")
    stamp = (out / "text.en").stat().st_mtime_ns
    assert not make_text_corpus(out, 400, seed=5, exclude_files=[tmp_path / "test.en"])
    assert (out / "text.en").stat().st_mtime_ns == stamp
    assert make_text_corpus(out, 50, seed=5, exclude_files=[tmp_path / "test.en"])
    assert len(DataDir(out).require("text.en")) == 50
