"""kdst results: length ratio, ΔBLEU against a baseline, and the PNG charts, on a hand-made exp dir."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest

from kdst.cli import main
from kdst.errors import KdstError
from kdst.report.results import CURVES_PNG, RESULTS_PNG, collect, read_curves
from kdst.report.significance import Bootstrap
from kdst.report.systems import System, register

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REFS = {
    "utt1": "the cat sat on the mat .",
    "utt2": "it was raining , so we stayed at home",
    "utt3": "a quick brown fox jumps over the lazy dog",
    "utt4": "hello world , how are you today ?",
}
HYPS = {  # "base" drops words, as word-level KD students tend to; "kd" is closer to the references
    "base": {"utt1": "the cat sat", "utt2": "it rained , we stayed home", "utt3": "a fox jumps over the dog",
             "utt4": "hello world"},
    "kd": {"utt1": "the cat sat on the mat", "utt2": "it was raining , so we stayed home",
           "utt3": "a quick brown fox jumps over a lazy dog", "utt4": "hello world , how are you ?"},
}


def write_text(path: Path, texts: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k} {v}\n" for k, v in texts.items()))


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """(exp, data): systems "base" and "kd" decoded on two sets (the same utterances in both)."""
    exp, data = tmp_path / "exp", tmp_path / "data"
    for test_set in ("dev", "tst"):
        write_text(data / test_set / "text", REFS)
        for i, (system, hyps) in enumerate(HYPS.items()):
            write_text(exp / system / f"decode_{test_set}" / "hyp.txt", hyps)
            stats = {"params": 1_000_000 * (i + 1), "sentences_per_s": 10.0 + i}
            (exp / system / f"decode_{test_set}" / "decode_stats.json").write_text(json.dumps(stats))
    return exp, data


def table_column(markdown: str, label: str) -> dict[str, str]:
    """system -> cell of the column ``label`` in a RESULTS.md table."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines()
            if line.startswith("| ")]
    column = rows[0].index(label)
    return {row[0]: row[column] for row in rows[1:]}


def test_len_ratio_delta_bleu_and_results_chart(layout):
    exp, data = layout
    results = collect(exp, data, ["base", "kd"], ["dev"], baseline="base")
    assert json.loads((exp / "results.json").read_text()) == results
    for system, hyps in HYPS.items():
        corpus = BLEU().corpus_score([hyps[k] for k in REFS], [list(REFS.values())])
        assert results[system]["len_ratio"] == round(corpus.sys_len / corpus.ref_len, 4)
        assert results[system]["bleu"] == round(corpus.score, 2)
        assert json.loads((exp / system / "decode_dev" / "score.json").read_text())["len_ratio"] == \
            results[system]["len_ratio"]
    assert results["base"]["len_ratio"] < results["kd"]["len_ratio"] < 1
    markdown = (exp / "RESULTS.md").read_text()
    assert markdown.splitlines()[2] == \
        "| system | BLEU | ΔBLEU | p | chrF | TER | params | sentences/s | RTF | len ratio |"
    delta = results["kd"]["bleu"] - results["base"]["bleu"]
    assert delta > 0
    assert table_column(markdown, "ΔBLEU") == {"base": "+0.00", "kd": f"+{delta:.2f}"}
    assert table_column(markdown, "len ratio")["base"] == f"{results['base']['len_ratio']:.3f}"
    assert (exp / RESULTS_PNG).read_bytes().startswith(PNG_MAGIC)
    assert "![results](results.png)" in markdown
    assert not (exp / CURVES_PNG).exists() and CURVES_PNG not in markdown  # no tensorboard logs

    # The other way round the difference is negative; without a baseline there is no column.
    collect(exp, data, ["base", "kd"], ["dev"], baseline="kd", plots=False)
    assert table_column((exp / "RESULTS.md").read_text(), "ΔBLEU")["base"] == f"-{delta:.2f}"
    collect(exp, data, ["base", "kd"], ["dev"], plots=False)
    assert "ΔBLEU" not in (exp / "RESULTS.md").read_text()


