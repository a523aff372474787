"""kdst.teacher.pseudo_labels: posteriors over the N-best, the files written, the label-quality stats."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kdst.cli import main
from kdst.data.nbest_targets import read_pseudo_nbest
from kdst.teacher.pseudo_labels import confidence, posterior, write_pseudo_labels
from kdst.teacher.rescore import NbestEntry, read_nbest
from kdst.errors import DataError, KdstError

# (score, logprob, text) by rank
NBEST = {
    "spk1-utt-a": [(-0.1, -0.5, "the cat sat"), (-0.2, -1.5, "the cat sat down"), (-0.3, -2.0, "a cat sat"),
                   (-0.4, -4.0, "cat")],
    "spk1-utt-b": [(-0.1, -0.2, "hello world"), (-0.2, -0.9, "hello  world"), (-0.5, -3.0, "yellow world")],
}
REFS = {"spk1-utt-a": "the cat sat", "spk1-utt-b": "hello word"}


def write_nbest(path: Path) -> Path:
    lines = sorted(f"{u}-{r} {s:.6f} {lp:.6f} {t}" for u, hyps in NBEST.items()
                   for r, (s, lp, t) in enumerate(hyps, start=1))
    path.write_text("".join(f"{x}\n" for x in lines))
    return path


def softmax(values: list[float]) -> list[float]:
    top = max(values)
    exp = [math.exp(v - top) for v in values]
    return [e / sum(exp) for e in exp]


def entries(hyps) -> list[NbestEntry]:
    return [NbestEntry(r, s, lp, " ".join(t.split())) for r, (s, lp, t) in enumerate(hyps, start=1)]


# By default the weights are softmax(score * n1), n1 = logprob_1 / score_1 the 1-best's length
# normaliser: utt-a 0.5 / 0.1 = 5, utt-b 0.2 / 0.1 = 2 (kdst.teacher.nbest).
SCORE_VALUES = {"spk1-utt-a": [-0.5, -1.0, -1.5, -2.0], "spk1-utt-b": [-0.2, -0.4, -1.0]}


def test_posterior_is_the_softmax_of_the_ranking_score_over_the_n_kept():
    kept = posterior(entries(NBEST["spk1-utt-a"]), 3)
    assert [t for _, t in kept] == ["the cat sat", "the cat sat down", "a cat sat"]
    assert [w for w, _ in kept] == pytest.approx(softmax(SCORE_VALUES["spk1-utt-a"][:3]))
    assert sum(w for w, _ in kept) == pytest.approx(1.0)
    raw = posterior(entries(NBEST["spk1-utt-a"]), 3, kind="logprob")
    assert [w for w, _ in raw] == pytest.approx(softmax([-0.5, -1.5, -2.0]))


def test_posterior_scale_flattens_and_one_keeps_only_the_best():
    sharp = posterior(entries(NBEST["spk1-utt-a"]), 4, scale=1.0)
    flat = posterior(entries(NBEST["spk1-utt-a"]), 4, scale=0.3)
    assert flat[0][0] < sharp[0][0]
    assert [w for w, _ in flat] == pytest.approx(softmax([0.3 * v for v in SCORE_VALUES["spk1-utt-a"]]))
    assert posterior(entries(NBEST["spk1-utt-a"]), 1) == [(1.0, "the cat sat")]


def test_identical_texts_are_merged_and_their_probabilities_added():
    # ranks 1 and 2 of utt-b read the same once whitespace is normalised (two token sequences, one text)
    kept = posterior(entries(NBEST["spk1-utt-b"]), 2)
    assert [t for _, t in kept] == ["hello world", "yellow world"]
    p = [math.exp(v) for v in SCORE_VALUES["spk1-utt-b"]]
    assert kept[0][0] == pytest.approx((p[0] + p[1]) / sum(p))


def test_files_round_trip_and_stats(tmp_path):
    nbest_path = write_nbest(tmp_path / "nbest.txt")
    refs = tmp_path / "text"
    refs.write_text("".join(f"{u} {t}\n" for u, t in REFS.items()))
    stats = write_pseudo_labels(nbest_path, tmp_path / "out", 3, reference=refs)
    one_best = (tmp_path / "out" / "text.1best").read_text().splitlines()
    assert one_best == ["spk1-utt-a the cat sat", "spk1-utt-b hello world"]
    table = read_pseudo_nbest(tmp_path / "out" / "pseudo_nbest3.txt")
    assert [t for _, t in table["spk1-utt-a"]] == ["the cat sat", "the cat sat down", "a cat sat"]
    assert sum(w for w, _ in table["spk1-utt-b"]) == pytest.approx(1.0, abs=1e-5)
    assert stats["utterances"] == 2 and stats["hypotheses_per_utterance"] == 2.5
    # 1-best: utt-a 0 errors / 3 words, utt-b 1 substitution / 2 words -> 1/5
    assert stats["wer_1best"] == 20.0
    assert stats["wer_oracle"] == 20.0  # "yellow world" is no better than "hello world"
    weights_a = [w for w, _ in table["spk1-utt-a"]]
    weights_b = [w for w, _ in table["spk1-utt-b"]]
    expected = (weights_a[1] * 1 + weights_a[2] * 1 + weights_b[0] * 1 + weights_b[1] * 2) / 5 * 100
    assert stats["wer_expected"] == pytest.approx(expected, abs=0.01)


def test_cli_writes_stats_json(tmp_path):
    nbest_path = write_nbest(tmp_path / "nbest.txt")
    assert main(["pseudo-labels", "--nbest", str(nbest_path), "--out-dir", str(tmp_path / "d"), "--n", "2",
                 "--stats-json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["n"] == 2
    assert (tmp_path / "d" / "pseudo_nbest2.txt").is_file()


def test_a_reference_without_hypotheses_is_an_error(tmp_path):
    refs = tmp_path / "text"
    refs.write_text("spk1-utt-a the cat sat\nspk1-utt-c gone\n")
    with pytest.raises(DataError, match="spk1-utt-c"):
        write_pseudo_labels(write_nbest(tmp_path / "nbest.txt"), tmp_path / "out", 2, reference=refs)
    with pytest.raises(KdstError, match="--n"):
        write_pseudo_labels(tmp_path / "nbest.txt", tmp_path / "out", 0)


def test_read_pseudo_nbest_rejects_bad_files(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("u-1 0.5 a\nu-2 0.4 b\n")
    with pytest.raises(DataError, match="sum to 0.9"):
        read_pseudo_nbest(path)
    path.write_text("u-1 0.5 a\nu-3 0.5 b\n")
    with pytest.raises(DataError, match="ranks"):
        read_pseudo_nbest(path)
    path.write_text("u-1 x a\n")
    with pytest.raises(DataError, match=r"p.txt:1: weight"):
        read_pseudo_nbest(path)


def test_decoded_nbest_reader_is_shared(tmp_path):
    # the pseudo labels read kdst decode's nbest.txt through the rescorer's reader
    assert list(read_nbest(write_nbest(tmp_path / "n.txt"))) == sorted(NBEST)


def test_confidence_measures():
    hyps = entries(NBEST["spk1-utt-a"])
    # posterior over the whole decoded n-best (4 hypotheses), whatever --n keeps
    assert confidence(hyps) == pytest.approx(softmax(SCORE_VALUES["spk1-utt-a"])[0])
    assert confidence(hyps, "posterior", 0.5) == pytest.approx(softmax([-0.25, -0.5, -0.75, -1.0])[0])
    assert confidence(hyps, "posterior", 1.0, "logprob") == pytest.approx(softmax([-0.5, -1.5, -2.0, -4.0])[0])
    assert confidence(hyps, "logprob") == pytest.approx(-0.5 / 4)  # 3 words + the end
    with pytest.raises(KdstError, match="unknown confidence measure"):
        confidence(hyps, "entropy")


def test_min_confidence_drops_unsure_utterances_and_counts_them(tmp_path):
    nbest_path = write_nbest(tmp_path / "nbest.txt")
    refs = tmp_path / "text"
    refs.write_text("".join(f"{u} {t}\n" for u, t in REFS.items()))
    sure_a = confidence(entries(NBEST["spk1-utt-a"]))
    sure_b = confidence(entries(NBEST["spk1-utt-b"]))
    assert sure_b > sure_a  # "hello world" twice (merged) against one unlikely rival
    threshold = (sure_a + sure_b) / 2
    stats = write_pseudo_labels(nbest_path, tmp_path / "out", 3, reference=refs, min_confidence=threshold)
    assert (tmp_path / "out" / "text.1best").read_text() == "spk1-utt-b hello world\n"
    assert set(read_pseudo_nbest(tmp_path / "out" / "pseudo_nbest3.txt")) == {"spk1-utt-b"}
    assert stats["utterances"] == 1 and stats["kept"] == 1 and stats["dropped"] == 1
    assert stats["confidence"] == "posterior" and stats["min_confidence"] == threshold
    assert stats["wer_1best"] == 50.0 and stats["wer_1best_dropped"] == 0.0
    with pytest.raises(KdstError, match="every one of the 2 utterances is below"):
        write_pseudo_labels(nbest_path, tmp_path / "none", 3, min_confidence=1.01)


def test_cli_min_confidence_writes_the_dropped_count(tmp_path):
    nbest_path = write_nbest(tmp_path / "nbest.txt")
    assert main(["pseudo-labels", "--nbest", str(nbest_path), "--out-dir", str(tmp_path / "d"), "--n", "1",
                 "--min-confidence", "-0.2", "--confidence", "logprob",
                 "--stats-json", str(tmp_path / "pseudo_labels.json")]) == 0
    stats = json.loads((tmp_path / "pseudo_labels.json").read_text())
    # per word: utt-a -0.5/4 = -0.125 (kept), utt-b -0.2/3 = -0.067 (kept)
    assert stats["dropped"] == 0 and stats["kept"] == 2
    assert main(["pseudo-labels", "--nbest", str(nbest_path), "--out-dir", str(tmp_path / "e"), "--n", "1",
                 "--min-confidence", "-0.1", "--confidence", "logprob",
                 "--stats-json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["dropped"] == 1
    assert (tmp_path / "e" / "text.1best").read_text() == "spk1-utt-b hello world\n"


def test_drop_empty_leaves_out_utterances_whose_1best_is_empty(tmp_path):
    nbest_path = tmp_path / "nbest.txt"
    nbest_path.write_text("u1-1 -0.1 -0.1\nu1-2 -0.5 -2.0 hello\nu2-1 -0.2 -0.4 hello world\n")
    refs = tmp_path / "text"
    refs.write_text("u1 hello\nu2 hello world\n")
    stats = write_pseudo_labels(nbest_path, tmp_path / "out", 2, reference=refs, drop_empty=True)
    assert (tmp_path / "out" / "text.1best").read_text() == "u2 hello world\n"
    assert stats["empty"] == 1 and stats["kept"] == 1 and "dropped" not in stats
    assert stats["wer_1best"] == 0.0 and stats["wer_1best_dropped"] == 100.0
    kept_all = write_pseudo_labels(nbest_path, tmp_path / "all", 2)  # without the option: written as they are
    assert kept_all["utterances"] == 2 and "empty" not in kept_all
    (tmp_path / "blank.txt").write_text("u1-1 -0.1 -0.1\n")
    with pytest.raises(KdstError, match="1-best of every one of the 1 utterances kept is empty"):
        write_pseudo_labels(tmp_path / "blank.txt", tmp_path / "none", 1, drop_empty=True)


# A 20-word 1-best and a truncated 10-word rival whose raw log-probability is higher (fewer tokens to
# pay for) but whose length-normalised score, what the beam search ranked by, is lower.
LONG = " ".join(f"w{i}" for i in range(20))
TRUNCATED = " ".join(f"w{i}" for i in range(10))
TRUNCATION = [(-5.25 / 21, -5.25, LONG), (-3.25 / 11, -3.25, TRUNCATED)]  # lengths count <eos>


def test_the_1best_outweighs_a_truncated_rival_by_default(tmp_path):
    hyps = entries([(round(s, 6), lp, t) for s, lp, t in TRUNCATION])
    weights = dict((t, w) for w, t in posterior(hyps, 2))
    assert weights[LONG] > weights[TRUNCATED]
    assert confidence(hyps) > 0.5
    # and through the file kdst pseudo-labels writes
    path = tmp_path / "nbest.txt"
    path.write_text("".join(f"u-{r} {s:.6f} {lp:.6f} {t}\n" for r, (s, lp, t) in enumerate(TRUNCATION, 1)))
    write_pseudo_labels(path, tmp_path / "out", 2)
    table = read_pseudo_nbest(tmp_path / "out" / "pseudo_nbest2.txt")
    assert table["u"][0][1] == LONG and table["u"][0][0] > table["u"][1][0]
    # --posterior logprob: the raw log-probabilities, under which the truncation wins 0.88 to 0.12
    assert main(["pseudo-labels", "--nbest", str(path), "--out-dir", str(tmp_path / "raw"), "--n", "2",
                 "--posterior", "logprob", "--stats-json", str(tmp_path / "raw.json")]) == 0
    raw = dict((t, w) for w, t in read_pseudo_nbest(tmp_path / "raw" / "pseudo_nbest2.txt")["u"])
    assert raw[TRUNCATED] == pytest.approx(0.880797, abs=1e-6) and raw[LONG] == pytest.approx(0.119203, abs=1e-6)
    assert json.loads((tmp_path / "raw.json").read_text())["posterior"] == "logprob"
    assert confidence(hyps, "posterior", 1.0, "logprob") < 0.5
