"""kdst.report.rnnt: the modes x architectures matrix of the RNN-T recipe from exp/results.json."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from kdst.errors import KdstError
from kdst.report.rnnt import BEGIN, END, MATRIX_JSON, MATRIX_PNG, MODES, collect, main
from kdst.report.significance import Bootstrap
from kdst.report.systems import System, register

ARCHS = ["same", "streaming"]
# WER per (arch, mode): hard targets help the streaming student most, soft ones the same-architecture one
WER = {("same", "none"): 10.0, ("same", "hard"): 9.5, ("same", "soft-full"): 8.0, ("same", "soft-collapsed"): 8.5,
       ("same", "hard+soft"): 9.0, ("streaming", "none"): 20.0, ("streaming", "hard"): 15.0,
       ("streaming", "soft-full"): 18.0, ("streaming", "soft-collapsed"): 19.0, ("streaming", "hard+soft"): 16.0}


def student_system(arch: str, mode: str) -> str:
    """The recipe's name of a student (rnnt_<arch>_<mode without + and ->); the report reads none of it."""
    return f"rnnt_{arch}_{mode.replace('+', '_').replace('-', '_')}"


def register_systems(exp: Path, ns=("ns_gen1",)) -> None:
    """What the recipe's training stages register in exp/systems.json."""
    model = "exp/{}/avg_best2.pt".format
    register(exp, System("rnnt_teacher", "rnnt", "teacher", arch="same", model=model("rnnt_teacher")))
    for arch, mode in WER:
        register(exp, System(student_system(arch, mode), "rnnt", "student", mode=mode, arch=arch,
                             teacher=model("rnnt_teacher") if mode != "none" else None))
    teacher = "rnnt_teacher"
    for name in ns:
        register(exp, System(name, "rnnt", "noisy-student", mode="hard+soft", arch="same", teacher=model(teacher),
                             model=model(name)))
        teacher = name


UTTERANCES, WORDS = 20, 10  # the report set: 200 reference words, so a WER of w% is 2w substituted words
# Where the errors go: a system with e errors has the first e of these (word positions), so that a better
# system's errors are among a worse one's.
ERROR_POSITIONS = random.Random(0).sample(range(UTTERANCES * WORDS), UTTERANCES * WORDS)


def reference() -> list[list[str]]:
    return [[f"w{u}_{i}" for i in range(WORDS)] for u in range(UTTERANCES)]


def write_decoded(exp: Path, system: str, report_set: str, wer: float) -> None:
    """exp/<system>/decode_<set>/hyp.txt with ``wer`` percent of substituted words (and data/<set>/text)."""
    words = reference()
    for position in ERROR_POSITIONS[:round(wer * UTTERANCES * WORDS / 100)]:
        words[position // WORDS][position % WORDS] = "x"
    for path, rows in ((exp / system / f"decode_{report_set}" / "hyp.txt", words),
                       (exp.parent / "data" / report_set / "text", reference())):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"u{u:02d} {' '.join(row)}\n" for u, row in enumerate(rows)))


def write_results(exp: Path, sets=("test",), ns=("ns_gen1",)) -> Path:
    results = {}
    entries = {"rnnt_teacher": (7.0, 4_000_000)}
    entries.update({student_system(a, m): (w, 4_000_000 if a == "same" else 1_000_000) for (a, m), w in WER.items()})
    entries.update({n: (6.5 - i, 4_000_000) for i, n in enumerate(ns)})
    register_systems(exp, ns)
    for system, (wer, params) in entries.items():
        for s in sets:
            key = system if len(sets) == 1 else f"{system}/{s}"
            # another set gets other numbers, so that a wrong pick shows
            bump = 0.0 if s == sets[-1] else 50.0
            results[key] = {"wer": wer + bump, "cer": wer / 2, "n": 4, "params": params, "sentences_per_s": 10.0}
        write_decoded(exp, system, sets[-1], wer)
    exp.mkdir(parents=True, exist_ok=True)
    (exp / "results.json").write_text(json.dumps(results))
    (exp / "RESULTS.md").write_text("# Results (test)\n\n| system | WER |\n|---|---|\n")
    return exp


