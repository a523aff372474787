"""The modes x architectures matrix of the RNN-T distillation recipe (egs/TEMPLATE/rnnt.sh, stage 10).

Hwang et al. (2022) compare hard targets (the teacher's 1-best) and soft targets
(KD on the output lattice) per student architecture: hard targets win when the
student differs from the teacher (a small streaming student), soft ones in
self-training (the teacher's own architecture).  This module lays the scores
that ``kdst results`` wrote to ``exp/results.json`` out that way:

    exp/rnnt_matrix.json   {"report_set", "metric", "teacher", "archs", "modes",
                            "cells": {mode: {arch: {system, wer, cer, params}}},
                            "best": {arch: mode}, "noisy_student": [{generation, system, ...}]}
    exp/RESULTS.md         + a section (between markers, replaced on a re-run): the matrix
                           (rows = KD modes, columns = student architectures, cells = WER on
                           the report set and its relative change against the column's
                           ``none`` student) and the noisy-student generations
    exp/rnnt_matrix.png    grouped bars: WER per mode, one bar per architecture, the teacher as a line

``results.json`` itself is left as it is (its contract: one entry per system).
Which system fills a cell comes from ``exp/systems.json`` (kdst.report.systems): the
rnnt student registered with that architecture and KD mode (or the runs of one group,
one per seed: the cell is their mean); the teacher is the rnnt teacher registered there,
and the noisy-student generations its ``noisy-student`` systems, in the order they trained.

Each cell has its bootstrap confidence interval and a paired test (kdst.report.significance)
against the ``none`` student of its column, each generation one against the teacher: the
report set's hypotheses (``exp/<system>/decode_<set>/hyp.txt``) are scored again against
``data/<set>/text`` for it, and must give the WER that results.json holds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kdst.errors import KdstError
from kdst.report import significance
from kdst.report import systems as manifest
from kdst.report.writer import (RESULTS_JSON, RESULTS_MD, chart_link, figure, markdown_table, save_png,
                                score_utterances, write_json, write_section)

MATRIX_JSON = "rnnt_matrix.json"
MATRIX_PNG = "rnnt_matrix.png"
BEGIN, END = "<!-- rnnt-matrix -->", "<!-- /rnnt-matrix -->"
MODES = ("none", "hard", "soft-full", "soft-collapsed", "hard+soft")
MODE_LABELS = {"none": "none (references)", "hard": "hard (1-best)", "soft-full": "soft, full lattice",
               "soft-collapsed": "soft, collapsed", "hard+soft": "hard + soft"}


def student_of(registered: list[manifest.System], arch: str, mode: str, exp_root: Path) -> list[str]:
    """The rnnt student registered with ``arch`` and ``mode``: its name, or those of its group's runs."""
    found = [s for s in registered if s.task == "rnnt" and s.role == "student" and s.arch == arch and s.mode == mode]
    if not found or len({s.group_name for s in found}) != 1:
        raise KdstError(f"{manifest.manifest_path(exp_root)}: {len(found)} rnnt students of architecture {arch} "
                        f"and mode {mode} ({' '.join(s.name for s in found) or 'none'}; its training stage "
                        "registers each, and the seeds of one as one group)")
    return [s.name for s in found]


def layout(registered: list[manifest.System], archs: list[str] | None, modes: list[str] | None,
           teacher: str | None, ns_systems: list[str] | None) -> tuple[list[str], list[str], str | None, list[str]]:
    """(archs, modes, teacher, noisy students): those given, else what the manifest registered (archs and
    modes in the order their students trained, modes in MODES order)."""
    students = manifest.select(registered, task="rnnt", role="student")
    if archs is None:
        archs = list(dict.fromkeys(s.arch for s in students))
    if modes is None:
        modes = [m for m in MODES if any(s.mode == m for s in students)]
    if teacher is None:
        teachers = manifest.select(registered, task="rnnt", role="teacher")
        teacher = teachers[0].name if len(teachers) == 1 else None
    if ns_systems is None:
        ns_systems = [s.name for s in manifest.select(registered, task="rnnt", role="noisy-student")]
    return archs, modes, teacher, ns_systems


