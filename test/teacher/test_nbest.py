"""kdst.teacher.nbest: reading nbest.txt, writing it back, and the posteriors of its hypotheses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from kdst.errors import DataError, KdstError
from kdst.teacher.nbest import NbestEntry, log_weights, posteriors, read_nbest, write_nbest

UTT1 = "ted_00001_0000000-0001000"  # ids may contain '-': the rank follows the last one
UTT3 = "ted_00002_0000000-0000900"
NBEST = {  # (score, logprob, text) by rank
    UTT1: [(-0.10, -0.80, "a cat is sitting on a rug"), (-0.20, -1.40, "the cat is on the mat ."),
           (-0.30, -2.40, "the cat sat on the mat ."), (-0.40, -3.20, "cat mat")],
    UTT3: [(-0.05, -0.15, "hello world"), (-0.70, -0.70, "")],
}


def write_lines(path: Path, nbest: dict[str, list[tuple[float, float, str]]]) -> Path:
    """Lines sorted as text, as kdst decode writes them (utt-10 before utt-2)."""
    lines = sorted(f"{u}-{r} {s:.6f} {lp:.6f} {t}".rstrip() for u, hyps in nbest.items()
                   for r, (s, lp, t) in enumerate(hyps, start=1))
    path.write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
    return path


def softmax(values: list[float]) -> list[float]:
    top = max(values)
    exp = [math.exp(v - top) for v in values]
    return [e / sum(exp) for e in exp]


def entries(hyps) -> list[NbestEntry]:
    return [NbestEntry(r, s, lp, t) for r, (s, lp, t) in enumerate(hyps, start=1)]


# --- reading and writing ------------------------------------------------------------------------

def test_read_nbest(tmp_path):
    nbest = read_nbest(write_lines(tmp_path / "nbest.txt", NBEST))
    assert list(nbest) == sorted(NBEST)
    assert nbest[UTT1][0] == NbestEntry(1, -0.1, -0.8, "a cat is sitting on a rug")
    assert [e.rank for e in nbest[UTT1]] == [1, 2, 3, 4]
    assert nbest[UTT3][1] == NbestEntry(2, -0.7, -0.7, "")  # the line ends after logprob


def test_write_nbest_is_what_decode_writes(tmp_path):
    source = write_lines(tmp_path / "nbest.txt", NBEST)
    write_nbest(tmp_path / "again.txt", read_nbest(source))
    assert (tmp_path / "again.txt").read_bytes() == source.read_bytes()


def test_ranks_sort_numerically(tmp_path):
    hyps = [(-float(r), -float(r), f"hyp {r}") for r in range(1, 12)]
    nbest = read_nbest(write_lines(tmp_path / "nbest.txt", {"a-b": hyps}))
    assert [e.rank for e in nbest["a-b"]] == list(range(1, 12))
    assert nbest["a-b"][9].text == "hyp 10"


@pytest.mark.parametrize("bad, message", [
    ("u-2 -0.5", "expected"),  # no logprob
    ("u-2 high -1.0 text", "not numbers"),
    ("u-2 -0.5 nan text", "NaN"),
    ("u -0.5 -1.0 text", "'<utt>-<rank>'"),  # no rank
    ("u-x -0.5 -1.0 text", "'<utt>-<rank>'"),
    ("u-0 -0.5 -1.0 text", "'<utt>-<rank>'"),
    ("-2 -0.5 -1.0 text", "'<utt>-<rank>'"),  # no utterance
    ("u-1 -0.5 -1.0 again", r"duplicate key 'u-1' \(first on line 1\)"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad, message):
    path = tmp_path / "nbest.txt"
    path.write_text(f"u-1 -0.1 -0.2 fine\n{bad}\n", encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        read_nbest(path)
    assert str(info.value).startswith(f"{path}:2: ")


def test_gap_in_ranks(tmp_path):
    path = tmp_path / "nbest.txt"
    path.write_text("u-1 -0.1 -0.2 a\nu-3 -0.1 -0.2 c\n", encoding="utf-8")
    with pytest.raises(DataError, match="'u' has no rank 2"):
        read_nbest(path)


# --- posteriors ---------------------------------------------------------------------------------

# The 1-best has 20 words, its rival is the same cut after 10: a higher raw log-probability (fewer
# tokens to pay for, 2 nats less) but a lower length-normalised score, which the search ranked by.
LONG = " ".join(f"w{i}" for i in range(20))
TRUNCATED = " ".join(f"w{i}" for i in range(10))
TRUNCATION = [(round(-5.25 / 21, 6), -5.25, LONG), (round(-3.25 / 11, 6), -3.25, TRUNCATED)]  # len counts <eos>


def test_score_posterior_follows_the_ranking_where_logprob_prefers_the_truncation():
    hyps = entries(TRUNCATION)
    by_score = dict((t, w) for w, t in posteriors(hyps))
    by_logprob = dict((t, w) for w, t in posteriors(hyps, "logprob"))
    assert by_logprob[TRUNCATED] == pytest.approx(softmax([-3.25, -5.25])[0])  # 0.88: the old default
    assert by_logprob[TRUNCATED] == pytest.approx(0.8808, abs=1e-4)
    # score times the 1-best's normaliser (5.25 / 0.25 = 21): the rival at its score per token over 21
    expected = softmax([21 * TRUNCATION[0][0], 21 * TRUNCATION[1][0]])
    assert [by_score[LONG], by_score[TRUNCATED]] == pytest.approx(expected)
    assert by_score[LONG] > 0.7 > by_score[TRUNCATED]


def test_score_posterior_keeps_the_rank_order_and_is_logprob_for_the_1best():
    hyps = entries(NBEST[UTT1])
    values = log_weights(hyps)
    assert values == pytest.approx([8 * s for s, _, _ in NBEST[UTT1]])  # n1 = 0.8 / 0.1
    assert values[0] == pytest.approx(hyps[0].logprob)
    weights = [w for w, _ in posteriors(hyps)]
    assert weights == sorted(weights, reverse=True) and sum(weights) == pytest.approx(1.0)
    assert log_weights(hyps, "score", 0.5) == pytest.approx([0.5 * v for v in values])
    # length penalty 0 (score = logprob), a transducer: the two posteriors are one
    raw = entries([(lp, lp, t) for _, lp, t in NBEST[UTT1]])
    assert [w for w, _ in posteriors(raw)] == pytest.approx(softmax([lp for _, lp, _ in NBEST[UTT1]]))
    assert posteriors(raw) == posteriors(raw, "logprob")


def test_score_posterior_of_a_certain_1best_uses_the_score_as_it_is():
    hyps = entries([(0.0, 0.0, "sure"), (-0.5, -1.0, "unsure")])  # no normaliser to recover
    assert log_weights(hyps) == [0.0, -0.5]


def test_identical_texts_are_merged_and_n_counts_distinct_texts():
    hyps = entries([(-0.1, -0.2, "hello world"), (-0.2, -0.9, "hello  world"), (-0.5, -3.0, "yellow world"),
                    (-0.6, -3.6, "hello word")])
    kept = posteriors(hyps, "logprob", n=2)
    assert [t for _, t in kept] == ["hello world", "yellow world"]
    p = [math.exp(v) for v in (-0.2, -0.9, -3.0)]
    assert [w for w, _ in kept] == pytest.approx([(p[0] + p[1]) / sum(p), p[2] / sum(p)])
    assert posteriors(hyps, n=1) == [(1.0, "hello world")]
    with pytest.raises(KdstError, match="unknown posterior 'entropy'"):
        posteriors(hyps, "entropy")
