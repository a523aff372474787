"""kdst.report.significance: groups of seeds, pairing, the baseline, the summaries and their cells."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest

from kdst.errors import KdstError
from kdst.report import significance
from kdst.report.significance import Bootstrap, Resamples, Row, groups, pairs, resolve_baseline, rows, summarise
from kdst.report.systems import System

LENGTH = 10  # words of every reference utterance in these tests


def wer_stats(errors) -> np.ndarray:
    """kdst.metrics' per-utterance WER statistics: (substitutions, deletions, insertions, reference length)."""
    errors = np.asarray(errors, dtype=float)
    return np.stack([errors, 0 * errors, 0 * errors, np.full_like(errors, LENGTH)], axis=1)


def loop_wer(errors, drawn) -> np.ndarray:
    """WER of every resample (rows of utterance indices), in a plain loop."""
    errors = np.asarray(errors)
    return np.array([100 * errors[row].sum() / (LENGTH * len(row)) for row in drawn])


REGISTERED = [System("none_s2", "st", "student", seed=2, group="none"),  # registered out of seed order
              System("none_s1", "st", "student", seed=1, group="none"),
              System("word_s1", "st", "student", mode="word", seed=1, group="word"),
              System("word_s2", "st", "student", mode="word", seed=2, group="word"),
              System("word_s3", "st", "student", mode="word", seed=3, group="word"),
              System("teacher", "mt", "teacher")]


def test_groups_rows_and_pairs_by_seed():
    names = ["teacher", "word_s1", "none_s2", "word_s2", "none_s1", "word_s3", "other"]
    grouped = groups(names, REGISTERED)
    assert grouped == {"teacher": ["teacher"], "word": ["word_s1", "word_s2", "word_s3"],
                       "none": ["none_s2", "none_s1"], "other": ["other"]}  # "other": not registered
    table = {r.name: r for r in rows(grouped, REGISTERED, key=lambda s: f"{s}/tst")}
    assert table["word"] == Row("word", ("word_s1/tst", "word_s2/tst", "word_s3/tst"), (1, 2, 3))
    assert table["other"] == Row("other", ("other/tst",), (None,))
    # each seed with the baseline's run of the same seed; seed 3 has none, so it is left out
    assert pairs(table["word"], table["none"]) == [("word_s1/tst", "none_s1/tst"), ("word_s2/tst", "none_s2/tst")]
    # a baseline trained once is every seed's partner
    assert pairs(table["word"], table["teacher"]) == [(r, "teacher/tst") for r in table["word"].runs]


def test_the_baseline_given_registered_or_the_one_plain_student():
    names = ["teacher", "none_s1", "none_s2", "word_s1"]
    assert resolve_baseline(None, names, REGISTERED, "exp") == "none"  # the one group of mode none
    assert resolve_baseline("word_s1", names, REGISTERED, "exp") == "word"  # a system: its group
    assert resolve_baseline("teacher", names, REGISTERED, "exp") == "teacher"
    assert resolve_baseline(None, ["teacher", "word_s1"], REGISTERED, "exp") is None
    assert resolve_baseline(None, names, [], "exp") is None  # nothing registered
    marked = [dataclasses.replace(s, baseline=True) if s.name == "word_s1" else s for s in REGISTERED]
    assert resolve_baseline(None, names, marked, "exp") == "word"
    two_plain = [*REGISTERED, System("pt", "st", "student", mode="none")]
    assert resolve_baseline(None, [*names, "pt"], two_plain, "exp") is None  # which one? none
    fine_tuned = [*REGISTERED, System("none_ft", "st", "student", mode="none", init="exp/none_s1/avg.pt")]
    assert resolve_baseline(None, [*names, "none_ft"], fine_tuned, "exp") == "none"
    with pytest.raises(KdstError, match="--baseline nope: not among the systems"):
        resolve_baseline("nope", names, REGISTERED, "exp")
    two_marked = [System("a", "st", "student", baseline=True), System("b", "st", "student", baseline=True)]
    with pytest.raises(KdstError, match="exp/systems.json: 2 baselines registered among the systems \\(a b\\)"):
        resolve_baseline(None, ["a", "b"], two_marked, "exp")


