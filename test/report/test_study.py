"""kdst study-report: the table over seeds, the findings' verdicts and the chart, on hand-made exp dirs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import yaml

from kdst.cli import main
from kdst.errors import KdstError
from kdst.report.results import collect
from kdst.report.significance import Bootstrap
from kdst.report.study import (DOES_NOT_HOLD, HOLDS, NOT_MEASURED, NOT_SIGNIFICANT, comparison_verdict,
                               finding_verdict, gain, load_spec, read_invocations, write_report)
from kdst.report.systems import System, register

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("gained, p, verdict", [
    (1.5, 0.01, HOLDS), (-1.5, 0.01, DOES_NOT_HOLD), (1.5, 0.05, NOT_SIGNIFICANT), (-0.2, 0.6, NOT_SIGNIFICANT),
    (0.0, 0.001, NOT_SIGNIFICANT), (None, None, NOT_MEASURED), (1.0, None, NOT_MEASURED)])
def test_comparison_verdicts(gained, p, verdict):
    assert comparison_verdict(gained, p) == verdict


@pytest.mark.parametrize("verdicts, verdict", [
    ([HOLDS], HOLDS), ([HOLDS, HOLDS], HOLDS), ([HOLDS, NOT_SIGNIFICANT], NOT_SIGNIFICANT),
    ([HOLDS, DOES_NOT_HOLD], DOES_NOT_HOLD), ([NOT_MEASURED, DOES_NOT_HOLD], DOES_NOT_HOLD),
    ([HOLDS, NOT_MEASURED], NOT_MEASURED), ([NOT_SIGNIFICANT, NOT_MEASURED], NOT_MEASURED)])
def test_finding_verdicts(verdicts, verdict):
    assert finding_verdict(verdicts) == verdict


def test_which_way_is_better():
    assert gain("higher", 12.0, 10.0) == 2.0 and gain("lower", 12.0, 10.0) == -2.0
    # the length ratio: closer to 1 is better, from either side
    assert gain("closer_to_1", 0.95, 0.80) == pytest.approx(0.15)
    assert gain("closer_to_1", 1.10, 0.85) == pytest.approx(0.05)
    assert gain("closer_to_1", 1.30, 0.85) == pytest.approx(-0.15)


# --- a results.json written by hand: 3 seeds of st_none (the baseline), st_word and st_pt, and a teacher ---

BLEU = {"st_none": [10.0, 11.0, 12.0], "st_word": [12.0, 14.0, 16.0], "st_pt": [11.0, 11.0, 14.0]}
CHRF = {"st_none": [30.0, 31.0, 32.0], "st_word": [33.0, 33.0, 33.0], "st_pt": [28.0, 29.0, 30.0]}
TER = {"st_none": [90.0, 90.0, 90.0], "st_word": [85.0, 86.0, 87.0], "st_pt": [91.0, 91.0, 91.0]}
RATIO = {"st_none": [0.80, 0.85, 0.90], "st_word": [0.70, 0.80, 0.90], "st_pt": [0.95, 0.95, 0.95]}
# what kdst results would have said against st_none (made up, with the signs of the deltas above)
P = {"st_word": {"bleu": 0.002, "chrf": 0.2, "ter": 0.01}, "st_pt": {"bleu": 0.3, "chrf": 0.01, "ter": 0.5}}


def run_name(group: str, seed: int) -> str:
    return group if seed == 1 else f"{group}_s{seed}"


def synthetic_exp(exp: Path) -> None:
    register(exp, System("mt_teacher", "mt", "teacher", arch="mt", seed=1))
    results = {"mt_teacher": {"bleu": 20.0, "chrf": 50.0, "ter": 60.0, "len_ratio": 0.95, "n": 4,
                              "significance": {"samples": 1000, "seed": 12345, "test": "centred",
                                               "ci": {"bleu": [18.0, 22.0], "chrf": [48.0, 52.0], "ter": [58.0, 62.0]},
                                               "baseline": "st_none", "paired_with": "st_none",
                                               "delta": {"bleu": 9.0, "chrf": 19.0, "ter": -30.0},
                                               "p": {"bleu": 0.001, "chrf": 0.001, "ter": 0.001}}}}
    for group, mode in (("st_none", "none"), ("st_word", "word"), ("st_pt", "none")):
        runs = [run_name(group, seed) for seed in (1, 2, 3)]
        scores = {"bleu": BLEU[group], "chrf": CHRF[group], "ter": TER[group]}
        mean = {m: float(np.mean(v)) for m, v in scores.items()}
        record = {"group": group, "runs": runs, "seeds": [1, 2, 3], "mean": mean,
                  "sd": {m: round(float(np.std(v, ddof=1)), 2) for m, v in scores.items()},
                  "ci": {m: [mean[m] - 1.5, mean[m] + 1.5] for m in scores}}
        if group != "st_none":
            record.update(baseline="st_none", pairs=[[r, run_name("st_none", s)] for s, r in enumerate(runs, 1)],
                          delta={m: mean[m] - float(np.mean(scores_of("st_none")[m])) for m in scores}, p=P[group])
        for seed, run in enumerate(runs, start=1):
            register(exp, System(run, "st", "student", mode=mode, arch="st", seed=seed, group=group,
                                 init="exp/asr_pretrain/avg_best5.pt" if group == "st_pt" else None))
            own = {m: v[seed - 1] - scores_of("st_none")[m][seed - 1] for m, v in scores.items()}
            results[run] = {**{m: v[seed - 1] for m, v in scores.items()}, "len_ratio": RATIO[group][seed - 1],
                            "n": 4, "significance": {"samples": 1000, "seed": 12345, "test": "centred",
                                                     "ci": None, "baseline": None if group == "st_none" else "st_none",
                                                     "delta": None if group == "st_none" else own},
                            "seeds": record}
    (exp / "results.json").write_text(json.dumps(results))


def scores_of(group: str) -> dict[str, list[float]]:
    return {"bleu": BLEU[group], "chrf": CHRF[group], "ter": TER[group]}


SPEC = {
    "title": "A study", "set": "tst", "metrics": ["bleu", "chrf"], "rows": ["mt_teacher", "st_none", "st_pt"],
    "findings": [
        {"claim": "word KD helps", "source": "Someone 2019", "tests": [{"system": "st_word", "over": "st_none"}]},
        {"claim": "pre-training helps", "source": "Someone 2020",
         "tests": [{"system": "st_pt", "over": "st_none"}]},
        {"claim": "pre-training helps in chrF", "source": "Someone 2020",
         "tests": [{"system": "st_pt", "over": "st_none", "metric": "chrf"}]},
        {"claim": "word KD lowers TER", "source": "Someone 2021",
         "tests": [{"system": "st_word", "over": "st_none", "metric": "ter"}]},
        {"claim": "both help", "source": "Someone 2022",
         "tests": [{"system": "st_word", "over": ["st_none"]}, {"system": "st_pt", "over": "st_none"}]},
        {"claim": "seq-KD helps", "source": "Someone 2016", "tests": [{"system": "st_seqkd", "over": "st_none"}],
         "comment": "not trained in this study"},
    ],
}


def invocation(started: str, seconds: int, status: int, registered: str, command: str,
               commit: str = "abc123") -> str:
    return "\t".join([started, str(seconds), str(status), commit, "2", "Test CPU @ 2.0GHz", str(7864320),
                      registered, command]) + "\n"


def test_report_of_a_synthetic_study(tmp_path):
    exp = tmp_path / "exp"
    synthetic_exp(exp)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    log = tmp_path / "study.tsv"
    command = "egs/mini/st1/local/study.sh --seeds '1 2 3'"
    log.write_text(invocation("2026-12-01T08:00:00+00:00", 5, 2, "", "study.sh --bad 1") +
                   invocation("2026-12-01T09:00:00+00:00", 600, 130, "mt_teacher st_none", command, "abc") +
                   invocation("2026-12-01T10:00:00+00:00", 3000, 0, "mt_teacher st_none st_word", command))
    out = tmp_path / "docs" / "results" / "study.md"
    found = write_report(exp, spec, out, log)
    text = out.read_text()
    lines = text.splitlines()

    assert lines[0] == "# A study"
    assert "- **Command** (from the repository root): `egs/mini/st1/local/study.sh --seeds '1 2 3'`" in lines
    assert "- **Date**: started 2026-12-01 09:00:00+00:00" in lines
    assert "- **Wall time**: 1 h 0 min 0 s (3600 s) over 2 invocations of the command " \
           "(10 min 0 s (600 s), exit 130; 50 min 0 s (3000 s), exit 0)" in lines
    assert "- **Machine**: 2 cores (`nproc`), Test CPU @ 2.0GHz, 7.5 GiB RAM" in lines
    assert "- **Commit**: abc123 (earlier invocations: abc)" in lines
    assert "- **Reused**: trained before the study began, and not again: mt_teacher st_none" in lines

    results_part = lines[:lines.index("## Findings")]
    table = [[c.strip() for c in line.strip("|").split("|")] for line in results_part if line.startswith("| ")]
    header, body = table[0], {row[0]: dict(zip(table[0], row)) for row in table[1:]}
    assert header == ["system", "seeds", "BLEU", "95% CI", "chrF", "95% CI", "len ratio", "ΔBLEU", "p"]
    assert list(body) == ["`mt_teacher` (teacher)", "`st_none`", "`st_pt`", "`st_word`"]  # the spec's rows first
    none, word, pt = body["`st_none`"], body["`st_word`"], body["`st_pt`"]
    # mean ± sd by hand: 10 11 12 -> 11 ± 1; 12 14 16 -> 14 ± 2; 11 11 14 -> 12 ± sqrt(3); ratios 0.8 0.85 0.9
    assert (none["seeds"], none["BLEU"], none["len ratio"], none["ΔBLEU"], none["p"]) == \
        ("1 2 3", "11.00 ± 1.00", "0.850 ± 0.050", "(baseline)", "-")
    assert (word["BLEU"], word["chrF"], word["len ratio"], word["ΔBLEU"], word["p"]) == \
        ("14.00 ± 2.00†", "33.00 ± 0.00", "0.800 ± 0.100", "+3.00", "0.002")
    assert table[2][3] == "[9.50, 12.50]" and table[4][3] == "[12.50, 15.50]"
    assert (pt["BLEU"], pt["chrF"], pt["len ratio"], pt["p"]) == ("12.00 ± 1.73", "29.00 ± 1.00†", "0.950 ± 0.000",
                                                                  "0.300")
    teacher = body["`mt_teacher` (teacher)"]
    assert (teacher["seeds"], teacher["BLEU"], table[1][3], teacher["len ratio"]) == \
        ("1", "20.00†", "[18.00, 22.00]", "0.950")

    verdicts = {f["claim"]: f["verdict"] for f in found["findings"]}
    assert verdicts == {"word KD helps": HOLDS, "pre-training helps": NOT_SIGNIFICANT,
                        "pre-training helps in chrF": DOES_NOT_HOLD,  # chrF 29 < 31 at p 0.01
                        "word KD lowers TER": HOLDS,  # TER lower is better: 86 < 90 at p 0.01
                        "both help": NOT_SIGNIFICANT, "seq-KD helps": NOT_MEASURED}
    word_kd = found["findings"][0]["outcomes"][0]
    assert (word_kd["value"], word_kd["other_value"], word_kd["delta"], word_kd["p"]) == (14.0, 11.0, 3.0, 0.002)
    assert (word_kd["agreeing"], word_kd["pairs"], word_kd["tested_in"]) == (3, 3, "results.json")
    # a finding rests on its weakest comparison
    assert found["findings"][4]["deciding"]["system"] == "st_pt"
    assert "| word KD helps | Someone 2019 | `st_word` vs `st_none`: BLEU +3.00 | 0.002 | **holds** |" in lines
    assert "| seq-KD helps | Someone 2016 | no result for `st_seqkd` | - | **not measured** |" in lines
    assert "  - `st_word` vs `st_none`, TER (lower is better): 86.00 vs 90.00, Δ -4.00, p 0.010, " \
           "3 of 3 seed pairs the claimed way (tested in results.json)" in lines
    assert "  - `st_seqkd` vs `st_none`, BLEU: not measured (no result for `st_seqkd`)" in lines
    assert "  - Comment (the study's author, not computed): not trained in this study" in lines
    assert "(spec: [spec.yaml](../../spec.yaml))" in text  # a link from the document's folder

    assert (out.parent / "study.png").read_bytes().startswith(PNG_MAGIC)
    assert "![BLEU per system](study.png)" in lines
    assert sorted(p.name for p in out.parent.iterdir()) == ["study.md", "study.png"]  # no temporaries left


def test_a_group_scored_apart_from_its_seeds_is_refused(tmp_path):
    exp = tmp_path / "exp"
    synthetic_exp(exp)
    results = json.loads((exp / "results.json").read_text())
    results["st_word_s2"]["bleu"] = 20.0  # st_word_s2 scored again alone: the group's mean is stale
    (exp / "results.json").write_text(json.dumps(results))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    log = tmp_path / "study.tsv"
    log.write_text(invocation("2026-12-01T10:00:00+00:00", 30, 0, "", "study.sh"))
    with pytest.raises(KdstError, match=r"st_word's mean BLEU 14.00 is not the mean of its runs \(16.00\)"):
        write_report(exp, spec, tmp_path / "out.md", log)


# --- comparisons that results.json has no test for: the paired bootstrap from the hypotheses ----------------

def random_corpus(n: int, seed: int) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """References and six runs: base, kd and short under seeds 1 and 2 (short drops the ends of sentences)."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(40)]
    refs = {f"utt{i:03d}": " ".join(rng.choices(words, k=rng.randint(5, 14))) for i in range(n)}

    def noisy(rate: float, keep: float = 1.0) -> dict[str, str]:
        return {k: " ".join(w if rng.random() > rate else rng.choice(words)
                            for w in r.split()[:max(1, round(keep * len(r.split())))]) for k, r in refs.items()}

    return refs, {"base": noisy(0.4), "base_s2": noisy(0.4), "kd": noisy(0.2), "kd_s2": noisy(0.25),
                  "short": noisy(0.2, keep=0.7), "short_s2": noisy(0.2, keep=0.8)}


