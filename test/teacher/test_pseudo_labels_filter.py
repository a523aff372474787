"""kdst pseudo-labels' WER filter and normaliser (distil-whisper's recipe: keep the pseudo labels under 10% WER),
against WERs counted by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kdst.cli import main
from kdst.errors import KdstError
from kdst.teacher.pseudo_labels import utterance_wer, write_pseudo_labels

# utt -> n-best (score, logprob, text), a Whisper-like teacher: cased and punctuated
NBEST = {
    "u1": [(-0.1, -0.4, " The cat sat on the mat."), (-0.2, -0.9, " The cat sat on a mat.")],
    "u2": [(-0.1, -0.3, " Hello, world!"), (-0.3, -1.0, " Hello word.")],
    "u3": [(-0.2, -0.6, " A big dog runs home."), (-0.3, -0.9, " A big dog run home.")],
    "u4": [(-0.2, -0.5, " Nobody said a word."), (-0.4, -1.2, " Nobody said.")],  # no reference
}
# upper-case references as WSJ / LibriSpeech write them
REFS = {"u1": "THE CAT SAT ON THE MAT", "u2": "HELLO WORLD THERE", "u3": "A BIG DOG RAN HOME TODAY"}
# after --normalize upper, the 1-best's errors: u1 0 of 6; u2 1 deletion of 3 (33.3%); u3 1 sub + 1 del of 6 (33.3%)


def _write(tmp_path: Path) -> tuple[Path, Path]:
    nbest = tmp_path / "nbest.txt"
    nbest.write_text("".join(f"{u}-{r} {s} {lp} {t}\n" for u, hyps in sorted(NBEST.items())
                             for r, (s, lp, t) in enumerate(hyps, 1)))
    ref = tmp_path / "text"
    ref.write_text("".join(f"{u} {t}\n" for u, t in REFS.items()))
    return nbest, ref


def test_utterance_wer_by_hand():
    assert utterance_wer("A B C D", "A X C") == pytest.approx(50.0)  # one substitution, one deletion
    assert utterance_wer("A B", "A B") == 0.0
    assert utterance_wer("", "") == 0.0 and utterance_wer("", "A") == math.inf


def test_normalised_labels_and_the_wer_filter(tmp_path):
    nbest, ref = _write(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    stats = write_pseudo_labels(nbest, out, 2, reference=ref, normalize="upper", max_wer=10.0,
                                dropped_path=tmp_path / "dropped.txt")
    # u2 and u3 are above 10%; u4 has no reference and is kept
    assert (out / "text.1best").read_text() == "u1 THE CAT SAT ON THE MAT\nu4 NOBODY SAID A WORD\n"
    assert [line.split(" ", 2)[2] for line in (out / "pseudo_nbest2.txt").read_text().splitlines()] == \
        ["THE CAT SAT ON THE MAT", "THE CAT SAT ON A MAT", "NOBODY SAID A WORD", "NOBODY SAID"]
    assert (tmp_path / "dropped.txt").read_text() == "u2 wer 33.33 HELLO WORLD\nu3 wer 33.33 A BIG DOG RUNS HOME\n"
    assert stats["max_wer"] == 10.0 and stats["dropped_wer"] == 2 and stats["kept"] == 2
    assert stats["without_reference"] == 1 and stats["normalize"] == "upper"
    assert stats["wer_1best"] == 0.0  # of the kept utterances with a reference: u1
    assert stats["wer_1best_dropped"] == pytest.approx(100 * 3 / 9, abs=0.01)  # 1 + 2 errors of 3 + 6 words


def test_threshold_keeps_what_is_at_most_it(tmp_path):
    nbest, ref = _write(tmp_path)
    stats = write_pseudo_labels(nbest, tmp_path, 1, reference=ref, normalize="upper", max_wer=100 / 3 + 1e-9)
    assert stats["dropped_wer"] == 0 and stats["kept"] == 4
    # without normalising, Whisper's case and punctuation make every 1-best wrong: all with a reference go
    assert write_pseudo_labels(nbest, tmp_path, 1, reference=ref, max_wer=50.0)["dropped_wer"] == 3
    ref.write_text(ref.read_text() + "u4 NOBODY SAID A WORD\n")
    with pytest.raises(KdstError, match=r"every one of the 4 .* WER above 50.0% .*--normalize"):
        write_pseudo_labels(nbest, tmp_path, 1, reference=ref, max_wer=50.0)


def test_the_filter_needs_references_and_a_percentage(tmp_path):
    nbest, ref = _write(tmp_path)
    with pytest.raises(KdstError, match="--max-wer filters against the references: give --ref"):
        write_pseudo_labels(nbest, tmp_path, 1, max_wer=10.0)
    with pytest.raises(KdstError, match="--max-wer must be a percentage >= 0"):
        write_pseudo_labels(nbest, tmp_path, 1, reference=ref, max_wer=-1.0)


def test_command_line(tmp_path, capsys):
    nbest, ref = _write(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["pseudo-labels", "--nbest", str(nbest), "--out-dir", str(out), "--n", "1", "--ref", str(ref),
                 "--normalize", "upper", "--max-wer", "10", "--dropped", str(tmp_path / "dropped.txt")]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["dropped_wer"] == 2 and len((out / "text.1best").read_text().splitlines()) == 2