def test_each_architecture_its_reference_student_where_no_one_baseline_is():
    """The RNN-T matrix: a none student per architecture, so resolve_baseline finds none; each student is then
    tested against the none student of its own architecture, which itself has no baseline."""
    registered = [System("teacher", "rnnt", "teacher", arch="teacher"),
                  *(System(f"{arch}_{mode}", "rnnt", "student", mode=mode, arch=arch)
                    for arch in ("same", "streaming") for mode in ("none", "hard", "soft-full")),
                  System("same_none_s2", "rnnt", "student", mode="none", arch="same", seed=2, group="same_none"),
                  System("ns_gen1", "rnnt", "noisy-student", mode="hard+soft", arch="same"),
                  System("tiny_hard", "rnnt", "student", mode="hard", arch="tiny")]  # no reference student
    names = [s.name for s in registered]
    assert resolve_baseline(None, names, registered, "exp") is None
    assert significance.arch_baselines(names, registered) == {
        "same_hard": "same_none", "same_soft-full": "same_none",
        "streaming_hard": "streaming_none", "streaming_soft-full": "streaming_none"}
    # two reference students of one architecture: which one is not said, so none is chosen for it
    twice = [*registered, System("same_none_pt", "rnnt", "student", mode="none", arch="same")]
    assert set(significance.arch_baselines([*names, "same_none_pt"], twice)) == {"streaming_hard",
                                                                                "streaming_soft-full"}


def test_a_group_summary_against_a_plain_loop():
    """Mean ± sd over the seeds; the interval of the mean over seeds; the test of the mean difference over
    (run, same-seed baseline run) pairs — all from the same resamples."""
    rng = np.random.default_rng(0)
    errors = {name: rng.binomial(LENGTH, rate, 30) for name, rate in
              (("none_s1", 0.3), ("none_s2", 0.35), ("word_s1", 0.2), ("word_s2", 0.22), ("word_s3", 0.1))}
    res = Resamples(Bootstrap(samples=500, seed=9))
    for name, e in errors.items():
        res.add(name, {"wer": wer_stats(e)})
    word = Row("word", ("word_s1", "word_s2", "word_s3"), (1, 2, 3))
    none = Row("none", ("none_s2", "none_s1"), (2, 1))
    summary = summarise(res, word, none, ["wer"])

    drawn = np.random.default_rng(9).choice(30, size=(500, 30), replace=True)
    wer = {name: 100 * e.sum() / (LENGTH * 30) for name, e in errors.items()}
    resampled = {name: loop_wer(e, drawn) for name, e in errors.items()}
    means = [wer[r] for r in word.runs]
    assert summary["mean"]["wer"] == round(np.mean(means), 2)
    assert summary["sd"]["wer"] == round(np.std(means, ddof=1), 2)
    mean_resampled = np.sort(np.mean([resampled[r] for r in word.runs], axis=0))
    assert summary["ci"]["wer"] == [round(mean_resampled[12], 2), round(mean_resampled[487], 2)]  # 500 // 40 = 12
    assert summary["pairs"] == [["word_s1", "none_s1"], ["word_s2", "none_s2"]]  # word_s3: no seed-3 baseline
    delta = np.mean([wer["word_s1"] - wer["none_s1"], wer["word_s2"] - wer["none_s2"]])
    deltas = np.mean([resampled["word_s1"] - resampled["none_s1"], resampled["word_s2"] - resampled["none_s2"]], axis=0)
    assert summary["delta"]["wer"] == round(delta, 2)
    assert summary["p"]["wer"] == round((np.count_nonzero(np.abs(deltas - deltas.mean()) >= abs(delta)) + 1) / 501, 4)
    sacre = (np.count_nonzero(np.abs(deltas) - np.abs(deltas).mean() > abs(delta)) + 1) / 501
    assert summary["p_sacrebleu"]["wer"] == round(sacre, 4)
    assert summary["p"]["wer"] < 0.05 and significance.significant(summary, "wer")

    # the baseline's own row: no test; no pair at all: no numbers
    assert summarise(res, none, none, ["wer"]).keys() == {"runs", "seeds", "mean", "sd", "ci"}
    lonely = summarise(res, Row("word_s3", ("word_s3",), (3,)), none, ["wer"])
    assert (lonely["pairs"], lonely["delta"], lonely["p"]) == ([], None, None) and "sd" not in lonely
    # with the marks from sacrebleu's formula
    sacre_res = Resamples(Bootstrap(samples=500, seed=9, test="sacrebleu"))
    for name, e in errors.items():
        sacre_res.add(name, {"wer": wer_stats(e)})
    assert summarise(sacre_res, word, none, ["wer"])["p"]["wer"] == round(sacre, 4)


