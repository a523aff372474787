"""kdst compression: the teacher/student ratios, RESULTS.md and the chart, on a hand-made exp dir."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from kdst.errors import KdstError
from kdst.report import compression
from kdst.report.compression import COMPRESSION_PNG, collect_compression, student_modes
from kdst.report.significance import Bootstrap
from kdst.report.systems import System, read_systems, register

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REFS = {"utt1": "the cat sat on the mat", "utt2": "it is raining today"}  # 10 words, 17 + 16 characters
HYPS = {  # word errors in comments
    "asr_teacher": {"utt1": "the cat sat on a mat", "utt2": "it is raining today"},  # 1 sub: 10%
    "asr_small_gold": {"utt1": "the cat sat on mat", "utt2": "it is rain today"},  # 1 del, 1 sub: 20%
    "asr_tiny_gold": {"utt1": "the cat sat on mat", "utt2": "it raining to day"},  # 2 del, 1 sub, 1 ins: 40%
    "asr_tiny_1best": {"utt1": "a cat sat on the mat", "utt2": "it is raining"},  # 1 sub, 1 del: 20%
}
PARAMS = {"asr_teacher": 40_000_000, "asr_small_gold": 10_000_000, "asr_tiny_gold": 2_500_000,
          "asr_tiny_1best": 2_500_000}
SPEED = {"asr_teacher": 5.0, "asr_small_gold": 12.5, "asr_tiny_gold": 20.0, "asr_tiny_1best": 20.0}
CHECKPOINT_BYTES = {"asr_teacher": 2_000_000, "asr_small_gold": 500_000, "asr_tiny_gold": 250_000}
CONDITIONS = {"device": "cpu", "jobs": 4, "threads": 1, "beam": 10}
STUDENTS = ["asr_tiny_gold", "asr_small_gold", "asr_tiny_1best"]  # the order of RESULTS.md after the teacher
# What the recipe's training stages register in exp/systems.json: (role, size, mode)
LABELS = {"asr_teacher": ("teacher", "big", "none"), "asr_small_gold": ("student", "small", "gold"),
          "asr_tiny_gold": ("student", "tiny", "gold"), "asr_tiny_1best": ("student", "tiny", "1best")}


def write_text(path: Path, texts: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k} {v}\n" for k, v in texts.items()))


def write_stats(exp: Path, system: str, **changes) -> None:
    stats = {"utterances": 2, "seconds": 0.4, "sentences_per_s": SPEED[system], "params": PARAMS[system],
             "rtf": 0.05, **CONDITIONS, **changes}
    (exp / system / "decode_test" / "decode_stats.json").write_text(json.dumps(stats))


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """(exp, data): a teacher and three students decoded on data/test.

    The checkpoints are sparse files of known sizes: the teacher's by absolute path, asr_small_gold's
    relative to the recipe dir (exp's parent); asr_tiny_gold's path names a deleted file and
    asr_tiny_1best's stats name none (both estimated from the parameters).
    """
    exp, data = tmp_path / "exp", tmp_path / "data"
    write_text(data / "test" / "text", REFS)
    for system, hyps in HYPS.items():
        write_text(exp / system / "decode_test" / "hyp.txt", hyps)
        checkpoint = {}
        if system in CHECKPOINT_BYTES:
            path = exp / system / "model.avg.pt"
            with open(path, "wb") as f:
                f.truncate(CHECKPOINT_BYTES[system])
            checkpoint = {"checkpoint": str(path.relative_to(tmp_path) if system == "asr_small_gold" else path)}
        write_stats(exp, system, **checkpoint)
    (exp / "asr_tiny_gold" / "model.avg.pt").unlink()  # gone since decoding
    for system, (role, size, mode) in LABELS.items():
        register(exp, System(system, "asr", role, mode=mode, arch=size, exp_dir=str(exp / system)))
    return exp, data


def table(markdown: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """(header, {system: {column: cell}}) of the RESULTS.md table."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines()
            if line.startswith("| ")]
    return rows[0], {row[0]: dict(zip(rows[0], row)) for row in rows[1:]}