def _entry(results: dict, system: str, report_set: str) -> dict:
    """The results.json entry of ``system`` on ``report_set`` (keys are ``system/set`` with several sets)."""
    for key in (f"{system}/{report_set}", system):
        if key in results:
            entry = results[key]
            return {"system": system, **{k: entry[k] for k in ("wer", "cer", "params") if k in entry}}
    raise KdstError(f"results.json has no entry for {system} on {report_set} (run the scoring stage, "
                    f"kdst results, with it first)")


def _cell(results: dict, runs: list[str], report_set: str, registered: list[manifest.System]) -> dict:
    """A cell: the entry of its one run, or of a group's runs (WER and CER their mean, named by the group)."""
    entries = [_entry(results, run, report_set) for run in runs]
    if len(entries) == 1:
        return entries[0]
    labels = manifest.by_name(registered)
    cell = {**entries[0], "system": labels[runs[0]].group_name, "runs": list(runs)}
    for k in ("wer", "cer"):
        if all(k in e for e in entries):
            cell[k] = round(sum(e[k] for e in entries) / len(entries), 2)
    return cell


def _relative(wer: float, base: float) -> float | None:
    """Relative WER change against ``base``, in percent (negative: better)."""
    return None if base == 0 else round(100.0 * (wer - base) / base, 1)


def collect(exp_root: str | Path, archs: list[str] | None, modes: list[str] | None, report_set: str, *,
            teacher: str | None = None, ns_systems: list[str] | None = None, metric: str = "wer",
            plots: bool = True, data_root: str | Path | None = None, text: str = "text",
            bootstrap: significance.Bootstrap = significance.Bootstrap()) -> dict:
    """Build the matrix from ``exp_root/results.json`` and ``exp_root/systems.json``; writes
    rnnt_matrix.json, the PNG and the RESULTS.md section, and returns the matrix.

    ``archs``, ``modes``, ``teacher`` and ``ns_systems`` (None: from the manifest) choose the
    rows, columns and generations; the tests read ``data_root/<report_set>/<text>`` (default: the
    recipe's data/ beside ``exp_root``)."""
    exp_root = Path(exp_root)
    registered = manifest.read_systems(exp_root)
    archs, modes, teacher, ns_systems = layout(registered, archs, modes, teacher, ns_systems)
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise KdstError(f"unknown mode(s) {', '.join(unknown)} ({', '.join(MODES)})")
    if not archs or not modes:
        raise KdstError("the matrix needs at least one architecture and one mode")
    path = exp_root / RESULTS_JSON
    if not path.is_file():
        raise KdstError(f"{path}: missing (run kdst results first)")
    results = json.loads(path.read_text())
    if teacher is None:
        teachers = [t.name for t in manifest.select(registered, task="rnnt", role="teacher")]
        raise KdstError(f"{manifest.manifest_path(exp_root)}: {len(teachers)} rnnt teachers registered "
                        f"({' '.join(teachers) or 'none'}): say which with --teacher")
    if metric not in ("wer", "cer"):
        raise KdstError(f"--metric {metric}: wer or cer")
    top = _entry(results, teacher, report_set)
    if metric not in top:
        raise KdstError(f"results.json: {teacher} has no {metric} (score with --metrics wer,cer)")
    runs = {(mode, arch): student_of(registered, arch, mode, exp_root) for mode in modes for arch in archs}
    cells = {mode: {arch: _cell(results, runs[mode, arch], report_set, registered) for arch in archs}
             for mode in modes}
    for mode in modes:
        for arch in archs:
            cell = cells[mode][arch]
            cell["vs_teacher"] = _relative(cell[metric], top[metric])
            if "none" in cells:
                cell["vs_none"] = _relative(cell[metric], cells["none"][arch][metric])
    best = {arch: min(modes, key=lambda m: cells[m][arch][metric]) for arch in archs}
    generations = [{"generation": 0, **top, "teacher": None}]
    model_of = {s.model: s.name for s in registered if s.model}
    labels = manifest.by_name(registered)
    for g, system in enumerate(ns_systems, start=1):
        # its teacher as registered, named by the system that model is; else the generation before
        ref = labels[system].teacher if system in labels else None
        row = {"generation": g, **_entry(results, system, report_set),
               "teacher": model_of.get(ref, generations[-1]["system"])}
        stats_path = exp_root / system / "pseudo_labels.json"
        if stats_path.is_file():
            stats = json.loads(stats_path.read_text())
            row["pseudo_labels"] = {k: stats[k] for k in ("utterances", "dropped", "wer_1best", "wer_oracle")
                                    if k in stats}
        row["vs_teacher"] = _relative(row[metric], top[metric])
        generations.append(row)
    matrix = {"report_set": report_set, "metric": metric, "teacher": top, "archs": list(archs),
              "modes": list(modes), "cells": cells, "best": best,
              "noisy_student": generations if ns_systems else []}
    if bootstrap.enabled:
        data_root = exp_root.parent / "data" if data_root is None else Path(data_root)
        attach_tests(matrix, runs, [teacher], ns_systems, results, registered, exp_root, data_root, text, bootstrap)
    write_json(exp_root / MATRIX_JSON, matrix)
    chart = plot_matrix(matrix, exp_root / MATRIX_PNG) if plots else False
    write_section(exp_root / RESULTS_MD, markdown(matrix, MATRIX_PNG if chart else None), BEGIN, END)
    return matrix


