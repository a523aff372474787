"""kdst.teacher.nbest_union: the mixture of several teachers' n-best posteriors, against hand-computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kdst.cli import main
from kdst.data.nbest_targets import read_pseudo_nbest
from kdst.errors import DataError, KdstError
from kdst.teacher.nbest import NbestEntry, posteriors, read_nbest
from kdst.teacher.nbest_union import union
from kdst.teacher.pseudo_labels import write_pseudo_labels
from kdst.teacher.rescore import rescore

L = math.log
# Scores equal to the log-probabilities (length penalty 0), which sum to 1 over each list, so each
# teacher's posterior is exp(logprob) under either --posterior.
TEACHER_A = {"u1": [(L(0.5), L(0.5), "x"), (L(0.3), L(0.3), "y"), (L(0.2), L(0.2), "z")],
             "u2": [(L(0.7), L(0.7), "same words"), (L(0.2), L(0.2), "same  words"), (L(0.1), L(0.1), "other")]}
TEACHER_B = {"u1": [(L(0.6), L(0.6), "y"), (L(0.4), L(0.4), "w")],
             "u2": [(L(1.0), L(1.0), "other")]}


def write(path: Path, nbest: dict[str, list[tuple[float, float, str]]]) -> Path:
    lines = sorted(f"{u}-{r} {s:.6f} {lp:.6f} {t}".rstrip() for u, hyps in nbest.items()
                   for r, (s, lp, t) in enumerate(hyps, start=1))
    path.write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
    return path


def entries(nbest) -> dict[str, list[NbestEntry]]:
    return {u: [NbestEntry(r, s, lp, t) for r, (s, lp, t) in enumerate(h, 1)] for u, h in nbest.items()}


def as_table(merged: dict[str, list[NbestEntry]]) -> dict[str, list[tuple[str, float]]]:
    return {u: [(e.text, math.exp(e.logprob)) for e in hyps] for u, hyps in merged.items()}


def test_equal_weights_add_the_posteriors_of_shared_texts():
    merged = union([entries(TEACHER_A), entries(TEACHER_B)])
    table = as_table(merged)
    # u1: x 0.5/2, y (0.3 + 0.6)/2, z 0.2/2, w 0.4/2 -> y, x, w, z
    assert [t for t, _ in table["u1"]] == ["y", "x", "w", "z"]
    assert [p for _, p in table["u1"]] == pytest.approx([0.45, 0.25, 0.2, 0.1])
    # u2: A's two token sequences of "same words" are one text (0.9); "other" 0.1/2 + 1.0/2
    assert table["u2"] == [("other", pytest.approx(0.55)), ("same words", pytest.approx(0.45))]
    assert [e.rank for e in merged["u1"]] == [1, 2, 3, 4]
    assert all(e.score == e.logprob for hyps in merged.values() for e in hyps)


def test_weights_are_normalised():
    merged = union([entries(TEACHER_A), entries(TEACHER_B)], [3.0, 1.0])
    table = dict(as_table(merged)["u1"])
    # 0.75 * A + 0.25 * B
    assert table == pytest.approx({"x": 0.375, "y": 0.75 * 0.3 + 0.25 * 0.6, "z": 0.15, "w": 0.1})
    assert union([entries(TEACHER_A), entries(TEACHER_B)], [6.0, 2.0]) == merged


def test_each_teacher_posterior_is_its_ranking_score_by_default():
    # lengths differ: scores are logprob / len; A's 1-best normaliser is 2.0 / 0.5 = 4
    a = {"u": [(-0.5, -2.0, "long one here"), (-0.6, -1.2, "short")]}
    b = {"u": [(-1.0, -1.0, "short")]}
    merged = union([entries(a), entries(b)])
    p_long, p_short = (math.exp(4 * -0.5), math.exp(4 * -0.6))
    expected = {"long one here": 0.5 * p_long / (p_long + p_short), "short": 0.5 * p_short / (p_long + p_short) + 0.5}
    assert dict(as_table(merged)["u"]) == pytest.approx(expected)
    raw = union([entries(a), entries(b)], posterior="logprob")
    q_long, q_short = math.exp(-2.0), math.exp(-1.2)
    assert dict(as_table(raw)["u"])["long one here"] == pytest.approx(0.5 * q_long / (q_long + q_short))


def test_ties_keep_the_order_the_teachers_proposed():
    merged = union([entries({"u": [(0.0, 0.0, "first")]}), entries({"u": [(0.0, 0.0, "second")]})])
    assert [e.text for e in merged["u"]] == ["first", "second"]
    assert merged["u"][0].logprob == merged["u"][1].logprob == pytest.approx(math.log(0.5))


def test_the_written_union_reads_back_as_its_own_posterior(tmp_path):
    a, b = write(tmp_path / "a.txt", TEACHER_A), write(tmp_path / "b.txt", TEACHER_B)
    out = tmp_path / "union" / "nbest.txt"
    out.parent.mkdir()
    assert main(["nbest-union", "--out", str(out), str(a), str(b), "--weights", "1", "1",
                 "--stats-json", str(tmp_path / "stats.json")]) == 0
    union_read = read_nbest(out)
    expected = {"y": 0.45, "x": 0.25, "w": 0.2, "z": 0.1}
    for kind in ("score", "logprob"):  # both columns hold log P: either posterior gives P back
        assert dict((t, w) for w, t in posteriors(union_read["u1"], kind)) == pytest.approx(expected, abs=1e-5)
    assert rescore(union_read, None, "rank")[0] == {"u1": "y", "u2": "other"}
    write_pseudo_labels(out, tmp_path / "labels", 3)
    weights = read_pseudo_nbest(tmp_path / "labels" / "pseudo_nbest3.txt")["u1"]
    assert [t for _, t in weights] == ["y", "x", "w"]
    assert [w for w, _ in weights] == pytest.approx([0.45 / 0.9, 0.25 / 0.9, 0.2 / 0.9], abs=1e-5)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["utterances"] == 2 and stats["teachers"] == 2 and stats["mean_hypotheses"] == 3.0
    assert stats["mean_hypotheses_per_teacher"] == [3.0, 1.5]
    assert stats["share_1best_agree"] == 0.0  # u1: x / y, u2: same words / other
    assert stats["share_1best_is_teachers"] == [0.0, 1.0]


def test_bad_inputs(tmp_path, capsys):
    a, b = write(tmp_path / "a.txt", TEACHER_A), write(tmp_path / "b.txt", {"u1": TEACHER_B["u1"]})
    with pytest.raises(DataError, match=f"^{b}: 1 utterance.* missing here, the first 'u2'"):
        union([read_nbest(a), read_nbest(b)], names=[str(a), str(b)])
    with pytest.raises(DataError, match=f"^{b}: .*missing here"):
        union([read_nbest(b), read_nbest(a)], names=[str(b), str(a)])
    with pytest.raises(KdstError, match="2 weights for 1 n-best lists"):
        union([read_nbest(a)], [1.0, 2.0])
    with pytest.raises(KdstError, match="--weights must be positive"):
        union([read_nbest(a), read_nbest(a)], [1.0, 0.0])
    assert main(["nbest-union", "--out", str(tmp_path / "u.txt"), str(a), str(b)]) == 1
    assert "missing here" in capsys.readouterr().err
    assert not (tmp_path / "u.txt").exists()
    (tmp_path / "cut.txt").write_text("u1-1 -0.1 -0.1 x\nu1-2 -0.2 -0.2 y")  # a killed decoding's last line
    assert main(["nbest-union", "--out", str(tmp_path / "u.txt"), str(a), str(tmp_path / "cut.txt")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"kdst nbest-union: error: {tmp_path / 'cut.txt'}:2: the last line has no newline: "
                   "the file was cut short (re-run the decoding)"]
