"""kdst.metrics: sacrebleu agreement, id matching, and WER/CER alignment against brute-force oracles."""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import random
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.significance import PairedTest

from kdst.errors import DataError, KdstError
from kdst.metrics import (METRICS, SIGNIFICANCE_TESTS, ErrorCounts, add_arguments, align, bootstrap_scores, cer,
                          confidence_interval, format_table, paired_p_value, read_pairs, resample_counts, run, score,
                          score_from_stats, score_pairs, wer)

REFS = {
    "utt1": "the cat sat on the mat .",
    "utt2": "it was raining , so we stayed at home",
    "utt3": "a quick brown fox jumps over the lazy dog",
    "utt4": "hello world",
    "utt5": "Ils sont partis très tôt ce matin-là !",
}
HYPS = {
    "utt1": "the cat sat on a mat",
    "utt2": "it rained so we stayed home",
    "utt3": "",  # a model may output nothing
    "utt4": "hello world",
    "utt5": "ils sont partis tres tot ce matin !",
}


def write(path: Path, table: dict[str, str] | list[tuple[str, str]]) -> Path:
    items = table.items() if isinstance(table, dict) else table
    path.write_text("".join(f"{k} {v}\n".replace(" \n", "\n") for k, v in items), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return write(tmp_path / "ref.txt", REFS), write(tmp_path / "hyp.txt", HYPS)


# --- sacrebleu metrics --------------------------------------------------------------------------

def test_sacrebleu_scores_and_signatures(files):
    ref, hyp = files
    ids = sorted(REFS)
    refs, hyps = [REFS[k] for k in ids], [HYPS[k] for k in ids]
    result = score(ref, hyp, ["bleu", "chrf", "ter"])
    assert result["bleu"] == round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)
    assert result["chrf"] == round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2)
    assert result["ter"] == round(sacrebleu.corpus_ter(hyps, [refs]).score, 2)
    assert 0 < result["bleu"] < 100 and result["n"] == 5
    for metric, name in ((BLEU(), "bleu"), (CHRF(), "chrf"), (TER(), "ter")):
        metric.corpus_score(hyps, [refs])
        assert result["signature"][name] == str(metric.get_signature())
    assert result["signature"]["bleu"] == \
        f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{sacrebleu.__version__}"
    bleu = sacrebleu.corpus_bleu(hyps, [refs])
    assert result["len_ratio"] == round(bleu.sys_len / bleu.ref_len, 4) and 0 < result["len_ratio"] < 1
    assert set(result) == {"bleu", "chrf", "ter", "len_ratio", "n", "signature"}


def test_bleu_tokenizer_is_passed_on(files):
    ref, hyp = files
    ids = sorted(REFS)
    result = score(ref, hyp, ["bleu"], tokenize="char")
    expected = sacrebleu.corpus_bleu([HYPS[k] for k in ids], [[REFS[k] for k in ids]], tokenize="char")
    assert result["bleu"] == round(expected.score, 2)
    assert "tok:char" in result["signature"]["bleu"]
    with pytest.raises(KdstError, match="tokenizer 'nope'"):
        score(ref, hyp, ["bleu"], tokenize="nope")


def test_perfect_hypothesis(tmp_path):
    ref = write(tmp_path / "ref", REFS)
    result = score(ref, ref, ["bleu", "chrf", "ter", "wer", "cer"])
    assert (result["bleu"], result["chrf"], result["ter"], result["wer"], result["cer"]) == (100, 100, 0, 0, 0)


# --- reading and matching ids -------------------------------------------------------------------

def test_ids_matched_by_key_not_line_order(tmp_path, files):
    ref, hyp = files
    items = list(HYPS.items())
    random.Random(1).shuffle(items)
    assert [k for k, _ in items] != sorted(HYPS)
    shuffled = write(tmp_path / "shuffled.txt", items)
    metrics = ["bleu", "chrf", "ter", "wer", "cer"]
    assert score(ref, shuffled, metrics) == score(ref, hyp, metrics)
    ids, refs, hyps = read_pairs(ref, shuffled)
    assert ids == sorted(REFS)
    assert refs == [REFS[k] for k in ids] and hyps == [HYPS[k] for k in ids]