def test_ratios_against_the_teacher(layout, monkeypatch):
    exp, data = layout
    monkeypatch.chdir(exp / "asr_teacher")  # not the recipe dir: a relative checkpoint is found from exp's parent
    results = collect_compression(exp, data, STUDENTS[:1] + ["asr_teacher"] + STUDENTS[1:], "asr_teacher", "test")
    assert list(results) == ["asr_teacher", *STUDENTS]
    assert json.loads((exp / "results.json").read_text()) == results
    assert json.loads((exp / "asr_tiny_gold" / "decode_test" / "score.json").read_text())["wer"] == 40.0

    assert {s: r["wer"] for s, r in results.items()} == \
        {"asr_teacher": 10.0, "asr_small_gold": 20.0, "asr_tiny_gold": 40.0, "asr_tiny_1best": 20.0}
    assert results["asr_teacher"]["cer"] == round(100 * 3 / 33, 2)  # "the" -> "a": 3 character edits
    teacher = results["asr_teacher"]
    assert (teacher["param_reduction"], teacher["size_reduction"], teacher["speedup"]) == (1.0, 1.0, 1.0)
    assert (teacher["wer_abs_change"], teacher["wer_rel_change"]) == (0.0, 0.0)
    assert teacher["size_mb"] == 2.0 and teacher["size_estimated"] is False and teacher["n"] == 2

    small, tiny, tiny_1best = (results[s] for s in ("asr_small_gold", "asr_tiny_gold", "asr_tiny_1best"))
    assert (small["param_reduction"], tiny["param_reduction"], tiny_1best["param_reduction"]) == (4.0, 16.0, 16.0)
    assert (small["size_mb"], small["size_estimated"], small["size_reduction"]) == (0.5, False, 4.0)
    # Gone or never named: estimated as 4 bytes per parameter, 10 MB, i.e. 0.2 × the teacher's 2 MB file.
    for student in (tiny, tiny_1best):
        assert (student["size_mb"], student["size_estimated"], student["size_reduction"]) == (10.0, True, 0.2)
    assert (small["speedup"], tiny["speedup"]) == (2.5, 4.0)
    assert (small["wer_abs_change"], small["wer_rel_change"]) == (10.0, 100.0)
    assert (tiny["wer_abs_change"], tiny["wer_rel_change"]) == (30.0, 300.0)
    assert small["rtf"] == 0.05 and small["decode"] == CONDITIONS

    markdown = (exp / "RESULTS.md").read_text()
    header, rows = table(markdown)
    assert header == ["system", "params", "× smaller", "size MB", "WER", "ΔWER abs", "ΔWER rel %", "p", "vs", "CER",
                      "sentences/s", "RTF", "speed-up"]
    assert list(rows) == ["asr_teacher", *STUDENTS]

    def with_ci(system: str, metric: str) -> str:
        r = results[system]
        return "{:.2f} [{:.2f}, {:.2f}]".format(r[metric], *r["significance"]["ci"][metric])

    assert rows["asr_teacher"] == {
        "system": "asr_teacher", "params": "40.00M", "× smaller": "1.00×", "size MB": "2.00",
        "WER": with_ci("asr_teacher", "wer"), "ΔWER abs": "+0.00", "ΔWER rel %": "+0.0", "p": "-", "vs": "-",
        "CER": with_ci("asr_teacher", "cer"), "sentences/s": "5.0", "RTF": "0.050", "speed-up": "1.00×"}
    for system, row in rows.items():  # the table says what results.json says
        r = results[system]
        assert row["params"] == f"{r['params'] / 1e6:.2f}M" and row["× smaller"] == f"{r['param_reduction']:.2f}×"
        assert row["size MB"] == ("~" if r["size_estimated"] else "") + f"{r['size_mb']:.2f}"
        assert (row["WER"], row["CER"]) == (with_ci(system, "wer"), with_ci(system, "cer"))  # 2 utterances: no mark
        assert row["ΔWER abs"] == f"{r['wer_abs_change']:+.2f}" and row["ΔWER rel %"] == f"{r['wer_rel_change']:+.1f}"
        assert row["sentences/s"] == f"{r['sentences_per_s']:.1f}" and row["speed-up"] == f"{r['speedup']:.2f}×"
    assert rows["asr_tiny_gold"]["size MB"] == "~10.00" and rows["asr_tiny_gold"]["ΔWER rel %"] == "+300.0"
    assert "Decoded with device cpu, jobs 4, threads 1, beam 10." in markdown and "Warning" not in markdown
    assert (exp / COMPRESSION_PNG).read_bytes().startswith(PNG_MAGIC)
    assert markdown.rstrip().endswith("![compression](compression.png)")
    # The chart's lines: the registered students by mode (in the given order), the teacher apart.
    registered = read_systems(exp)
    assert student_modes(registered, results, "asr_teacher") == \
        ({"gold": ["asr_tiny_gold", "asr_small_gold"], "1best": ["asr_tiny_1best"]}, [])
    # The mode is the manifest's, whatever the name says; a system it lacks is one of the others.
    registered.append(System("weighted5", "asr", "student", mode="nbest_weighted", arch="tiny"))
    assert student_modes(registered, ["asr_teacher", "baseline", "weighted5"], "asr_teacher") == \
        ({"nbest_weighted": ["weighted5"]}, ["baseline"])


