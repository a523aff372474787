"""kdst.teacher.rescore: the scorers against sacrebleu oracles, MBR against a brute-force expectation,
the QE plug-in with a toy QE function, and the command line."""

from __future__ import annotations

import json
import math
import random
import sys
import types
from pathlib import Path

import pytest
from sacrebleu.metrics import BLEU, CHRF, TER

from kdst.cli import main
from kdst.errors import KdstError
from kdst.teacher.nbest import NbestEntry, read_nbest
from kdst.teacher.rescore import SCORERS, make_scorer, mbr_expected_utilities, rescore, utility_matrix

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


def test_chrf_needs_references(nbest):
    chosen, _ = rescore(nbest, REFS, "chrf")
    assert chosen[UTT1] == REFS[UTT1]
    for name in ("bleu", "chrf", "ter"):
        assert SCORERS[name].needs_reference
        with pytest.raises(KdstError, match=f"scorer '{name}' compares with a reference"):
            rescore(nbest, None, name)
    assert not SCORERS["rank"].needs_reference and not make_scorer("mbr").needs_reference


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
    # mbr: two one-word texts with the same weight, each agreeing with the other at chrF 0
    flat = read_nbest(write_nbest(tmp_path / "flat.txt", {"u": [(-0.3, -1.0, "x"), (-0.3, -1.0, "y")]}))
    assert rescore(flat, None, "mbr")[0] == {"u": "x"}


def test_missing_and_extra_references(nbest):
    refs = {u: r for u, r in REFS.items() if u != UTT2}
    with pytest.raises(KdstError, match=f"utterance '{UTT2}' of the n-best list has no reference in ref.txt"):
        rescore(nbest, refs, "bleu", ref_name="ref.txt")
    extra = {**REFS, "zz-1": "x", "aa-2": "y"}
    with pytest.raises(KdstError, match="2 utterance.* of ref.txt have no hypotheses .* the first 'aa-2'"):
        rescore(nbest, extra, "rank", ref_name="ref.txt")
    with pytest.raises(KdstError, match="unknown scorer 'meteor'"):
        rescore(nbest, REFS, "meteor")
    with pytest.raises(KdstError, match="--metric logprob is gone: .* always chose the 1-best"):
        rescore(nbest, REFS, "logprob")


# --- minimum Bayes risk -------------------------------------------------------------------------

def softmax(values: list[float]) -> list[float]:
    top = max(values)
    exp = [math.exp(v - top) for v in values]
    return [e / sum(exp) for e in exp]


PAIR_TEXTS = ["the cat sat on the mat .", "the cat sat on a mat", "(a) dog, barking!", "", "cat", "Cat"]


@pytest.mark.parametrize("utility, metric", [("chrf", CHRF()), ("bleu", BLEU(effective_order=True))])
def test_utility_matrix_is_sacrebleus_sentence_score(utility, metric):
    u = utility_matrix(PAIR_TEXTS, utility)
    for i, hyp in enumerate(PAIR_TEXTS):
        for j, ref in enumerate(PAIR_TEXTS):
            expected = 100.0 if i == j else metric.sentence_score(hyp, [ref]).score
            assert u[i][j] == pytest.approx(expected, abs=1e-9), (hyp, ref)
    assert u[0][1] != u[1][0]  # hypothesis and reference are not interchangeable


@pytest.mark.parametrize("utility, metric", [("chrf", CHRF()), ("bleu", BLEU(effective_order=True))])
def test_utility_matrix_on_overlapping_texts_with_repeated_ngrams(utility, metric):
    rng = random.Random(3)
    words = ["the", "the", "cat", "sat", "on", "mat", ",", "mat.", "Katze", "saß"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 12))) for _ in range(12)]
    u = utility_matrix(texts, utility)
    for i, hyp in enumerate(texts):
        for j, ref in enumerate(texts):
            assert u[i][j] == (100.0 if i == j else metric.sentence_score(hyp, [ref]).score), (hyp, ref)