def test_ids_in_byte_order(tmp_path):
    keys = ["utt2", "utt10", "b", "B", "é", "a"]
    table = {k: f"word{i}" for i, k in enumerate(keys)}
    ids, refs, hyps = read_pairs(write(tmp_path / "r", table), write(tmp_path / "h", table))
    assert ids == ["B", "a", "b", "utt10", "utt2", "é"]
    assert refs == hyps == [table[k] for k in ids]


def test_missing_and_extra_ids(tmp_path):
    ref = write(tmp_path / "ref.txt", REFS)
    hyp = write(tmp_path / "hyp.txt", {k: v for k, v in HYPS.items() if k != "utt3"})
    with pytest.raises(DataError) as e:
        read_pairs(ref, hyp)
    assert str(e.value) == f"{hyp}: utterance 'utt3' of {ref}:3 is missing"

    hyp = write(tmp_path / "hyp.txt", [*HYPS.items(), ("x", "a"), ("y", "b")][:6])
    with pytest.raises(DataError) as e:
        read_pairs(ref, hyp)
    assert str(e.value) == f"{hyp}:6: utterance 'x' is not in {ref}"
    assert e.value.line == 6

    many = {f"u{i}": "w" for i in range(8)}
    ref = write(tmp_path / "ref.txt", many)
    hyp = write(tmp_path / "hyp.txt", {"u0": "w"})
    with pytest.raises(DataError) as e:
        read_pairs(ref, hyp)
    message = str(e.value)
    assert message.startswith(f"{hyp}: 7 utterances of {ref} are missing: 'u1' ({ref}:2)")
    assert "'u5'" in message and "'u6'" not in message and message.endswith("and 2 more")

    with pytest.raises(DataError) as e:
        read_pairs(write(tmp_path / "r2", {"u0": "w"}), ref)
    assert e.value.line == 2 and "7 utterances are not in" in str(e.value)
    assert "'u7'" not in str(e.value) and "and 2 more" in str(e.value)


def test_duplicates_and_empty_references(tmp_path):
    ref = write(tmp_path / "ref.txt", REFS)
    hyp = write(tmp_path / "hyp.txt", [*HYPS.items(), ("utt2", "again")])
    with pytest.raises(DataError) as e:
        read_pairs(ref, hyp)
    assert e.value.path == str(hyp) and e.value.line == 6 and "utt2" in str(e.value)
    with pytest.raises(DataError) as e:
        read_pairs(write(tmp_path / "ref2", [("a", "x"), ("a", "y")]), hyp)
    assert e.value.line == 2
    # Empty texts on both sides are kept (real test sets have empty segments; test/bad_inputs/test_score.py).
    empty = read_pairs(write(tmp_path / "ref3", [("a", "")]), write(tmp_path / "hyp3", [("a", "")]))
    assert empty == (["a"], [""], [""])
    with pytest.raises(DataError, match="no utterances"):
        score(write(tmp_path / "empty_ref", {}), write(tmp_path / "empty_hyp", {}), ["wer"])


def test_unknown_metric(files):
    ref, hyp = files
    with pytest.raises(KdstError, match=r"unknown metric\(s\) bleu4.*bleu, chrf, ter, wer, cer"):
        score(ref, hyp, ["bleu4"])
    with pytest.raises(KdstError, match="unknown"):
        score("does-not-exist", "either", ["wer", "meteor"])  # checked before any file is read
    assert set(score(ref, hyp, "WER, cer")) == {"wer", "cer", "wer_counts", "cer_counts", "n", "signature"}


# --- WER / CER alignment ------------------------------------------------------------------------