def test_delta_per_set_and_without_bleu(layout):
    exp, data = layout
    results = collect(exp, data, ["base", "kd"], ["dev", "tst"], baseline="base", plots=False)
    deltas = table_column((exp / "RESULTS.md").read_text(), "ΔBLEU")
    assert deltas["base/tst"] == "+0.00"
    assert deltas["kd/tst"] == f"{results['kd/tst']['bleu'] - results['base/tst']['bleu']:+.2f}"
    assert not (exp / RESULTS_PNG).exists()  # plots=False writes none

    results = collect(exp, data, ["base", "kd"], ["dev"], metric_names=["chrf"], baseline="base", plots=False)
    markdown = (exp / "RESULTS.md").read_text()
    assert "ΔBLEU" not in markdown and "len ratio" not in markdown and "len_ratio" not in results["kd"]

    with pytest.raises(KdstError, match="--baseline nope: not among the systems"):
        collect(exp, data, ["base", "kd"], ["dev"], baseline="nope")


def test_training_curves_from_the_trainer_tags(layout, capsys):
    from torch.utils.tensorboard import SummaryWriter

    exp, data = layout
    # The tags kdst.train.trainer writes: train/<stat> every log_interval steps, valid/<stat> per epoch.
    with SummaryWriter(str(exp / "kd" / "tensorboard")) as writer:
        for step in range(10, 70, 10):
            writer.add_scalar("train/loss", 5.0 - step / 20, step)
            writer.add_scalar("train/nll", 4.0 - step / 20, step)
        for step, nll in ((30, 3.5), (60, 3.0)):
            writer.add_scalar("valid/nll", nll, step)
            writer.add_scalar("valid/acc", 0.5, step)
    (exp / "base" / "tensorboard").mkdir()  # a log without the tags: skipped, not an error

    curves = read_curves(exp / "kd" / "tensorboard")
    assert [s for s, _ in curves["train"]] == [10, 20, 30, 40, 50, 60]
    assert curves["train"][0][1] == pytest.approx(4.5) and curves["valid"] == [(30, 3.5), (60, 3.0)]
    assert read_curves(exp / "base" / "tensorboard") == {}

    assert main(["results", "--exp-dir", str(exp), "--data-dir", str(data), "--systems", "base kd",
                 "--sets", "dev", "--baseline", "base"]) == 0
    assert (exp / CURVES_PNG).read_bytes().startswith(PNG_MAGIC)
    printed = capsys.readouterr().out
    assert "![training curves](training_curves.png)" in printed and "| ΔBLEU |" in printed

    # Without any system with curves, a chart left from an earlier run goes (it would not match).
    collect(exp, data, ["base"], ["dev"])
    assert not (exp / CURVES_PNG).exists() and "training_curves" not in (exp / "RESULTS.md").read_text()


# RESULTS.md of this layout (two sets, baseline "base") as the report wrote it before exp/systems.json (and
# still does without the bootstrap)
TABLE_BEFORE_THE_MANIFEST = """\
| system | BLEU | ΔBLEU | chrF | TER | params | sentences/s | RTF | len ratio |
|---|---|---|---|---|---|---|---|---|
| base/dev | 15.98 | +0.00 | 42.12 | 51.52 | 1.00M | 10.0 | - | 0.515 |
| base/tst | 15.98 | +0.00 | 42.12 | 51.52 | 1.00M | 10.0 | - | 0.515 |
| kd/dev | 74.37 | +58.39 | 84.05 | 12.12 | 2.00M | 11.0 | - | 0.909 |
| kd/tst | 74.37 | +58.39 | 84.05 | 12.12 | 2.00M | 11.0 | - | 0.909 |
"""