def test_mbr_expected_utility_by_brute_force():
    # three entries; the 1-best's normaliser is 1.2 / 0.2 = 6, so the weights are softmax(6 * score)
    hyps = [(-0.2, -1.2, "the cat sat on the mat"), (-0.25, -1.75, "a cat sat on the mat"),
            (-0.3, -1.5, "the dog sat")]
    entries = [NbestEntry(r, s, lp, t) for r, (s, lp, t) in enumerate(hyps, 1)]
    weights = softmax([-1.2, -1.5, -1.8])
    for utility, metric in (("chrf", CHRF()), ("bleu", BLEU(effective_order=True))):
        brute = [sum(w * (100.0 if h == y else metric.sentence_score(h, [y]).score)
                     for w, (_, _, y) in zip(weights, hyps)) for _, _, h in hyps]
        assert mbr_expected_utilities(entries, utility) == pytest.approx(brute), utility
    raw = softmax([-1.2, -1.75, -1.5])  # --posterior logprob, and a scale
    chrf = CHRF()
    brute = [sum(w * (100.0 if h == y else chrf.sentence_score(h, [y]).score) for w, (_, _, y) in zip(raw, hyps))
             for _, _, h in hyps]
    assert mbr_expected_utilities(entries, "chrf", "logprob") == pytest.approx(brute)
    flat = softmax([0.5 * v for v in (-1.2, -1.5, -1.8)])
    brute = [sum(w * (100.0 if h == y else chrf.sentence_score(h, [y]).score) for w, (_, _, y) in zip(flat, hyps))
             for _, _, h in hyps]
    assert mbr_expected_utilities(entries, "chrf", "score", 0.5) == pytest.approx(brute)


def test_mbr_passes_over_an_outlying_1best(tmp_path):
    # The 1-best has the highest posterior but agrees with nothing; ranks 2-4 agree with each other.
    hyps = [(-0.30, -2.10, "yesterday it was raining heavily"), (-0.35, -2.45, "the cat sat on the mat"),
            (-0.40, -2.80, "the cat sat on a mat"), (-0.45, -3.15, "the cat sat on the mat .")]
    nbest = read_nbest(write_nbest(tmp_path / "nbest.txt", {"u": hyps}))
    weights = softmax([7 * s for s, _, _ in hyps])
    assert weights[0] == max(weights)
    for utility in ("chrf", "bleu"):
        chosen, stats = rescore(nbest, None, make_scorer("mbr", mbr_utility=utility))
        assert chosen["u"] in {t for _, _, t in hyps[1:]}, utility
        assert stats["scorer"] == "mbr" and stats["mbr_utility"] == utility and stats["share_not_1best"] == 1
        assert stats["mean_score_chosen"] > stats["mean_score_1best"]
    assert rescore(nbest, None, "rank")[0] == {"u": hyps[0][2]}
    # sharpened enough, the 1-best's own weight wins: the expectation includes the hypothesis itself
    assert rescore(nbest, None, make_scorer("mbr", scale=20.0))[0] == {"u": hyps[0][2]}


def test_mbr_merges_identical_texts():
    entries = [NbestEntry(1, -0.1, -0.5, "a b c"), NbestEntry(2, -0.2, -1.0, "x y"),
               NbestEntry(3, -0.3, -1.5, "a  b c")]
    values = mbr_expected_utilities(entries)
    assert values[0] == values[2]
    p = softmax([-0.5, -1.0, -1.5])
    chrf = CHRF()
    assert values[0] == pytest.approx((p[0] + p[2]) * 100 + p[1] * chrf.sentence_score("a b c", ["x y"]).score)
    assert values[1] == pytest.approx(p[1] * 100 + (p[0] + p[2]) * chrf.sentence_score("x y", ["a b c"]).score)


def test_mbr_options_are_checked():
    with pytest.raises(KdstError, match="unknown MBR utility 'meteor'"):
        make_scorer("mbr", mbr_utility="meteor")
    with pytest.raises(KdstError, match="unknown posterior 'entropy'"):
        make_scorer("mbr", posterior="entropy")
    with pytest.raises(KdstError, match="--scale must be positive"):
        make_scorer("mbr", scale=0.0)


# --- quality estimation -------------------------------------------------------------------------

def toy_qe(source: str, hypotheses: list[str]) -> list[float]:
    """A toy QE model: the closer a hypothesis's word count is to the source's, the better."""
    return [-abs(len(h.split()) - len(source.split())) for h in hypotheses]


@pytest.fixture
def toy_module(monkeypatch):
    module = types.ModuleType("kdst_test_toy_qe")
    module.toy_qe = toy_qe
    module.wrong_count = lambda source, hypotheses: [1.0]
    module.not_a_number = lambda source, hypotheses: ["good"] * len(hypotheses)
    module.infinite = lambda source, hypotheses: [math.inf] * len(hypotheses)
    module.constant = 3
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module.__name__