def oracle(ref: tuple[str, ...], hyp: tuple[str, ...]) -> tuple[int, int]:
    """(edit distance, fewest insertions + deletions among alignments at that distance), by recursion."""

    @functools.lru_cache(maxsize=None)
    def best(i: int, j: int) -> tuple[int, int]:
        if i == len(ref):
            return len(hyp) - j, len(hyp) - j
        if j == len(hyp):
            return len(ref) - i, len(ref) - i
        options = []
        e, x = best(i + 1, j + 1)
        options.append((e + (ref[i] != hyp[j]), x))
        e, x = best(i + 1, j)
        options.append((e + 1, x + 1))
        e, x = best(i, j + 1)
        options.append((e + 1, x + 1))
        return min(options)

    return best(0, 0)


def check_alignment(ref: list[str], hyp: list[str]) -> ErrorCounts:
    counts, pairs = align(ref, hyp)
    assert [r for r, _ in pairs if r is not None] == ref
    assert [h for _, h in pairs if h is not None] == hyp
    assert all(r is not None or h is not None for r, h in pairs)
    correct = sum(r == h for r, h in pairs)
    assert counts.substitutions == sum(r is not None and h is not None and r != h for r, h in pairs)
    assert counts.deletions == sum(h is None for _, h in pairs)
    assert counts.insertions == sum(r is None for r, _ in pairs)
    assert counts.ref_length == len(ref) == correct + counts.substitutions + counts.deletions
    assert len(hyp) == correct + counts.substitutions + counts.insertions
    assert counts.correct == correct
    return counts


def test_alignment_against_brute_force():
    rng = random.Random(0)
    for _ in range(300):
        ref = [rng.choice("abc") for _ in range(rng.randint(0, 7))]
        hyp = [rng.choice("abc") for _ in range(rng.randint(0, 7))]
        counts = check_alignment(ref, hyp)
        distance, indels = oracle(tuple(ref), tuple(hyp))
        assert counts.errors == distance, (ref, hyp)
        assert counts.deletions + counts.insertions == indels, (ref, hyp)  # most substitutions