def test_the_registered_systems_and_the_same_table_as_before(layout, capsys):
    """Without --systems: the systems of exp/systems.json (of --task), in the order they trained."""
    exp, data = layout
    register(exp, System("base", "st", "student", mode="none", arch="st"))
    register(exp, System("mt", "mt", "teacher"))  # not decoded on these sets: left out by --task st
    register(exp, System("kd", "st", "student", mode="word", arch="st"))
    assert main(["results", "--exp-dir", str(exp), "--data-dir", str(data), "--task", "st",
                 "--sets", "dev tst", "--baseline", "base", "--metrics", "bleu,chrf,ter",
                 "--bootstrap-samples", "0"]) == 0  # without intervals and tests: the table as it was
    printed = capsys.readouterr().out
    assert "".join(f"{line}\n" for line in printed.splitlines() if line.startswith("|")) == TABLE_BEFORE_THE_MANIFEST
    assert list(json.loads((exp / "results.json").read_text())) == ["base/dev", "base/tst", "kd/dev", "kd/tst"]
    assert main(["results", "--exp-dir", str(exp), "--data-dir", str(data), "--task", "asr", "--sets", "dev"]) == 1
    assert "lists no asr system: give --systems" in capsys.readouterr().err


def test_results_json_keeps_the_other_systems(layout):
    """A teacher scored in its own stage stays when the students are scored; a system scored again
    loses the keys of its earlier scoring."""
    exp, data = layout
    collect(exp, data, ["base"], ["dev"], plots=False)
    collect(exp, data, ["kd"], ["dev", "tst"], plots=False)
    assert list(json.loads((exp / "results.json").read_text())) == ["base", "kd/dev", "kd/tst"]
    collect(exp, data, ["kd"], ["tst"], plots=False)
    assert list(json.loads((exp / "results.json").read_text())) == ["base", "kd"]