def test_zero_wer_teacher_has_no_relative_change(layout):
    exp, data = layout
    write_text(exp / "asr_teacher" / "decode_test" / "hyp.txt", REFS)
    results = collect_compression(exp, data, ["asr_teacher", "asr_small_gold"], "asr_teacher", "test", plots=False)
    assert results["asr_teacher"]["wer"] == 0.0
    assert results["asr_small_gold"]["wer_abs_change"] == 20.0 and results["asr_small_gold"]["wer_rel_change"] is None
    assert results["asr_teacher"]["wer_rel_change"] is None
    markdown = (exp / "RESULTS.md").read_text()
    assert table(markdown)[1]["asr_small_gold"]["ΔWER rel %"] == "-"
    assert not (exp / COMPRESSION_PNG).exists() and COMPRESSION_PNG not in markdown


def test_mismatched_decode_conditions_warn(layout):
    exp, data = layout
    write_stats(exp, "asr_small_gold", threads=4, device="cuda")
    (exp / "asr_tiny_gold" / "decode_test" / "decode_stats.json").write_text(json.dumps(
        {"sentences_per_s": 20.0, "params": 2_500_000, "device": "cpu", "beam": 10}))  # one job, threads unknown
    results = collect_compression(exp, data, ["asr_teacher", "asr_small_gold", "asr_tiny_gold"], "asr_teacher",
                                  "test", metric_names=["wer"], plots=False)
    assert results["asr_tiny_gold"]["decode"] == {"device": "cpu", "jobs": 1, "threads": None, "beam": 10}
    assert results["asr_tiny_gold"]["rtf"] is None and "cer" not in results["asr_tiny_gold"]
    markdown = (exp / "RESULTS.md").read_text()
    assert "(device, jobs, threads differ): the speed columns (sentences/s, RTF, speed-up) are not comparable" \
        in markdown
    assert "- asr_small_gold: device cuda, jobs 4, threads 4, beam 10" in markdown
    assert "- asr_tiny_gold: device cpu, jobs 1, threads ?, beam 10" in markdown
    header, rows = table(markdown)
    assert "CER" not in header and rows["asr_tiny_gold"]["RTF"] == "-"


def test_unknown_teacher_and_missing_files(layout):
    exp, data = layout
    with pytest.raises(KdstError, match="--teacher asr_big: not among the systems"):
        collect_compression(exp, data, ["asr_teacher", "asr_tiny_gold"], "asr_big", "test")
    assert not list(exp.glob("*/decode_test/score.json"))  # failed before any scoring
    for name in ("decode_stats.json", "hyp.txt"):
        (exp / "asr_tiny_1best" / "decode_test" / name).unlink()
        with pytest.raises(KdstError, match=f"asr_tiny_1best/decode_test/{name}: missing \\(run the decoding stage"):
            collect_compression(exp, data, ["asr_teacher", "asr_tiny_1best"], "asr_teacher", "test")
    assert not list(exp.glob("*/decode_test/score.json")) and not (exp / "results.json").exists()
    with pytest.raises(KdstError, match="needs WER"):
        collect_compression(exp, data, ["asr_teacher"], "asr_teacher", "test", metric_names=["cer"])


def test_command_line(layout, capsys):
    exp, data = layout
    parser = argparse.ArgumentParser()
    compression.add_arguments(parser)
    args = parser.parse_args(["--exp-dir", str(exp), "--data-dir", str(data), "--systems", "asr_teacher asr_tiny_gold",
                              "--teacher", "asr_teacher", "--set", "test", "--no-plots"])
    assert compression.run(args) == 0
    printed = capsys.readouterr().out
    assert printed == (exp / "RESULTS.md").read_text() and "| asr_tiny_gold | 2.50M | 16.00× |" in printed
    assert not (exp / COMPRESSION_PNG).exists()