def test_long_alignment_against_dp():
    rng = random.Random(5)
    ref = [rng.choice("abcd") for _ in range(150)]
    hyp = [rng.choice("abcd") for _ in range(170)]
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        prev, row = row, [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            row[j] = min(prev[j - 1] + (r != h), prev[j] + 1, row[j - 1] + 1)
    assert check_alignment(ref, hyp).errors == row[-1]


def test_known_alignments():
    counts, pairs = align("a b c d".split(), "a x c d e".split())
    assert counts == ErrorCounts(substitutions=1, deletions=0, insertions=1, ref_length=4)
    assert pairs == [("a", "a"), ("b", "x"), ("c", "c"), ("d", "d"), (None, "e")]
    assert align("a b c".split(), "a c".split())[0] == ErrorCounts(0, 1, 0, 3)
    assert align("a b".split(), "b a".split())[0] == ErrorCounts(2, 0, 0, 2)  # not D+C+I
    assert align([], [])[0] == ErrorCounts(0, 0, 0, 0)
    assert align([], ["x", "y"]) == (ErrorCounts(0, 0, 2, 0), [(None, "x"), (None, "y")])
    assert align(["x"], []) == (ErrorCounts(0, 1, 0, 1), [("x", None)])


def test_rates_and_empty_reference():
    assert ErrorCounts(0, 0, 0, 0).rate == 0.0
    assert ErrorCounts(0, 0, 3, 0).rate == 100.0  # documented: errors against nothing count as 100%
    assert ErrorCounts(1, 1, 1, 4).rate == 75.0
    assert ErrorCounts(1, 2, 3, 4) + ErrorCounts(1, 0, 0, 2) == ErrorCounts(2, 2, 3, 6)
    total = wer(["a b c d", "e f"], ["a x c d e", ""])
    assert total == ErrorCounts(1, 2, 1, 6) and total.rate == pytest.approx(400 / 6)
    assert wer([""], ["x"]).rate == 100.0


def test_cer_ignores_spaces():
    assert cer(["ab c"], ["a bd"]) == ErrorCounts(1, 0, 0, 3)
    assert cer(["ab  c", "xy"], ["abc", ""]) == ErrorCounts(0, 2, 0, 5)
    assert cer(["très"], ["tres"]) == ErrorCounts(1, 0, 0, 4)  # characters, not bytes


# --- score(), alignment file, command line ------------------------------------------------------

def test_score_wer_cer_counts(tmp_path):
    ref = write(tmp_path / "ref", {"u1": "a b c d", "u2": "e f"})
    hyp = write(tmp_path / "hyp", {"u1": "a x c d e", "u2": ""})
    result = score(ref, hyp, ["wer", "cer"])
    assert result["wer"] == round(400 / 6, 2) == 66.67
    assert result["wer_counts"] == {"sub": 1, "del": 2, "ins": 1, "ref_words": 6}
    assert result["cer_counts"] == {"sub": 1, "del": 2, "ins": 1, "ref_chars": 6}
    assert result["n"] == 2 and result["signature"] == {}
    table = format_table(result)
    assert "WER    66.67  [ 4 / 6, 1 sub, 2 del, 1 ins ]" in table and "CER" in table


def parse_alignment(path: Path) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        utt, label, *fields = line.split()
        out.setdefault(utt, {})[label] = fields
    return out


def test_alignment_file(tmp_path, files):
    ref, hyp = files
    ali = tmp_path / "out" / "ali.txt"
    score(ref, hyp, ["bleu", "wer"], alignment_path=ali)
    parsed = parse_alignment(ali)
    assert list(parsed) == sorted(REFS)
    for utt, rows in parsed.items():
        assert set(rows) == {"ref", "hyp", "op", "#csid"}
        assert len(rows["ref"]) == len(rows["hyp"]) == len(rows["op"])
        assert [t for t in rows["ref"] if t != "***"] == REFS[utt].split()
        assert [t for t in rows["hyp"] if t != "***"] == HYPS[utt].split()
        assert rows["#csid"] == [str(rows["op"].count(op)) for op in "CSID"]
    assert parsed["utt3"]["op"] == ["D"] * 9 and parsed["utt3"]["hyp"] == ["***"] * 9
    assert parsed["utt4"]["#csid"] == ["2", "0", "0", "0"]
    lines = ali.read_text().splitlines()
    # columns line up: each token starts where the token above it starts
    ref_line, hyp_line = lines[0], lines[1]
    starts = lambda s: [i for i in range(len(s)) if s[i] != " " and (i == 0 or s[i - 1] == " ")]
    assert starts(ref_line) == starts(hyp_line)[: len(starts(ref_line))]
    assert not any(p.name.endswith(".tmp") for p in ali.parent.iterdir())

    score(ref, hyp, ["cer"], alignment_path=ali)  # CER alone: characters
    assert parse_alignment(ali)["utt4"]["ref"] == list("helloworld")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_run_json(files, capsys, tmp_path):
    ref, hyp = files
    ali = tmp_path / "ali"
    args = parse(["--ref", str(ref), "--hyp", str(hyp), "--metrics", "bleu,chrf,ter,wer", "--json",
                  "--alignment", str(ali)])
    assert run(args) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    result = json.loads(out)
    assert set(result) == {"bleu", "chrf", "ter", "len_ratio", "wer", "wer_counts", "n", "signature"}
    assert result == score(ref, hyp, ["bleu", "chrf", "ter", "wer"])
    assert result["n"] == 5 and set(result["signature"]) == {"bleu", "chrf", "ter"}
    assert all(0 <= result[m] <= 100 for m in ("bleu", "chrf", "wer"))
    assert result["wer"] > 1  # percent, not a fraction
    assert ali.is_file()


def test_run_table(files, capsys):
    ref, hyp = files
    assert run(parse(["--ref", str(ref), "--hyp", str(hyp), "--metrics", "bleu,wer"])) == 0
    out = capsys.readouterr().out
    result = score(ref, hyp, ["bleu", "wer"])
    assert out == format_table(result) + "\n"
    assert result["signature"]["bleu"] in out and f"{result['bleu']:.2f}" in out
    assert out.startswith("5 utterances")
    assert parse(["--ref", "r", "--hyp", "h"]).metrics == "bleu"
    with pytest.raises(SystemExit):
        parse(["--ref", "r", "--hyp", "h", "--tokenize", "nope"])


# --- per-utterance statistics and the bootstrap ------------------------------------------------

def corpus(n: int, seed: int, error_rate: float = 0.3) -> tuple[list[str], list[str]]:
    """n random references and a hypothesis of each with about ``error_rate`` of its words replaced."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(40)]
    refs = [" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(n)]
    hyps = [" ".join(w if rng.random() > error_rate else rng.choice(words) for w in r.split()) for r in refs]
    return refs, hyps


def test_statistics_sum_to_the_corpus_scores(files):
    ref, hyp = files
    ids, refs, hyps = read_pairs(ref, hyp)
    result, stats = score_pairs(refs, hyps, list(METRICS))
    assert result == {k: v for k, v in score(ref, hyp, list(METRICS)).items()}
    for name, function in (("bleu", sacrebleu.corpus_bleu), ("chrf", sacrebleu.corpus_chrf),
                           ("ter", sacrebleu.corpus_ter)):
        assert stats[name].shape[0] == len(ids)
        assert score_from_stats(name, stats[name].sum(axis=0))[0] == function(hyps, [refs]).score  # exactly
    for name, counts in (("wer", wer(refs, hyps)), ("cer", cer(refs, hyps))):
        assert stats[name].sum(axis=0).tolist() == [counts.substitutions, counts.deletions, counts.insertions,
                                                    counts.ref_length]
        assert score_from_stats(name, stats[name].sum(axis=0))[0] == counts.rate
        # an utterance's row is its own alignment's counts
        assert stats[name][0].tolist() == list(astuple((wer if name == "wer" else cer)([refs[0]], [hyps[0]])))
    assert score_from_stats("wer", np.array([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 4]])).tolist() == [0.0, 100.0, 50.0]
    with pytest.raises(KdstError, match="no utterances"):
        score_pairs([], [], ["wer"])


def test_resamples_are_numpys_draws_with_replacement():
    counts = resample_counts(7, samples=50, seed=3)
    drawn = np.random.default_rng(3).choice(7, size=(50, 7), replace=True)  # what sacrebleu draws
    assert counts.shape == (50, 7) and (counts.sum(axis=1) == 7).all()
    assert counts.tolist() == [np.bincount(row, minlength=7).tolist() for row in drawn]
    assert not np.array_equal(counts, resample_counts(7, samples=50, seed=4))
    with pytest.raises(KdstError, match="0 resamples of 7 utterances"):
        resample_counts(7, samples=0)


def test_resampled_wer_against_a_plain_loop():
    """Each resample's WER equals kdst's WER of the drawn utterances, scored from their texts."""
    refs, hyps = corpus(12, seed=1)
    _, stats = score_pairs(refs, hyps, ["wer"])
    scores = bootstrap_scores("wer", stats["wer"], resample_counts(12, samples=40, seed=5))
    drawn = np.random.default_rng(5).choice(12, size=(40, 12), replace=True)
    expected = [wer([refs[i] for i in row], [hyps[i] for i in row]).rate for row in drawn]
    assert scores == pytest.approx(expected, abs=1e-9)


def test_resampled_wer_against_exact_enumeration():
    """With 4 utterances every resample is one of 4^4 equally likely draws: the bootstrap's distribution of
    the resampled WER is that exact one, up to sampling noise."""
    errors, lengths = np.array([0, 1, 3, 6]), np.array([5, 4, 6, 8])
    stats = np.stack([errors, 0 * errors, 0 * errors, lengths], axis=1).astype(float)
    exact = np.array([100 * errors[list(d)].sum() / lengths[list(d)].sum()
                      for d in itertools.product(range(4), repeat=4)])
    scores = bootstrap_scores("wer", stats, resample_counts(4, samples=20_000, seed=0))
    for value in np.unique(exact):
        assert np.mean(scores <= value + 1e-9) == pytest.approx(np.mean(exact <= value + 1e-9), abs=0.015)
    low, high = confidence_interval(scores)
    assert (low, high) == (np.sort(scores)[500], np.sort(scores)[19_499])  # sacrebleu's order statistics
    assert np.mean(exact < low) < 0.05 and np.mean(exact > high) < 0.05


def test_bleu_chrf_ter_as_sacrebleus_paired_bootstrap(monkeypatch):
    """The same resamples, scores, intervals and (its formula's) p-values as sacrebleu's own API."""
    refs, base = corpus(60, seed=2, error_rate=0.4)
    _, system = corpus(60, seed=2, error_rate=0.33)
    for seed in (12345, 7):
        monkeypatch.setenv("SACREBLEU_SEED", str(seed))
        _, expected = PairedTest([("base", base), ("system", system)], {"BLEU": BLEU(), "chrF": CHRF(), "TER": TER()},
                                 [refs], test_type="bs", n_samples=1000)()
        counts = resample_counts(60, seed=seed)
        _, base_stats = score_pairs(refs, base, ["bleu", "chrf", "ter"])
        _, stats = score_pairs(refs, system, ["bleu", "chrf", "ter"])
        for name, label in (("bleu", "BLEU"), ("chrf", "chrF2"), ("ter", "TER")):  # sacrebleu names chrF2
            sacre_base, sacre = expected[label]
            resampled = bootstrap_scores(name, stats[name], counts)
            base_resampled = bootstrap_scores(name, base_stats[name], counts)
            delta = score_from_stats(name, stats[name].sum(0))[0] - score_from_stats(name, base_stats[name].sum(0))[0]
            assert delta == sacre.score - sacre_base.score
            assert paired_p_value(delta, resampled - base_resampled, "sacrebleu") == sacre.p_value
            low, high = confidence_interval(resampled)
            assert (resampled.mean(), (high - low) / 2) == pytest.approx((sacre.mean, sacre.ci), rel=1e-6)
            assert 0 < paired_p_value(delta, resampled - base_resampled) <= 1


def wer_stats(errors) -> np.ndarray:
    errors = np.asarray(errors, dtype=float)
    return np.stack([errors, 0 * errors, 0 * errors, np.full_like(errors, 10)], axis=1)


def wer_p_value(errors, base_errors, test: str, seed: int = 0) -> float:
    system, base = wer_stats(errors), wer_stats(base_errors)
    counts = resample_counts(len(errors), seed=seed)
    delta = score_from_stats("wer", system.sum(0))[0] - score_from_stats("wer", base.sum(0))[0]
    return paired_p_value(delta, bootstrap_scores("wer", system, counts) - bootstrap_scores("wer", base, counts), test)


def test_p_values_of_clearly_better_identical_and_equally_good_systems():
    rng = np.random.default_rng(11)
    better, worse = rng.binomial(10, 0.1, 100), rng.binomial(10, 0.3, 100)
    for test in SIGNIFICANCE_TESTS:
        assert wer_p_value(better, worse, test) == 1 / 1001  # the least p 1000 resamples can show
        assert wer_p_value(worse, worse, test) == 1.0  # sacrebleu's own formula would say 1/1001
    # Equally good systems (errors drawn alike): the centred test's p is uniform, sacrebleu's below 0.5.
    pairs = [(rng.binomial(10, 0.2, 100), rng.binomial(10, 0.2, 100)) for _ in range(200)]
    centred = np.array([wer_p_value(a, b, "centred", seed=i) for i, (a, b) in enumerate(pairs)])
    sacre = np.array([wer_p_value(a, b, "sacrebleu", seed=i) for i, (a, b) in enumerate(pairs)])
    assert 0.42 < centred.mean() < 0.58 and 0.3 < np.median(centred) < 0.7 and np.mean(centred < 0.05) < 0.09
    assert sacre.mean() < 0.3 and sacre.max() < 0.6 and (sacre <= centred + 1e-12).mean() > 0.9
    with pytest.raises(KdstError, match="significance test 'koehn'"):
        paired_p_value(1.0, np.zeros(3), "koehn")