def decoded_exp(tmp_path: Path) -> tuple[Path, Path, dict, dict]:
    refs, hyps = random_corpus(30, seed=4)
    exp, data = tmp_path / "exp", tmp_path / "data"
    (data / "tst").mkdir(parents=True)
    (data / "tst" / "text").write_text("".join(f"{k} {v}\n" for k, v in refs.items()))
    for run, texts in hyps.items():
        decode = exp / run / "decode_tst"
        decode.mkdir(parents=True)
        (decode / "hyp.txt").write_text("".join(f"{k} {v}\n" for k, v in texts.items()))
        (decode / "decode_stats.json").write_text(json.dumps({"params": 1000, "sentences_per_s": 1.0}))
        group = run.removesuffix("_s2")
        register(exp, System(run, "st", "student", mode="none" if group == "base" else "word",
                             seed=2 if run.endswith("_s2") else 1, group=group))
    return exp, data, refs, hyps


def test_comparisons_beside_the_baseline_are_kdst_results_tests(tmp_path):
    exp, data, refs, hyps = decoded_exp(tmp_path)
    bootstrap = Bootstrap(samples=300, seed=7)
    collect(exp, data, list(hyps), ["tst"], baseline="base", metric_names=["bleu", "chrf"], plots=False,
            bootstrap=bootstrap)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"title": "t", "set": "tst", "metrics": ["bleu", "chrf"], "findings": [
        {"claim": "kd beats base", "source": "s", "tests": [{"system": "kd", "over": "base"}]},
        {"claim": "kd beats short", "source": "s", "tests": [{"system": "kd", "over": "short", "metric": "chrf"}]},
        {"claim": "kd is longer than short", "source": "s",
         "tests": [{"system": "kd", "over": "short", "metric": "len_ratio"}]}]}))
    log = tmp_path / "study.tsv"
    log.write_text(invocation("2026-12-01T10:00:00+00:00", 30, 0, "", "study.sh"))
    found = write_report(exp, spec, tmp_path / "out.md", log)
    against_base, against_short, length = (f["outcomes"][0] for f in found["findings"])
    assert against_base["tested_in"] == "results.json"
    assert against_short["tested_in"] == "the hypotheses" == length["tested_in"]

    # kd against short is what kdst results gives with short as the baseline
    again = collect(exp, data, list(hyps), ["tst"], baseline="short", metric_names=["bleu", "chrf"], plots=False,
                    bootstrap=bootstrap)
    record = again["kd"]["seeds"]
    assert record["pairs"] == [["kd", "short"], ["kd_s2", "short_s2"]]
    assert against_short["p"] == record["p"]["chrf"]
    assert round(against_short["delta"], 2) == record["delta"]["chrf"]
    assert round(against_short["value"], 2) == pytest.approx(record["mean"]["chrf"], abs=0.005)

    # the length ratio by hand: the tokens are the words; each seed's pair over the same 300 resamples
    ids = list(refs)
    drawn = np.random.default_rng(7).choice(len(ids), size=(300, len(ids)), replace=True)

    def ratio(run: str, rows) -> float:
        return sum(len(hyps[run][ids[i]].split()) for i in rows) / sum(len(refs[ids[i]].split()) for i in rows)

    def closer(a: str, b: str, rows) -> float:
        return abs(1 - ratio(b, rows)) - abs(1 - ratio(a, rows))

    everything = range(len(ids))
    observed = np.mean([closer("kd", "short", everything), closer("kd_s2", "short_s2", everything)])
    resampled = np.array([np.mean([closer("kd", "short", row), closer("kd_s2", "short_s2", row)]) for row in drawn])
    p = (np.count_nonzero(np.abs(resampled - resampled.mean()) >= abs(observed)) + 1) / 301
    assert length["p"] == round(p, 4)
    assert length["value"] == pytest.approx((ratio("kd", everything) + ratio("kd_s2", everything)) / 2)
    assert length["other_value"] == pytest.approx((ratio("short", everything) + ratio("short_s2", everything)) / 2)
    assert length["other_value"] < length["value"] <= 1.0 and length["verdict"] == HOLDS
    assert length["agreeing"] == 2