def random_corpus(n: int, seed: int) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """References and four systems' outputs: base (40% of words replaced), kd (15%), same (base's outputs)
    and base2 (40%, other draws)."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(60)]
    refs = {f"utt{i:03d}": " ".join(rng.choices(words, k=rng.randint(4, 14))) for i in range(n)}

    def noisy(rate: float) -> dict[str, str]:
        return {k: " ".join(w if rng.random() > rate else rng.choice(words) for w in r.split())
                for k, r in refs.items()}

    hyps = {"base": noisy(0.4), "kd": noisy(0.15), "base2": noisy(0.4)}
    hyps["same"] = dict(hyps["base"])
    return refs, hyps


def decoded(tmp_path: Path, refs: dict[str, str], hyps: dict[str, dict[str, str]]) -> tuple[Path, Path]:
    exp, data = tmp_path / "exp", tmp_path / "data"
    write_text(data / "tst" / "text", refs)
    for system, texts in hyps.items():
        write_text(exp / system / "decode_tst" / "hyp.txt", texts)
        (exp / system / "decode_tst" / "decode_stats.json").write_text(
            json.dumps({"params": 1_000_000, "sentences_per_s": 10.0}))
    return exp, data


def test_every_row_has_an_interval_and_a_test_against_the_baseline(tmp_path):
    refs, hyps = random_corpus(40, seed=0)
    exp, data = decoded(tmp_path, refs, hyps)
    register(exp, System("base", "st", "student", mode="none"))  # the baseline, found in the manifest
    for name in ("kd", "same", "base2"):
        register(exp, System(name, "st", "student", mode="word"))
    systems = ["base", "kd", "same", "base2"]
    results = collect(exp, data, systems, ["tst"], plots=False)
    ids = sorted(refs)
    texts = {s: [hyps[s][k] for k in ids] for s in systems}
    _, expected = PairedTest([(s, texts[s]) for s in systems], {"BLEU": BLEU(), "chrF2": CHRF()},
                             [[refs[k] for k in ids]], test_type="bs", n_samples=1000)()
    for i, system in enumerate(systems[1:], start=1):
        record = results[system]["significance"]
        assert (record["baseline"], record["paired_with"], record["samples"], record["seed"]) == \
            ("base", "base", 1000, 12345)
        if system != "same":  # sacrebleu calls identical outputs significantly different (p 1/1001)
            assert record["p_sacrebleu"]["bleu"] == round(expected["BLEU"][i].p_value, 4)
            assert record["p_sacrebleu"]["chrf"] == round(expected["chrF2"][i].p_value, 4)
        low, high = record["ci"]["bleu"]
        assert (high - low) / 2 == pytest.approx(expected["BLEU"][i].ci, abs=0.01)
    assert results["kd"]["significance"]["p"]["bleu"] == round(1 / 1001, 4)  # the least 1000 resamples show
    assert results["same"]["significance"]["p"] == {"bleu": 1.0, "chrf": 1.0, "ter": 1.0}
    assert results["base"]["significance"]["p"] is None and results["base"]["significance"]["ci"]["bleu"][0] < \
        results["base"]["bleu"] < results["base"]["significance"]["ci"]["bleu"][1]

    markdown = (exp / "RESULTS.md").read_text()
    assert markdown.splitlines()[2] == \
        "| system | BLEU | ΔBLEU | p | chrF | TER | params | sentences/s | RTF | len ratio |"
    bleu, p = table_column(markdown, "BLEU"), table_column(markdown, "p")
    for system in systems:
        r = results[system]
        mark = "†" if r["significance"]["p"] and r["significance"]["p"]["bleu"] < 0.05 else ""
        assert bleu[system] == "{:.2f} [{:.2f}, {:.2f}]{}".format(r["bleu"], *r["significance"]["ci"]["bleu"], mark)
        assert p[system] == ("-" if system == "base" else f"{r['significance']['p']['bleu']:.3f}")
    assert bleu["kd"].endswith("†") and not bleu["same"].endswith("†") and p["kd"] == "0.001"
    assert table_column(markdown, "TER")["kd"].endswith("†")
    assert "†: differs from base on the same set at p < 0.05; p: its p-value for BLEU." in markdown
    assert "over 1000 resamples of the test utterances (seed 12345)" in markdown


def test_the_centred_test_against_a_plain_loop_over_sacrebleu(tmp_path):
    """The p-value and interval from resampled sentence statistics equal those of sacrebleu's corpus_score run
    on each resample's sentences (200 resamples: a slow loop)."""
    refs, hyps = random_corpus(30, seed=1)
    exp, data = decoded(tmp_path, refs, hyps)
    results = collect(exp, data, ["base", "base2"], ["tst"], baseline="base", plots=False,
                      metric_names=["bleu"], bootstrap=Bootstrap(samples=200, seed=5))
    ids = sorted(refs)
    drawn = np.random.default_rng(5).choice(len(ids), size=(200, len(ids)), replace=True)

    def bleu(system: str, rows) -> float:
        return BLEU().corpus_score([hyps[system][ids[i]] for i in rows], [[refs[ids[i]] for i in rows]]).score

    delta = bleu("base2", range(len(ids))) - bleu("base", range(len(ids)))
    deltas = np.array([bleu("base2", row) - bleu("base", row) for row in drawn])
    expected_p = (np.count_nonzero(np.abs(deltas - deltas.mean()) >= abs(delta)) + 1) / 201
    record = results["base2"]["significance"]
    assert record["p"]["bleu"] == round(expected_p, 4) and record["delta"]["bleu"] == round(delta, 2)
    resampled = np.sort([bleu("base2", row) for row in drawn])
    assert record["ci"]["bleu"] == [round(resampled[5], 2), round(resampled[194], 2)]  # 200 // 40 = 5
    assert record["p"]["bleu"] > 0.05  # two systems of the same quality