def attach_tests(matrix: dict, runs: dict, teacher: list[str], ns_systems: list[str], results: dict,
               registered: list[manifest.System], exp_root: Path, data_root: Path, text: str,
               bootstrap: significance.Bootstrap) -> None:
    """Add ``ci`` and ``p`` (``metric``, CER too if scored) to the teacher, every cell (against the ``none``
    cell of its column) and every generation (against the teacher), and ``significance`` to the matrix."""
    metric, report_set = matrix["metric"], matrix["report_set"]
    scored = [m for m in ("wer", "cer") if m in matrix["teacher"]]
    resamples = significance.Resamples(bootstrap)
    for system in dict.fromkeys([*teacher, *(r for group in runs.values() for r in group), *ns_systems]):
        decode_dir = exp_root / system / f"decode_{report_set}"
        if not (decode_dir / "hyp.txt").is_file():
            raise KdstError(f"{decode_dir / 'hyp.txt'}: missing, the tests need it (run the decoding stage, or "
                            "--bootstrap-samples 0)")
        score, stats = score_utterances(decode_dir, data_root / report_set / text, scored, write=False)
        held = _entry(results, system, report_set)[metric]
        if score[metric] != held:
            raise KdstError(f"{decode_dir / 'hyp.txt'}: {metric.upper()} {score[metric]:.2f} against "
                            f"{data_root / report_set / text}, results.json says {held:.2f} (run kdst results again)")
        resamples.add(system, stats)
    seeds = {s.name: s.seed for s in registered}

    def row(systems: list[str]) -> significance.Row:
        return significance.Row(" ".join(systems), tuple(systems), tuple(seeds.get(s) for s in systems))

    def fill(cell: dict, systems: list[str], baseline: list[str] | None) -> None:
        summary = significance.summarise(resamples, row(systems), row(baseline) if baseline else None, scored)
        cell["ci"] = summary["ci"]
        if len(systems) > 1:
            cell["sd"] = summary["sd"]
        if baseline is not None and baseline != systems:
            cell.update(baseline=" ".join(baseline), p=summary["p"], p_sacrebleu=summary["p_sacrebleu"])

    fill(matrix["teacher"], teacher, None)
    for (mode, arch), systems in runs.items():
        fill(matrix["cells"][mode][arch], systems, runs["none", arch] if ("none", arch) in runs else None)
    for generation in matrix["noisy_student"][1:]:
        fill(generation, [generation["system"]], teacher)
    if matrix["noisy_student"]:
        matrix["noisy_student"][0]["ci"] = matrix["teacher"]["ci"]
    matrix["significance"] = bootstrap.record()