def test_without_the_bootstrap_means_only():
    res = Resamples(Bootstrap(samples=0))
    res.add("a", {"wer": wer_stats([1, 2])})
    res.add("b", {"wer": wer_stats([2, 2])})
    summary = summarise(res, Row("a", ("a",), (None,)), Row("b", ("b",), (None,)), ["wer"])
    assert summary == {"runs": ["a"], "seeds": [None], "mean": {"wer": 15.0}, "baseline": "b", "pairs": [["a", "b"]],
                       "delta": {"wer": -5.0}}
    assert significance.value_cell(summary, "wer") == "15.00" and significance.p_cell(summary, "wer") == "-"
    assert significance.footnote(Bootstrap(samples=0), "b") == \
        ["No confidence intervals or significance tests (--bootstrap-samples 0)."]
    with pytest.raises(KdstError, match="1 utterances scored where the other systems of its set have 2"):
        res.add("c", {"wer": wer_stats([1])})


def test_cells_and_footnote():
    summary = {"runs": ["x"], "seeds": [1, 2], "mean": {"bleu": 12.3456}, "sd": {"bleu": 0.4},
               "ci": {"bleu": [11.0, 13.554]}, "baseline": "base", "delta": {"bleu": 1.5}, "p": {"bleu": 0.0123}}
    assert significance.value_cell(summary, "bleu") == "12.35 ± 0.40 [11.00, 13.55]†"
    assert significance.value_cell({**summary, "p": {"bleu": 0.05}}, "bleu") == "12.35 ± 0.40 [11.00, 13.55]"
    assert significance.delta_cell(summary, "bleu") == "+1.50" and significance.p_cell(summary, "bleu") == "0.012"
    assert significance.delta_cell({"mean": {}}, "bleu") == "+0.00"  # the baseline's own row
    assert significance.seeds_cell(summary) == "1 2" and significance.seeds_cell({"seeds": [None]}) == "-"
    lines = significance.footnote(Bootstrap(samples=200, seed=4), "base", p_metric="bleu", seeds=True)
    assert lines[0].startswith("[low, high]: 95% confidence interval") and "200 resamples" in lines[0]
    assert "seed 4" in lines[0] and lines[1].startswith("†: differs from base at p < 0.05; p: its p-value for BLEU")
    assert "|Δ* − mean Δ*| ≥ |Δ|" in lines[1] and lines[2].startswith("mean ± sd: over the seeds")
    assert "|Δ*| − mean |Δ*| > |Δ|" in significance.footnote(Bootstrap(test="sacrebleu"), "base")[1]


def test_options():
    parser = argparse.ArgumentParser()
    significance.add_arguments(parser)
    assert significance.from_args(parser.parse_args([])) == Bootstrap(1000, 12345, "centred")
    args = parser.parse_args(["--bootstrap-samples", "50", "--bootstrap-seed", "3", "--significance-test", "sacrebleu"])
    assert significance.from_args(args) == Bootstrap(50, 3, "sacrebleu")
    assert Bootstrap().record() == {"samples": 1000, "seed": 12345, "test": "centred", "level": 0.05,
                                    "sacrebleu": __import__("sacrebleu").__version__}
    for bad, message in (({"samples": -1}, "--bootstrap-samples -1"), ({"seed": -2}, "--bootstrap-seed -2"),
                         ({"test": "ar"}, "--significance-test ar: one of centred, sacrebleu")):
        with pytest.raises(KdstError, match=message):
            Bootstrap(**bad)