def test_the_manifest_decides_what_fills_a_cell(tmp_path):
    """Any name will do: the cell of (streaming, hard) is the student registered with those labels."""
    exp = write_results(tmp_path / "exp")
    matrix = collect(exp, None, None, "test", plots=False)  # archs, modes, teacher and generations registered
    assert matrix["archs"] == ARCHS and matrix["modes"] == list(MODES)
    assert matrix["teacher"]["system"] == "rnnt_teacher" and matrix["cells"]["hard"]["streaming"]["wer"] == 15.0
    assert [(r["system"], r["teacher"]) for r in matrix["noisy_student"]] == \
        [("rnnt_teacher", None), ("ns_gen1", "rnnt_teacher")]

    results = json.loads((exp / "results.json").read_text())
    results["kd-streaming-1best"] = results.pop("rnnt_streaming_hard")
    (exp / "results.json").write_text(json.dumps(results))
    write_decoded(exp, "kd-streaming-1best", "test", WER["streaming", "hard"])
    register(exp, System("rnnt_streaming_hard", "rnnt", "student", mode="hard", arch="old"))
    register(exp, System("kd-streaming-1best", "rnnt", "student", mode="hard", arch="streaming"))
    matrix = collect(exp, ARCHS, None, "test", ns_systems=[], plots=False)
    assert matrix["cells"]["hard"]["streaming"]["system"] == "kd-streaming-1best"
    assert matrix["cells"]["hard"]["streaming"]["wer"] == 15.0 and matrix["noisy_student"] == []
    register(exp, System("kd-streaming-1best-again", "rnnt", "student", mode="hard", arch="streaming"))
    with pytest.raises(KdstError, match="2 rnnt students of architecture streaming and mode hard "
                                        "\\(kd-streaming-1best kd-streaming-1best-again;"):
        collect(exp, ARCHS, ["hard"], "test", plots=False)


def brute_force_wer_test(errors: np.ndarray, base_errors: np.ndarray, lengths: np.ndarray) -> tuple[list, float]:
    """(95% interval, centred p) of per-utterance error counts against a baseline's, resampled in a plain loop
    with the draws of numpy's default_rng(12345) (sacrebleu's), 1000 times."""
    drawn = np.random.default_rng(12345).choice(len(lengths), size=(1000, len(lengths)), replace=True)
    wer, deltas = [], []
    for idx in drawn:
        wer.append(100 * errors[idx].sum() / lengths[idx].sum())
        deltas.append(wer[-1] - 100 * base_errors[idx].sum() / lengths[idx].sum())
    wer, deltas = np.sort(wer), np.array(deltas)
    delta = 100 * (errors.sum() - base_errors.sum()) / lengths.sum()
    p = (np.count_nonzero(np.abs(deltas - deltas.mean()) >= abs(delta)) + 1) / 1001
    return [round(wer[25], 2), round(wer[974], 2)], round(p, 4)