def test_qe_scorer_chooses_what_the_qe_function_prefers(nbest, toy_module):
    sources = {UTT1: "one two", UTT2: "one two three four five six seven eight", UTT3: "one"}
    scorer = make_scorer(f"qe:{toy_module}:toy_qe")
    chosen, stats = rescore(nbest, None, scorer, sources=sources)
    for utt, hyps in NBEST.items():
        scores = toy_qe(sources[utt], [t for _, _, t in hyps])
        best = max(range(len(hyps)), key=lambda i: (scores[i], -i))  # ties to the better rank
        assert chosen[utt] == hyps[best][2]
    # 2 words of 2, 8 of 8; UTT3: "hello world" and "" are both 1 word off, and the better rank wins
    assert chosen == {UTT1: "cat mat", UTT2: "it rained , so we stayed at home", UTT3: "hello world"}
    assert stats["scorer"] == f"qe:{toy_module}:toy_qe"
    with pytest.raises(KdstError, match="reads the source text; give it \\(--src\\)"):
        rescore(nbest, None, scorer)
    with pytest.raises(KdstError, match=f"1 utterance\\(s\\) of the n-best list have no source in src.txt, "
                                        f"the first '{UTT3}'"):
        rescore(nbest, None, scorer, sources={UTT1: "a", UTT2: "b"}, src_name="src.txt")


@pytest.mark.parametrize("function, message", [
    ("wrong_count", "gave 1 scores for 4 hypotheses"), ("not_a_number", "not a number"),
    ("infinite", "not finite")])
def test_qe_scores_are_checked(nbest, toy_module, function, message):
    with pytest.raises(KdstError, match=message):
        rescore(nbest, None, f"qe:{toy_module}:{function}", sources={u: "x" for u in NBEST})


@pytest.mark.parametrize("metric, message", [
    ("qe:no_such_module_for_kdst:f", "cannot import no_such_module_for_kdst"),
    ("qe:{toy}:missing", "has no function missing"), ("qe:{toy}:constant", "has no function constant"),
    ("qe:only_a_module", "is named qe:MODULE:FUNCTION")])
def test_qe_names_are_checked(toy_module, metric, message):
    with pytest.raises(KdstError, match=message):
        make_scorer(metric.format(toy=toy_module))


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

    # rank needs no reference; an empty choice is written as the bare id, as hyp.txt does.
    empty = write_nbest(tmp_path / "empty.txt", {"u": [(-0.1, -0.1, ""), (-0.9, -0.9, "long text")]})
    assert main(["rescore", "--nbest", str(empty), "--out", str(out), "--metric", "rank"]) == 0
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
    # a bad --metric is a usage error before anything is read
    for metric, message in (("logprob", "--metric logprob is gone"), ("meteor", "unknown scorer 'meteor'")):
        with pytest.raises(SystemExit) as info:
            main(["rescore", "--nbest", str(bad), "--out", str(out), "--metric", metric])
        assert info.value.code == 2 and message in capsys.readouterr().err


def test_cli_mbr_and_qe(tmp_path, toy_module):
    nbest = write_nbest(tmp_path / "nbest.txt", NBEST)
    out, stats = tmp_path / "text", tmp_path / "stats.json"
    assert main(["rescore", "--nbest", str(nbest), "--out", str(out), "--metric", "mbr", "--mbr-utility", "bleu",
                 "--posterior", "logprob", "--scale", "0.5", "--stats-json", str(stats)]) == 0
    summary = json.loads(stats.read_text())
    assert (summary["scorer"], summary["mbr_utility"], summary["posterior"], summary["scale"]) == \
        ("mbr", "bleu", "logprob", 0.5)
    scorer = make_scorer("mbr", mbr_utility="bleu", posterior="logprob", scale=0.5)
    expected, _ = rescore(read_nbest(nbest), None, scorer)
    assert out.read_text(encoding="utf-8") == "".join(f"{u} {expected[u]}".rstrip() + "\n" for u in sorted(expected))
    src = write_text(tmp_path / "src.txt", {UTT1: "one two", UTT2: "a b c d e f", UTT3: "one"})
    assert main(["rescore", "--nbest", str(nbest), "--out", str(out), "--metric", f"qe:{toy_module}:toy_qe",
                 "--src", str(src)]) == 0
    assert out.read_text(encoding="utf-8").splitlines() == [f"{UTT1} cat mat", f"{UTT2} it rained so we stayed home",
                                                            f"{UTT3} hello world"]
    assert main(["rescore", "--nbest", str(nbest), "--out", str(out), "--metric", f"qe:{toy_module}:toy_qe"]) == 1