def test_systems_and_teacher_from_the_manifest(layout, capsys):
    """Without --systems and --teacher: every asr system of exp/systems.json, its teacher the reference."""
    exp, data = layout
    register(exp, System("mt_other", "st", "student", mode="word"))  # another task: not in this report
    parser = argparse.ArgumentParser()
    compression.add_arguments(parser)
    args = parser.parse_args(["--exp-dir", str(exp), "--data-dir", str(data), "--set", "test", "--no-plots"])
    assert compression.run(args) == 0
    results = json.loads((exp / "results.json").read_text())
    assert list(results) == list(LABELS) and results["asr_tiny_gold"]["param_reduction"] == 16.0
    assert "# Compression (test, teacher asr_teacher)" in capsys.readouterr().out

    register(exp, System("asr_teacher2", "asr", "teacher"))
    with pytest.raises(KdstError, match="2 asr teachers among the systems .*: say which with --teacher"):
        compression.run(args)
    (exp / "systems.json").unlink()
    with pytest.raises(KdstError, match="lists no asr system: give --systems"):
        compression.run(args)


def test_without_a_manifest_every_student_is_drawn_apart(layout):
    """Systems named by hand, registered nowhere: the report is the same, the chart has no mode lines."""
    exp, data = layout
    (exp / "systems.json").unlink()
    results = collect_compression(exp, data, ["asr_teacher", *STUDENTS], "asr_teacher", "test")
    assert student_modes(read_systems(exp), results, "asr_teacher") == ({}, STUDENTS)
    assert (exp / COMPRESSION_PNG).read_bytes().startswith(PNG_MAGIC)


# RESULTS.md of this layout as the report wrote it when it told the modes from the names (asr_<size>_<mode>)
TABLE_BEFORE_THE_MANIFEST = """\
| system | params | × smaller | size MB | WER | ΔWER abs | ΔWER rel % | CER | sentences/s | RTF | speed-up |
|---|---|---|---|---|---|---|---|---|---|---|
| asr_teacher | 40.00M | 1.00× | 2.00 | 10.00 | +0.00 | +0.0 | 9.09 | 5.0 | 0.050 | 1.00× |
| asr_tiny_gold | 2.50M | 16.00× | ~10.00 | 40.00 | +30.00 | +300.0 | 15.15 | 20.0 | 0.050 | 4.00× |
| asr_small_gold | 10.00M | 4.00× | 0.50 | 20.00 | +10.00 | +100.0 | 18.18 | 12.5 | 0.050 | 2.50× |
| asr_tiny_1best | 2.50M | 16.00× | ~10.00 | 20.00 | +10.00 | +100.0 | 24.24 | 20.0 | 0.050 | 4.00× |
"""


def test_the_same_table_as_before_the_manifest(layout):
    """Without the bootstrap (no intervals, no tests) the table is what it was."""
    exp, data = layout
    collect_compression(exp, data, ["asr_teacher", *STUDENTS], "asr_teacher", "test", plots=False,
                        bootstrap=Bootstrap(samples=0))
    lines = (exp / "RESULTS.md").read_text().splitlines()
    assert lines[0] == "# Compression (test, teacher asr_teacher)"
    assert "".join(f"{line}\n" for line in lines if line.startswith("|")) == TABLE_BEFORE_THE_MANIFEST


def brute_force_p(errors: list[int], base_errors: list[int], lengths: list[int], seed: int = 12345) -> float:
    """Centred paired bootstrap p of WER from per-utterance error counts, 1000 resamples in a plain loop with
    the draws of numpy's default_rng(seed)."""
    errors, base_errors, lengths = (np.array(x) for x in (errors, base_errors, lengths))
    deltas = [100 * (errors[i].sum() - base_errors[i].sum()) / lengths[i].sum()
              for i in np.random.default_rng(seed).choice(len(lengths), size=(1000, len(lengths)))]
    delta = 100 * (errors.sum() - base_errors.sum()) / lengths.sum()
    return round((np.count_nonzero(np.abs(np.array(deltas) - np.mean(deltas)) >= abs(delta)) + 1) / 1001, 4)


# word errors per utterance (utt1, utt2) of HYPS, against references of 6 and 4 words
ERRORS = {"asr_teacher": [1, 0], "asr_small_gold": [1, 1], "asr_tiny_gold": [1, 3], "asr_tiny_1best": [1, 1]}
LENGTHS = [6, 4]