def test_hypotheses_that_no_longer_give_results_json_are_refused(tmp_path):
    exp, data, refs, hyps = decoded_exp(tmp_path)
    collect(exp, data, list(hyps), ["tst"], baseline="base", metric_names=["bleu"], plots=False,
            bootstrap=Bootstrap(samples=50))
    (exp / "kd" / "decode_tst" / "hyp.txt").write_text("".join(f"{k} w1\n" for k in refs))  # decoded again
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"title": "t", "set": "tst", "metrics": ["bleu"], "findings": [
        {"claim": "kd beats short", "source": "s", "tests": [{"system": "kd", "over": "short"}]}]}))
    log = tmp_path / "study.tsv"
    log.write_text(invocation("2026-12-01T10:00:00+00:00", 30, 0, "", "study.sh"))
    with pytest.raises(KdstError, match=r"kd/decode_tst/hyp.txt: BLEU .* results.json says .* \(run kdst results "
                                        r"again\)"):
        write_report(exp, spec, tmp_path / "out.md", log)


# --- inputs ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, message", [
    ({"title": "t", "set": "s", "metrics": ["bleu"], "findings": [
        {"claim": "c", "source": "s", "tests": [{"system": "a", "ovr": "b"}]}]},
     "findings[0].tests[0].ovr: unknown key (did you mean findings[0].tests[0].over?)"),
    ({"title": "t", "set": "s", "metrics": ["blue"]}, "metrics: 'blue' is none of bleu, chrf, ter, wer, cer"),
    ({"title": "t", "set": "s", "metrics": ["bleu"], "findings": [
        {"claim": "c", "source": "s", "tests": [{"system": "a", "over": "b", "metric": "len"}]}]},
     "findings[0].tests[0].metric: 'len' is none of bleu, chrf, ter, wer, cer, len_ratio"),
    ({"title": "t", "set": "s", "metrics": ["bleu"], "findings": [{"claim": "c", "source": "s", "tests": []}]},
     "findings[0].tests: a finding needs at least one comparison"),
    ({"title": "t", "metrics": ["bleu"]}, "set: missing (this key has no default)"),
])
def test_bad_specs_are_one_line_naming_the_key(tmp_path, raw, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    with pytest.raises(KdstError) as e:
        load_spec(spec)
    assert str(e.value) == f"{spec}: {message}"


def test_the_recipes_specs_load():
    for name in ("mini_st1", "mini_asr1", "mini_rnnt1"):
        spec = load_spec(REPO / "docs" / "results" / "findings" / f"{name}.yaml")
        assert spec.findings and spec.set == "tst-COMMON"


def test_a_bad_invocation_log_names_its_line(tmp_path):
    log = tmp_path / "study.tsv"
    log.write_text(invocation("2026-12-01T10:00:00+00:00", 30, 0, "", "study.sh") + "2026\t30\t0\n")
    with pytest.raises(KdstError, match=r"study.tsv:2: 3 tab-separated fields, expected 9"):
        read_invocations(log)
    log.write_text(invocation("2026-12-01T10:00:00+00:00", 30, 0, "", "study.sh").replace("\t30\t", "\tlong\t"))
    with pytest.raises(KdstError, match=r"study.tsv:1: seconds, exit, nproc and mem_kb are whole numbers"):
        read_invocations(log)


def test_the_command_line(tmp_path, capsys):
    exp = tmp_path / "exp"
    synthetic_exp(exp)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    log = tmp_path / "study.tsv"
    log.write_text(invocation("2026-12-01T10:00:00+00:00", 30, 0, "", "study.sh"))
    out = tmp_path / "study.md"
    assert main(["study-report", "--exp-dir", str(exp), "--findings", str(spec), "--invocations", str(log),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "holds: word KD helps" and printed[-1] == f"{out}: written"
    assert main(["study-report", "--exp-dir", str(tmp_path / "none"), "--findings", str(spec), "--invocations",
                 str(log), "--out", str(out)]) == 1
    assert "results.json: missing (run kdst results first)" in capsys.readouterr().err