def test_seeds_are_one_row_paired_by_seed(tmp_path, capsys):
    refs, hyps = random_corpus(30, seed=2)
    runs = {"base_s2": hyps["base"], "base_s1": hyps["base2"], "kd_s1": hyps["kd"], "kd_s2": hyps["same"]}
    exp, data = decoded(tmp_path, refs, runs)
    for name in runs:  # base_s2 registered first: the pairing goes by seed, not by order
        mode = "none" if name.startswith("base") else "word"
        register(exp, System(name, "st", "student", mode=mode, seed=int(name[-1]), group=name[:-3]))
    assert main(["results", "--exp-dir", str(exp), "--data-dir", str(data), "--sets", "tst", "--metrics", "bleu",
                 "--bootstrap-samples", "300", "--bootstrap-seed", "3", "--significance-test", "sacrebleu"]) == 0
    markdown = capsys.readouterr().out
    results = json.loads((exp / "results.json").read_text())
    assert list(results) == ["base_s2", "base_s1", "kd_s1", "kd_s2"]
    group = results["kd_s2"]["seeds"]
    assert group == results["kd_s1"]["seeds"] and group["group"] == "kd" and group["seeds"] == [1, 2]
    assert group["pairs"] == [["kd_s1", "base_s1"], ["kd_s2", "base_s2"]]
    assert results["kd_s2"]["significance"]["paired_with"] == "base_s2"
    assert results["kd_s2"]["significance"]["p"]["bleu"] == 1.0  # kd_s2's outputs are base_s2's
    bleus = [results["kd_s1"]["bleu"], results["kd_s2"]["bleu"]]
    assert group["mean"]["bleu"] == pytest.approx(np.mean(bleus), abs=0.006)
    assert group["delta"]["bleu"] == pytest.approx(
        np.mean([bleus[0] - results["base_s1"]["bleu"], bleus[1] - results["base_s2"]["bleu"]]), abs=0.011)
    record = results["kd_s1"]["significance"]
    assert (record["samples"], record["seed"], record["test"]) == (300, 3, "sacrebleu")
    assert record["p"] == record["p_sacrebleu"]
    assert markdown.splitlines()[2] == "| system | seeds | BLEU | ΔBLEU | p | params | sentences/s | RTF | len ratio |"
    kd_row = next(line for line in markdown.splitlines() if line.startswith("| kd |"))
    assert kd_row.startswith("| kd | 1 2 | {:.2f} ± {:.2f} [{:.2f}, {:.2f}]".format(
        group["mean"]["bleu"], group["sd"]["bleu"], *group["ci"]["bleu"]))
    assert "mean ± sd: over the seeds of a system" in markdown and "over 300 resamples" in markdown
    assert "sacrebleu 2" in markdown and "|Δ*| − mean |Δ*| > |Δ|" in markdown


def test_each_student_against_the_reference_student_of_its_architecture(tmp_path):
    """Two architectures, each with a student of the references (the RNN-T matrix): no one baseline, so each
    student is tested against its own architecture's, named in the vs column."""
    refs, hyps = random_corpus(40, seed=1)
    hyps = {"a_none": hyps["base"], "a_kd": hyps["kd"], "b_none": hyps["base2"], "b_kd": dict(hyps["base2"]),
            "teacher": hyps["kd"]}
    exp, data = decoded(tmp_path, refs, hyps)
    register(exp, System("teacher", "rnnt", "teacher", arch="teacher"))
    for name in list(hyps)[:4]:
        arch, mode = name.split("_")
        register(exp, System(name, "rnnt", "student", mode="hard" if mode == "kd" else "none", arch=arch))
    results = collect(exp, data, list(hyps), ["tst"], metric_names=["wer"], plots=False)
    alone = collect(exp, data, ["b_none", "b_kd"], ["tst"], metric_names=["wer"], baseline="b_none", plots=False)
    for student, baseline in (("a_kd", "a_none"), ("b_kd", "b_none")):
        assert results[student]["significance"]["baseline"] == baseline
    assert results["b_kd"]["significance"]["p"] == alone["b_kd"]["significance"]["p"]  # the test of that pair
    assert results["b_kd"]["significance"]["p"]["wer"] == 1.0  # b_kd's outputs are b_none's
    assert results["a_kd"]["significance"]["p"]["wer"] < 0.05
    assert results["a_none"]["significance"]["baseline"] is None
    collect(exp, data, list(hyps), ["tst"], metric_names=["wer"], plots=False)
    markdown = (exp / "RESULTS.md").read_text()
    assert markdown.splitlines()[2] == "| system | WER | ΔWER | p | vs | params | sentences/s | RTF |"
    assert table_column(markdown, "vs") == {"a_none": "-", "a_kd": "a_none", "b_none": "-", "b_kd": "b_none",
                                            "teacher": "-"}
    delta = table_column(markdown, "ΔWER")  # the baselines' own rows read +0.00, a row tested against none -
    assert (delta["a_none"], delta["b_none"], delta["teacher"]) == ("+0.00", "+0.00", "-")
    assert delta["a_kd"] == f"{results['a_kd']['significance']['delta']['wer']:+.2f}"
    assert "†: differs from the system in column vs on the same set at p < 0.05" in markdown