def test_each_student_is_tested_against_the_gold_student_of_its_size(layout):
    exp, data = layout
    results = collect_compression(exp, data, ["asr_teacher", *STUDENTS], "asr_teacher", "test", plots=False)
    against = {s: r["significance"]["baseline"] for s, r in results.items()}
    # a gold student's baseline, and that of a size without one, is the teacher
    assert against == {"asr_teacher": None, "asr_tiny_gold": "asr_teacher", "asr_small_gold": "asr_teacher",
                       "asr_tiny_1best": "asr_tiny_gold"}
    for system, baseline in against.items():
        if baseline is not None:
            assert results[system]["significance"]["p"]["wer"] == \
                brute_force_p(ERRORS[system], ERRORS[baseline], LENGTHS)
    assert results["asr_tiny_1best"]["significance"]["samples"] == 1000
    assert table((exp / "RESULTS.md").read_text())[1]["asr_tiny_1best"]["vs"] == "asr_tiny_gold"

    # --baseline: one for every system; or the one exp/systems.json marks
    results = collect_compression(exp, data, ["asr_teacher", *STUDENTS], "asr_teacher", "test", plots=False,
                                  baseline="asr_small_gold", bootstrap=Bootstrap(seed=3))
    assert {s: r["significance"]["baseline"] for s, r in results.items()} == {
        "asr_teacher": "asr_small_gold", "asr_tiny_gold": "asr_small_gold", "asr_small_gold": None,
        "asr_tiny_1best": "asr_small_gold"}
    assert results["asr_teacher"]["significance"]["p"]["wer"] == \
        brute_force_p(ERRORS["asr_teacher"], ERRORS["asr_small_gold"], LENGTHS, seed=3)
    register(exp, System("asr_tiny_gold", "asr", "student", mode="gold", arch="tiny", baseline=True))
    results = collect_compression(exp, data, ["asr_teacher", *STUDENTS], "asr_teacher", "test", plots=False)
    assert results["asr_small_gold"]["significance"]["baseline"] == "asr_tiny_gold"
    with pytest.raises(KdstError, match="--baseline asr_big: not among the systems"):
        collect_compression(exp, data, ["asr_teacher", *STUDENTS], "asr_teacher", "test", baseline="asr_big")


def test_seeds_of_a_student_are_one_row(layout):
    """Two runs of asr_tiny_1best (seeds 1 and 2, one group): one row, mean ± sd, each run's own test."""
    exp, data = layout
    second = exp / "asr_tiny_1best_seed2" / "decode_test"
    second.mkdir(parents=True)
    (second / "hyp.txt").write_text("utt1 the cat sat on the mat\nutt2 it is raining today\n")  # no error
    first = exp / "asr_tiny_1best" / "decode_test"
    (second / "decode_stats.json").write_text((first / "decode_stats.json").read_text())
    register(exp, System("asr_tiny_1best", "asr", "student", mode="1best", arch="tiny", seed=1, group="tiny_1best"))
    register(exp, System("asr_tiny_1best_seed2", "asr", "student", mode="1best", arch="tiny", seed=2,
                         group="tiny_1best"))
    results = collect_compression(exp, data, ["asr_teacher", *STUDENTS, "asr_tiny_1best_seed2"], "asr_teacher",
                                  "test", plots=True)
    header, rows = table((exp / "RESULTS.md").read_text())
    assert list(rows) == ["asr_teacher", "asr_tiny_gold", "asr_small_gold", "tiny_1best"] and header[1] == "seeds"
    group = results["asr_tiny_1best_seed2"]["seeds"]
    assert group == results["asr_tiny_1best"]["seeds"] and group["group"] == "tiny_1best"
    assert group["mean"]["wer"] == 10.0 and group["sd"]["wer"] == round(float(np.std([20.0, 0.0], ddof=1)), 2)
    assert rows["tiny_1best"]["seeds"] == "1 2" and rows["tiny_1best"]["WER"].startswith("10.00 ± 14.14 [")
    assert rows["tiny_1best"]["ΔWER abs"] == "+0.00" and rows["tiny_1best"]["vs"] == "asr_tiny_gold"
    # the gold baseline was trained once: both seeds are paired with it
    assert group["pairs"] == [["asr_tiny_1best", "asr_tiny_gold"], ["asr_tiny_1best_seed2", "asr_tiny_gold"]]
    assert results["asr_tiny_1best_seed2"]["significance"]["p"]["wer"] == \
        brute_force_p([0, 0], ERRORS["asr_tiny_gold"], LENGTHS)
    assert (exp / COMPRESSION_PNG).read_bytes().startswith(PNG_MAGIC)
