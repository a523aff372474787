"""kdst results: length ratio, ΔBLEU against a baseline, and the PNG charts, on a hand-made exp dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sacrebleu.metrics import BLEU

from kdst.cli import main
from kdst.errors import KdstError
from kdst.report.results import CURVES_PNG, RESULTS_PNG, collect, read_curves
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