def _with_ci(cell: dict, metric: str) -> str:
    """``12.34``, ``± sd`` over seeds and ``[low, high]`` when tested."""
    text = f"{cell[metric]:.2f}"
    if "sd" in cell:
        text += f" ± {cell['sd'][metric]:.2f}"
    if "ci" in cell:
        text += " [{:.2f}, {:.2f}]".format(*cell["ci"][metric])
    return text


def _mark(cell: dict, metric: str) -> str:
    return significance.MARK if significance.significant(cell, metric) else ""


def _params(value) -> str:
    return f"{value / 1e6:.2f}M" if isinstance(value, (int, float)) else "?"


def markdown(matrix: dict, chart: str | None = None) -> str:
    """The RESULTS.md section (markers included)."""
    metric, label = matrix["metric"], matrix["metric"].upper()
    archs, top = matrix["archs"], matrix["teacher"]
    tested = "significance" in matrix
    params = {a: next(iter(matrix["cells"].values()))[a].get("params") for a in archs}
    rows = [["*teacher*", *(f"*{_with_ci(top, metric)}*" for _ in archs)]]
    for mode in matrix["modes"]:
        cells = []
        for arch in archs:
            cell = matrix["cells"][mode][arch]
            text = _with_ci(cell, metric)
            if mode != "none" and cell.get("vs_none") is not None:
                text += f" ({cell['vs_none']:+.1f}%)"
            text += _mark(cell, metric)
            cells.append(f"**{text}**" if matrix["best"][arch] == mode else text)
        rows.append([MODE_LABELS[mode], *cells])
    lines = [BEGIN, f"## RNN-T distillation: {label} (%) on {matrix['report_set']}, KD modes x student "
             "architectures", "",
             f"Teacher `{top['system']}` ({_params(top.get('params'))}): {label} {top[metric]:.2f}.  "
             "Cells: the student's " + label + ", in brackets its relative change against the `none` "
             "student of its column; **bold**: the best mode of the column.", "",
             *markdown_table(["mode", *(f"{a} ({_params(params[a])})" for a in archs)], rows)]
    systems = sorted({c["system"] for row in matrix["cells"].values() for c in row.values()})
    lines += ["", "Systems: " + ", ".join(f"`{s}`" for s in systems) + "."]
    if tested and any(m != "none" for m in matrix["modes"]) and "none" in matrix["modes"]:
        p_rows = [[MODE_LABELS[mode], *(significance.p_cell(matrix["cells"][mode][arch], metric) for arch in archs)]
                  for mode in matrix["modes"] if mode != "none"]
        lines += ["", f"p-values of the {label} differences against the `none` student of the column:", "",
                  *markdown_table(["mode", *archs], p_rows)]
    if matrix["noisy_student"]:
        rows = []
        for row in matrix["noisy_student"]:
            labels = row.get("pseudo_labels", {})
            rel = row.get("vs_teacher") if row["generation"] else None
            rows.append([f"{row['generation']}", f"`{row['system']}`",
                         f"`{row['teacher']}`" if row["teacher"] else "-", _with_ci(row, metric),
                         f"{rel:+.1f}%{_mark(row, metric)}" if rel is not None else "-",
                         *([significance.p_cell(row, metric)] if tested else []),
                         f"{labels['wer_1best']:.2f}" if "wer_1best" in labels else "-",
                         f"{labels['dropped']}" if "dropped" in labels else "-"])
        lines += ["", f"### Noisy-student generations ({label} on {matrix['report_set']})", "",
                  *markdown_table(["generation", "system", "teacher", label, "vs teacher", *(["p"] if tested else []),
                                   "pseudo-label WER", "dropped"], rows)]
        lines += ["", "Pseudo-label WER: the 1-best of the generation's teacher on the labelled part of "
                  "the pool, against the references; dropped: utterances under the confidence threshold."]
    if tested:
        record = matrix["significance"]
        seeds = any("sd" in c for row in matrix["cells"].values() for c in row.values())
        lines += ["", *significance.footnote(
            significance.Bootstrap(record["samples"], record["seed"]),
            "the `none` student of its column (a generation: the teacher)", p_metric=metric, seeds=seeds)]
    if chart:
        lines += ["", chart_link(chart, "KD modes x architectures")]
    lines.append(END)
    return "\n".join(lines) + "\n"