def errors_of(wer: float) -> np.ndarray:
    """Per-utterance substitutions of write_decoded's hypotheses at ``wer``."""
    errors = np.zeros(UTTERANCES)
    for position in ERROR_POSITIONS[:round(wer * UTTERANCES * WORDS / 100)]:
        errors[position // WORDS] += 1
    return errors


def test_matrix_cells_best_and_relative_changes(tmp_path):
    exp = write_results(tmp_path / "exp")
    (exp / "ns_gen1" / "pseudo_labels.json").write_text(json.dumps(
        {"utterances": 10, "kept": 10, "dropped": 2, "wer_1best": 12.5, "wer_oracle": 8.0, "n": 1}))
    matrix = collect(exp, ARCHS, list(MODES), "test", ns_systems=["ns_gen1"], plots=False)
    cell = matrix["cells"]["hard"]["streaming"]
    ci, p = brute_force_wer_test(errors_of(15.0), errors_of(20.0), np.full(UTTERANCES, WORDS))
    assert (cell["ci"]["wer"], cell["p"]["wer"], cell["baseline"]) == (ci, p, "rnnt_streaming_none")
    assert cell["p"]["wer"] < 0.05 and cell["p_sacrebleu"]["wer"] < 0.05
    assert {k: v for k, v in cell.items() if k not in ("ci", "p", "p_sacrebleu", "baseline")} == {
        "system": "rnnt_streaming_hard", "wer": 15.0, "cer": 7.5, "params": 1_000_000,
        "vs_teacher": pytest.approx(100 * 8 / 7, abs=0.05), "vs_none": -25.0}
    assert "p" not in matrix["cells"]["none"]["same"] and "ci" in matrix["cells"]["none"]["same"]
    generation = matrix["noisy_student"][1]  # tested against the teacher
    assert generation["p"]["wer"] == brute_force_wer_test(errors_of(6.5), errors_of(7.0), np.full(UTTERANCES, WORDS))[1]
    assert matrix["significance"]["samples"] == 1000 and matrix["significance"]["test"] == "centred"
    assert matrix["best"] == {"same": "soft-full", "streaming": "hard"}
    assert matrix["teacher"]["wer"] == 7.0
    ns = matrix["noisy_student"]
    assert [r["generation"] for r in ns] == [0, 1] and ns[1]["teacher"] == "rnnt_teacher"
    assert ns[1]["wer"] == 6.5 and ns[1]["pseudo_labels"]["dropped"] == 2
    assert json.loads((exp / MATRIX_JSON).read_text()) == json.loads(json.dumps(matrix))
    # results.json (the contract: one entry per system) is left alone
    assert "matrix" not in json.loads((exp / "results.json").read_text())


def test_results_md_gets_one_section_replaced_on_rerun(tmp_path):
    exp = write_results(tmp_path / "exp")
    collect(exp, ARCHS, list(MODES), "test", ns_systems=["ns_gen1"], plots=False)
    text = (exp / "RESULTS.md").read_text()
    assert text.startswith("# Results (test)") and text.count(BEGIN) == 1 and text.count(END) == 1
    section = text.split(BEGIN)[1]
    assert "| mode | same (4.00M) | streaming (1.00M) |" in section
    matrix = json.loads((exp / MATRIX_JSON).read_text())

    def cell(mode: str, arch: str) -> str:
        """A cell as the section must show it: WER [interval] (change), the mark where p < 0.05."""
        c = matrix["cells"][mode][arch]
        change = f" ({c['vs_none']:+.1f}%)" if mode != "none" else ""
        return "{:.2f} [{:.2f}, {:.2f}]{}{}".format(c["wer"], *c["ci"]["wer"], change,
                                                   "†" if mode != "none" and c["p"]["wer"] < 0.05 else "")

    assert "| *teacher* | *7.00 [{0:.2f}, {1:.2f}]* | *7.00 [{0:.2f}, {1:.2f}]* |".format(
        *matrix["teacher"]["ci"]["wer"]) in section
    assert f"| hard (1-best) | {cell('hard', 'same')} | **{cell('hard', 'streaming')}** |" in section
    assert f"| soft, full lattice | **{cell('soft-full', 'same')}** | {cell('soft-full', 'streaming')} |" in section
    assert f"| none (references) | {cell('none', 'same')} | {cell('none', 'streaming')} |" in section
    # 5 words fewer wrong of 200, nested in the baseline's errors: significant; 1 fewer: not
    assert cell("hard", "streaming").endswith("†") and not cell("hard", "same").endswith("†")
    assert "| hard (1-best) | {:.3f} | {:.3f} |".format(
        matrix["cells"]["hard"]["same"]["p"]["wer"], matrix["cells"]["hard"]["streaming"]["p"]["wer"]) in section
    ns = matrix["noisy_student"][1]
    assert "| 1 | `ns_gen1` | `rnnt_teacher` | 6.50 [{:.2f}, {:.2f}] | -7.1% | {:.3f} | - | - |".format(
        *ns["ci"]["wer"], ns["p"]["wer"]) in section
    assert "95% confidence interval" in section and "1000 resamples" in section
    collect(exp, ARCHS, ["none", "hard"], "test", ns_systems=[], plots=False)
    again = (exp / "RESULTS.md").read_text()
    assert again.count(BEGIN) == 1 and "soft, full lattice" not in again and "Noisy-student" not in again
    assert again.startswith("# Results (test)")


# The RESULTS.md section of this layout as the report wrote it when it built the names (rnnt_<arch>_<mode>)
SECTION_BEFORE_THE_MANIFEST = """\
| mode | same (4.00M) | streaming (1.00M) |
|---|---|---|
| *teacher* | *7.00* | *7.00* |
| none (references) | 10.00 | 20.00 |
| hard (1-best) | 9.50 (-5.0%) | **15.00 (-25.0%)** |
| soft, full lattice | **8.00 (-20.0%)** | 18.00 (-10.0%) |
| soft, collapsed | 8.50 (-15.0%) | 19.00 (-5.0%) |
| hard + soft | 9.00 (-10.0%) | 16.00 (-20.0%) |
| generation | system | teacher | WER | vs teacher | pseudo-label WER | dropped |
|---|---|---|---|---|---|---|
| 0 | `rnnt_teacher` | - | 7.00 | - | - | - |
| 1 | `ns_gen1` | `rnnt_teacher` | 6.50 | -7.1% | - | - |
"""


def test_the_same_section_as_before_the_manifest(tmp_path):
    """Without the bootstrap (no intervals, no tests) the section is what it was."""
    exp = write_results(tmp_path / "exp")
    for system in ("rnnt_teacher", "rnnt_same_none"):  # not read without the tests
        (exp / system / "decode_test" / "hyp.txt").unlink()
    collect(exp, None, None, "test", plots=False, bootstrap=Bootstrap(samples=0))  # everything from exp/systems.json
    section = (exp / "RESULTS.md").read_text().split(BEGIN)[1]
    assert "".join(f"{line}\n" for line in section.splitlines() if line.startswith("|")) == \
        SECTION_BEFORE_THE_MANIFEST


def test_several_sets_use_the_report_set_and_a_chart(tmp_path):
    exp = write_results(tmp_path / "exp", sets=("dev", "test"), ns=("ns_gen1", "ns_gen2"))
    matrix = collect(exp, ARCHS, ["none", "hard", "hard+soft"], "test", ns_systems=["ns_gen1", "ns_gen2"])
    assert matrix["cells"]["none"]["same"]["wer"] == 10.0  # not dev's 60
    assert [r["teacher"] for r in matrix["noisy_student"]] == [None, "rnnt_teacher", "ns_gen1"]
    assert (exp / MATRIX_PNG).read_bytes()[:4] == b"\x89PNG"
    assert f"![KD modes x architectures]({MATRIX_PNG})" in (exp / "RESULTS.md").read_text()


def test_missing_systems_and_bad_options_are_errors(tmp_path):
    exp = write_results(tmp_path / "exp")
    with pytest.raises(KdstError, match="0 rnnt students of architecture tiny and mode none \\(none;"):
        collect(exp, ["tiny"], ["none"], "test", plots=False)
    register(exp, System("rnnt_tiny_none", "rnnt", "student", arch="tiny"))  # trained, never scored
    with pytest.raises(KdstError, match="no entry for rnnt_tiny_none on test"):
        collect(exp, ["tiny"], ["none"], "test", plots=False)
    with pytest.raises(KdstError, match="unknown mode"):
        collect(exp, ARCHS, ["word"], "test", plots=False)
    with pytest.raises(KdstError, match="nowhere/results.json: missing"):
        collect(tmp_path / "nowhere", ARCHS, ["none"], "test", plots=False)
    (exp / "systems.json").unlink()  # nothing registered: no teacher to compare with
    with pytest.raises(KdstError, match="0 rnnt teachers registered \\(none\\): say which with --teacher"):
        collect(exp, ARCHS, ["none"], "test", plots=False)


def test_seeds_of_a_cell_and_stale_scores(tmp_path):
    """A cell registered once per seed (one group) is their mean; hypotheses that do not give
    results.json's WER are an error, not a test of other outputs."""
    exp = write_results(tmp_path / "exp")
    results = json.loads((exp / "results.json").read_text())
    for seed, wer in ((1, 15.0), (2, 17.0)):
        name = f"rnnt_streaming_hard_seed{seed}"
        register(exp, System(name, "rnnt", "student", mode="hard", arch="streaming", seed=seed,
                             group="rnnt_streaming_hard"))
        results[name] = {"wer": wer, "cer": wer / 2, "n": 4, "params": 1_000_000, "sentences_per_s": 10.0}
        write_decoded(exp, name, "test", wer)
    register(exp, System("rnnt_streaming_hard", "rnnt", "student", mode="hard", arch="old"))
    (exp / "results.json").write_text(json.dumps(results))
    matrix = collect(exp, ARCHS, ["none", "hard"], "test", ns_systems=[], plots=False)
    cell = matrix["cells"]["hard"]["streaming"]
    assert (cell["system"], cell["runs"], cell["wer"]) == (
        "rnnt_streaming_hard", ["rnnt_streaming_hard_seed1", "rnnt_streaming_hard_seed2"], 16.0)
    assert cell["sd"]["wer"] == pytest.approx(np.std([15.0, 17.0], ddof=1), abs=0.005)
    section = (exp / "RESULTS.md").read_text().split(BEGIN)[1]
    assert f"16.00 ± {cell['sd']['wer']:.2f} [" in section and "mean ± sd: over the seeds" in section

    write_decoded(exp, "rnnt_streaming_hard_seed2", "test", 18.0)  # decoded again, not scored again
    with pytest.raises(KdstError, match="seed2/decode_test/hyp.txt: WER 18.00 against .*results.json says 17.00"):
        collect(exp, ARCHS, ["none", "hard"], "test", ns_systems=[], plots=False)


def test_cli(tmp_path, capsys):
    exp = write_results(tmp_path / "exp")
    assert main(["--exp-dir", str(exp), "--archs", "same streaming", "--modes", "none hard",
                 "--report-set", "test", "--no-plot"]) == 0
    assert "| hard (1-best) |" in capsys.readouterr().out
    assert main(["--exp-dir", str(exp), "--archs", "big", "--report-set", "test", "--no-plot"]) == 1
    assert "0 rnnt students of architecture big and mode none" in capsys.readouterr().err


def test_after_kdst_results_as_the_recipe_runs_them(tmp_path, monkeypatch, capsys):
    """Stage 10 of the recipe: kdst results scores the decoded sets, kdst rnnt-report (run in the recipe dir,
    data/ beside exp/) lays them out and tests them on the same hypotheses."""
    from kdst.cli import main as kdst

    exp = write_results(tmp_path / "exp")
    (exp / "results.json").unlink()
    systems = ["rnnt_teacher", *(student_system(a, m) for a, m in WER), "ns_gen1"]
    for system in systems:
        (exp / system / "decode_test" / "decode_stats.json").write_text(
            json.dumps({"params": 1_000_000, "sentences_per_s": 10.0}))
    monkeypatch.chdir(tmp_path)
    assert kdst(["results", "--systems", " ".join(systems), "--sets", "test", "--metrics", "wer,cer"]) == 0
    assert kdst(["rnnt-report", "--exp-dir", "exp", "--archs", "same streaming", "--modes", "none hard",
                 "--ns-systems", "ns_gen1", "--report-set", "test", "--sets", "test", "--no-plot"]) == 0
    matrix = json.loads((exp / MATRIX_JSON).read_text())
    cell = matrix["cells"]["hard"]["streaming"]
    assert cell["wer"] == 15.0 and cell["p"]["wer"] < 0.05
    text = (exp / "RESULTS.md").read_text()
    assert text.startswith("# Results (test)") and "| rnnt_streaming_hard | 15.00 [" in text and BEGIN in text
