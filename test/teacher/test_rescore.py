"""kdst.teacher.rescore: n-best parsing, the scorers against sacrebleu oracles, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sacrebleu.metrics import BLEU, TER

from kdst.cli import main
from kdst.teacher.rescore import SCORERS, NbestEntry, read_nbest, rescore
from kdst.errors import DataError, KdstError

UTT1 = "ted_00001_0000000-0001000"  # ids may contain '-': the rank follows the last one
UTT2 = "ted_00001_0001000-0002500"
UTT3 = "ted_00002_0000000-0000900"

REFS = {
    UTT1: "the cat sat on the mat .",
    UTT2: "it was raining , so we stayed at home",
    UTT3: "hello world",
}
# (score, logprob, text) by rank.  UTT1: rank 3 is the reference itself; UTT2: rank 2 has the best
# length-normalised score although the search ranked it second; UTT3: rank 2 is empty.
NBEST = {
    UTT1: [(-0.10, -0.80, "a cat is sitting on a rug"),
           (-0.20, -1.40, "the cat is on the mat ."),
           (-0.30, -2.40, "the cat sat on the mat ."),
           (-0.40, -3.20, "cat mat")],
    UTT2: [(-0.50, -4.00, "it rained so we stayed home"),
           (-0.25, -2.50, "it rained , so we stayed at home"),
           (-0.90, -9.00, "rain home")],
    UTT3: [(-0.05, -0.15, "hello world"),
           (-0.70, -0.70, "")],
}


def write_nbest(path: Path, nbest: dict[str, list[tuple[float, float, str]]]) -> Path:
    """Lines sorted as text, as kdst decode writes them (utt-10 before utt-2)."""
    lines = sorted(f"{u}-{r} {s:.6f} {lp:.6f} {t}".rstrip() for u, hyps in nbest.items()
                   for r, (s, lp, t) in enumerate(hyps, start=1))
    path.write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
    return path


def write_text(path: Path, table: dict[str, str]) -> Path:
    path.write_text("".join(f"{k} {v}\n" for k, v in table.items()), encoding="utf-8")
    return path


@pytest.fixture
def nbest(tmp_path) -> dict[str, list[NbestEntry]]:
    return read_nbest(write_nbest(tmp_path / "nbest.txt", NBEST))


def chosen_ranks(nbest, chosen: dict[str, str]) -> dict[str, int]:
    return {u: next(e.rank for e in nbest[u] if e.text == t) for u, t in chosen.items()}


# --- reading ------------------------------------------------------------------------------------

def test_read_nbest(nbest):
    assert list(nbest) == sorted(NBEST)
    assert nbest[UTT1][0] == NbestEntry(1, -0.1, -0.8, "a cat is sitting on a rug")
    assert [e.rank for e in nbest[UTT1]] == [1, 2, 3, 4]
    assert nbest[UTT3][1] == NbestEntry(2, -0.7, -0.7, "")  # the line ends after logprob


def test_ranks_sort_numerically(tmp_path):
    hyps = [(-float(r), -float(r), f"hyp {r}") for r in range(1, 12)]
    nbest = read_nbest(write_nbest(tmp_path / "nbest.txt", {"a-b": hyps}))
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


# --- choosing -----------------------------------------------------------------------------------

def test_bleu_prefers_the_closest_hypothesis(nbest):
    chosen, stats = rescore(nbest, REFS, "bleu")
    ranks = chosen_ranks(nbest, chosen)
    assert ranks == {UTT1: 3, UTT2: 2, UTT3: 1}
    assert chosen[UTT1] == REFS[UTT1]
    assert stats["utterances"] == 3
    assert stats["mean_chosen_rank"] == pytest.approx(2.0)
    assert stats["share_not_1best"] == pytest.approx(2 / 3)
    assert stats["chosen_rank_counts"] == {"1": 1, "2": 1, "3": 1}
    words = {u: [len(t.split()) for _, _, t in hyps] for u, hyps in NBEST.items()}
    assert stats["mean_words_1best"] == pytest.approx(sum(w[0] for w in words.values()) / 3)
    assert stats["mean_words_chosen"] == pytest.approx(sum(words[u][r - 1] for u, r in ranks.items()) / 3)


def test_chosen_bleu_is_the_oracle(nbest):
    bleu = BLEU(effective_order=True)
    chosen, stats = rescore(nbest, REFS, "bleu")
    oracle = {u: max(bleu.sentence_score(t, [REFS[u]]).score for _, _, t in hyps) for u, hyps in NBEST.items()}
    for utt, text in chosen.items():
        assert bleu.sentence_score(text, [REFS[utt]]).score == oracle[utt]
    assert stats["mean_bleu_chosen"] == pytest.approx(sum(oracle.values()) / 3)
    first = [bleu.sentence_score(hyps[0][2], [REFS[u]]).score for u, hyps in NBEST.items()]
    assert stats["mean_bleu_1best"] == pytest.approx(sum(first) / 3)
    assert stats["mean_bleu_chosen"] > stats["mean_bleu_1best"]


def test_rank_is_seq_kd(nbest):
    chosen, stats = rescore(nbest, None, "rank")
    assert chosen == {u: hyps[0][2] for u, hyps in NBEST.items()}
    assert stats["mean_chosen_rank"] == 1 and stats["share_not_1best"] == 0
    assert "mean_bleu_1best" not in stats


def test_ter_picks_the_lowest_ter(nbest):
    ter = TER()
    chosen, _ = rescore(nbest, REFS, "ter")
    for utt, hyps in NBEST.items():
        lowest = min(ter.sentence_score(t, [REFS[utt]]).score for _, _, t in hyps)
        assert ter.sentence_score(chosen[utt], [REFS[utt]]).score == lowest
    assert chosen[UTT1] == REFS[UTT1]


def test_logprob_picks_the_best_score_field(nbest):
    chosen, _ = rescore(nbest, None, "logprob")
    assert chosen_ranks(nbest, chosen) == {UTT1: 1, UTT2: 2, UTT3: 1}


def test_chrf_needs_references(nbest):
    chosen, _ = rescore(nbest, REFS, "chrf")
    assert chosen[UTT1] == REFS[UTT1]
    for name in ("bleu", "chrf", "ter"):
        assert SCORERS[name].needs_reference
        with pytest.raises(KdstError, match=f"scorer '{name}' compares with a reference"):
            rescore(nbest, None, name)
    assert not SCORERS["rank"].needs_reference and not SCORERS["logprob"].needs_reference


def test_nbest_size_limits_the_choice(nbest):
    chosen, stats = rescore(nbest, REFS, "bleu", nbest_size=2)
    assert chosen_ranks(nbest, chosen) == {UTT1: 2, UTT2: 2, UTT3: 1}
    assert stats["mean_candidates"] == pytest.approx((2 + 2 + 2) / 3)
    chosen, _ = rescore(nbest, REFS, "bleu", nbest_size=1)
    assert chosen == {u: hyps[0][2] for u, hyps in NBEST.items()}
    with pytest.raises(KdstError, match="at least 1"):
        rescore(nbest, REFS, "bleu", nbest_size=0)


def test_ties_go_to_the_better_rank(tmp_path):
    same = "the cat sat on the mat ."
    nbest = read_nbest(write_nbest(tmp_path / "nbest.txt", {
        "u": [(-0.1, -1.0, "a dog"), (-0.2, -2.0, same), (-0.2, -2.0, same + " ")]}))
    for metric in ("bleu", "chrf", "ter"):
        _, stats = rescore(nbest, {"u": same}, metric)
        assert stats["mean_chosen_rank"] == 2, metric
    _, stats = rescore(nbest, None, "logprob")  # ranks 2 and 3 tie on the score but lose to rank 1
    assert stats["mean_chosen_rank"] == 1
    flat = read_nbest(write_nbest(tmp_path / "flat.txt", {"u": [(-0.3, -1.0, "x"), (-0.3, -1.0, "y")]}))
    assert rescore(flat, None, "logprob")[0] == {"u": "x"}


def test_missing_and_extra_references(nbest):
    refs = {u: r for u, r in REFS.items() if u != UTT2}
    with pytest.raises(KdstError, match=f"utterance '{UTT2}' of the n-best list has no reference in ref.txt"):
        rescore(nbest, refs, "bleu", ref_name="ref.txt")
    extra = {**REFS, "zz-1": "x", "aa-2": "y"}
    with pytest.raises(KdstError, match="2 utterance.* of ref.txt have no hypotheses .* the first 'aa-2'"):
        rescore(nbest, extra, "rank", ref_name="ref.txt")
    with pytest.raises(KdstError, match="unknown scorer 'meteor'"):
        rescore(nbest, REFS, "meteor")


# --- command line -------------------------------------------------------------------------------

def test_cli_end_to_end(tmp_path, capsys):
    nbest = write_nbest(tmp_path / "nbest.txt", NBEST)
    ref = write_text(tmp_path / "ref.txt", dict(reversed(REFS.items())))
    out, stats = tmp_path / "out" / "text", tmp_path / "stats.json"
    assert main(["rescore", "--nbest", str(nbest), "--ref", str(ref), "--out", str(out), "--metric", "bleu",
                 "--stats-json", str(stats)]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines == [f"{UTT1} {REFS[UTT1]}", f"{UTT2} it rained , so we stayed at home", f"{UTT3} hello world"]
    assert [x.split()[0] for x in lines] == sorted(REFS, key=lambda u: u.encode())
    summary = json.loads(stats.read_text())
    assert summary["utterances"] == 3 and summary["scorer"] == "bleu"
    printed = capsys.readouterr().out
    assert printed.startswith(f"{out}: 3 utterances") and "sentence BLEU" in printed

    # logprob needs no reference; an empty choice is written as the bare id, as hyp.txt does.
    empty = write_nbest(tmp_path / "empty.txt", {"u": [(-0.9, -0.9, "long text"), (-0.1, -0.1, "")]})
    assert main(["rescore", "--nbest", str(empty), "--out", str(out), "--metric", "logprob"]) == 0
    assert out.read_text(encoding="utf-8") == "u\n"


def test_cli_errors(tmp_path, capsys):
    nbest = write_nbest(tmp_path / "nbest.txt", NBEST)
    out = tmp_path / "text"
    assert main(["rescore", "--nbest", str(nbest), "--out", str(out), "--metric", "ter"]) == 1
    assert "compares with a reference" in capsys.readouterr().err
    ref = write_text(tmp_path / "ref.txt", {UTT1: REFS[UTT1]})
    assert main(["rescore", "--nbest", str(nbest), "--ref", str(ref), "--out", str(out)]) == 1
    assert f"no reference in {ref} (and 1 more)" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_text("u-1 -0.1 -0.2 ok\nu-2 oops\n", encoding="utf-8")
    assert main(["rescore", "--nbest", str(bad), "--out", str(out)]) == 1
    assert f"{bad}:2: " in capsys.readouterr().err
    assert not out.exists()