def plot_matrix(matrix: dict, path: Path) -> bool:
    """Grouped bars (a group per mode, a bar per architecture) with the teacher as a dashed line."""
    metric, archs, modes = matrix["metric"], matrix["archs"], matrix["modes"]
    fig, (ax,) = figure(1, max(5.0, 1.3 * len(modes) * max(1, len(archs)) / 2 + 2.0))
    width = 0.8 / len(archs)
    for i, arch in enumerate(archs):
        xs = [m + (i - (len(archs) - 1) / 2) * width for m in range(len(modes))]
        cells = [matrix["cells"][mode][arch] for mode in modes]
        values = [c[metric] for c in cells]
        errors = None
        if all("ci" in c for c in cells):  # an interval need not be centred on the score
            errors = [[max(0.0, v - c["ci"][metric][0]) for v, c in zip(values, cells)],
                      [max(0.0, c["ci"][metric][1] - v) for v, c in zip(values, cells)]]
        bars = ax.bar(xs, values, width, label=arch, yerr=errors, capsize=2, ecolor="dimgray")
        ax.bar_label(bars, fmt="%.1f", padding=2, fontsize=7)
    ax.axhline(matrix["teacher"][metric], color="black", linestyle="--", linewidth=1,
               label=f"teacher ({matrix['teacher']['system']})")
    ax.set_xticks(range(len(modes)), [MODE_LABELS[m] for m in modes], fontsize=8)
    ax.set_ylabel(f"{metric.upper()} (%)")
    ax.margins(y=0.15)
    ax.set_title(f"{metric.upper()} on {matrix['report_set']}: KD modes x student architectures", fontsize=10)
    ax.legend(fontsize=8)
    save_png(fig, path)
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exp-dir", type=Path, default=Path("exp"))
    parser.add_argument("--archs", help="space-separated student architectures (columns; default: those of "
                                        f"the students in --exp-dir/{manifest.MANIFEST})")
    parser.add_argument("--modes", help="space-separated KD modes (rows; default: those of the students in "
                                        f"{manifest.MANIFEST}, in the order {' '.join(MODES)})")
    parser.add_argument("--report-set", required=True, help="the evaluation set of the matrix")
    parser.add_argument("--sets", help="the sets kdst results scored (unused: keys are found either way)")
    parser.add_argument("--teacher", help=f"default: the rnnt teacher of {manifest.MANIFEST}")
    parser.add_argument("--ns-systems", help="space-separated noisy-student generations, in order (default: the "
                                             f"noisy students of {manifest.MANIFEST}; '': none)")
    parser.add_argument("--metric", default="wer", choices=("wer", "cer"))
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--data-dir", type=Path,
                        help="where the report set's references are, for the tests (default: data/ beside --exp-dir)")
    parser.add_argument("--text", default="text", help="reference file of the report set's data dir")
    significance.add_arguments(parser)


def _words(option: str | None) -> list[str] | None:
    """A space-separated option; None (not given: the manifest decides) stays None."""
    return None if option is None else option.split()


def run(args: argparse.Namespace) -> int:
    matrix = collect(args.exp_dir, _words(args.archs), _words(args.modes), args.report_set,
                     teacher=args.teacher, ns_systems=_words(args.ns_systems), metric=args.metric,
                     plots=not args.no_plot, data_root=args.data_dir, text=args.text,
                     bootstrap=significance.from_args(args))
    print(markdown(matrix, None), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdst.report.rnnt", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except KdstError as e:
        print(f"{parser.prog}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
