"""kdst.report.rnnt: the modes x architectures matrix of the RNN-T recipe from exp/results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdst.errors import KdstError
from kdst.report.rnnt import BEGIN, END, MATRIX_JSON, MATRIX_PNG, MODES, collect, main
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
    register(exp, System("rnnt_streaming_hard", "rnnt", "student", mode="hard", arch="old"))
    register(exp, System("kd-streaming-1best", "rnnt", "student", mode="hard", arch="streaming"))
    matrix = collect(exp, ARCHS, None, "test", ns_systems=[], plots=False)
    assert matrix["cells"]["hard"]["streaming"]["system"] == "kd-streaming-1best"
    assert matrix["cells"]["hard"]["streaming"]["wer"] == 15.0 and matrix["noisy_student"] == []
    register(exp, System("kd-streaming-1best-again", "rnnt", "student", mode="hard", arch="streaming"))
    with pytest.raises(KdstError, match="2 rnnt students of architecture streaming and mode hard "
                                        "\\(kd-streaming-1best kd-streaming-1best-again;"):
        collect(exp, ARCHS, ["hard"], "test", plots=False)


def test_matrix_cells_best_and_relative_changes(tmp_path):
    exp = write_results(tmp_path / "exp")
    (exp / "ns_gen1").mkdir()
    (exp / "ns_gen1" / "pseudo_labels.json").write_text(json.dumps(
        {"utterances": 10, "kept": 10, "dropped": 2, "wer_1best": 12.5, "wer_oracle": 8.0, "n": 1}))
    matrix = collect(exp, ARCHS, list(MODES), "test", ns_systems=["ns_gen1"], plots=False)
    assert matrix["cells"]["hard"]["streaming"] == {
        "system": "rnnt_streaming_hard", "wer": 15.0, "cer": 7.5, "params": 1_000_000,
        "vs_teacher": pytest.approx(100 * 8 / 7, abs=0.05), "vs_none": -25.0}
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
    assert "| *teacher* | *7.00* | *7.00* |" in section
    assert "| hard (1-best) | 9.50 (-5.0%) | **15.00 (-25.0%)** |" in section
    assert "| soft, full lattice | **8.00 (-20.0%)** | 18.00 (-10.0%) |" in section
    assert "| none (references) | 10.00 | 20.00 |" in section
    assert "| 1 | `ns_gen1` | `rnnt_teacher` | 6.50 | -7.1% | - | - |" in section
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
    exp = write_results(tmp_path / "exp")
    collect(exp, None, None, "test", plots=False)  # everything from exp/systems.json
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


def test_cli(tmp_path, capsys):
    exp = write_results(tmp_path / "exp")
    assert main(["--exp-dir", str(exp), "--archs", "same streaming", "--modes", "none hard",
                 "--report-set", "test", "--no-plot"]) == 0
    assert "| hard (1-best) |" in capsys.readouterr().out
    assert main(["--exp-dir", str(exp), "--archs", "big", "--report-set", "test", "--no-plot"]) == 1
    assert "0 rnnt students of architecture big and mode none" in capsys.readouterr().err
