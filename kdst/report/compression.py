"""``kdst compression``: how much smaller and faster the students are than their teacher, at what WER cost.

The compression report of the ASR recipe (big attention encoder-decoder teacher, small
students trained on its pseudo labels, after Mun'im et al. 2019).  Every system, the
teacher included, is scored on one test set from ``exp/<system>/decode_<set>/``
(hyp.txt, decode_stats.json), and set against the teacher: parameters, checkpoint
size, WER (absolute and relative change) and decoding speed.  Writes
``exp/results.json``, ``exp/RESULTS.md`` and ``exp/compression.png`` (WER against
parameters, one line per training mode across student sizes).

The systems, the teacher and each student's mode come from ``exp/systems.json``
(kdst.report.systems), where the recipe's training stages registered them; ``--systems``
and ``--teacher`` choose among them, or name systems the manifest lacks (drawn apart,
as "other").

Every WER and CER has its bootstrap confidence interval, and every student its paired test
(kdst.report.significance) against a baseline: ``--baseline``, else the one registered as
the baseline, else the student of its size that learnt from the references (mode ``gold``):
what KD is meant to beat.  Such students, and those without one, are tested against the
teacher: what compression costs.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from kdst import metrics
from kdst.errors import KdstError
from kdst.report import significance
from kdst.report import systems as manifest
from kdst.report.writer import (RESULTS_MD, chart_link, figure, markdown_table, merge_results_json, save_png,
                                score_decode_dir, score_utterances, write_markdown)

COMPRESSION_PNG = "compression.png"
BYTES_PER_PARAM = 4  # float32: the estimate when the checkpoint file cannot be measured
CONDITIONS = ("device", "jobs", "threads", "beam")  # decode settings that change the speed columns


def _ratio(num, den, digits: int = 3):
    return round(num / den, digits) if num is not None and den else None


def _read_decode_dir(decode_dir: Path) -> dict:
    """decode_stats.json of a decoded system; KdstError if it, or hyp.txt, is missing."""
    for name in ("hyp.txt", "decode_stats.json"):
        if not (decode_dir / name).is_file():
            raise KdstError(f"{decode_dir / name}: missing (run the decoding stage first)")
    stats = json.loads((decode_dir / "decode_stats.json").read_text())
    for key in ("params", "sentences_per_s"):
        if key not in stats:
            raise KdstError(f"{decode_dir / 'decode_stats.json'}: no '{key}' (decode again with this kdst)")
    return stats


def checkpoint_bytes(stats: dict, exp_root: Path) -> int | None:
    """Size on disk of the decoded checkpoint; None if the stats do not name it or it is gone.

    A relative path is taken from the working directory, else from the recipe directory
    (the parent of ``exp_root``): the decoding stage runs there.
    """
    if not stats.get("checkpoint"):
        return None
    path = Path(stats["checkpoint"])
    for candidate in (path,) if path.is_absolute() else (path, exp_root.parent / path):
        if candidate.is_file():
            return candidate.stat().st_size
    return None


def collect_compression(exp_root: Path, data_root: Path, systems: list[str], teacher: str, test_set: str, *,
                        text: str = "text", metric_names=("wer", "cer"), plots: bool = True,
                        other_sets: tuple[str, ...] = (), baseline: str | None = None,
                        bootstrap: significance.Bootstrap = significance.Bootstrap()) -> dict:
    """Score every system on ``test_set``, compare each with ``teacher``; writes results.json, RESULTS.md
    and (``plots``) compression.png under ``exp_root``.  Returns the results.json content.

    ``other_sets`` are scored too (``wer_<set>`` in each entry, a WER column each, e.g. WSJ's dev93
    beside eval92); the ratios, speeds and tests come from ``test_set`` alone.  ``baseline`` (a
    system or group) is what every student is tested against; default: see the module's docstring.
    """
    exp_root, data_root = Path(exp_root), Path(data_root)
    metric_names = metrics.parse_metrics(list(metric_names))
    if "wer" not in metric_names:
        raise KdstError("the compression report needs WER among the metrics")
    if teacher not in systems:  # fail before the (slow) scoring
        raise KdstError(f"--teacher {teacher}: not among the systems ({' '.join(systems)})")
    order = [teacher, *(s for s in dict.fromkeys(systems) if s != teacher)]
    registered = manifest.read_systems(exp_root)
    # --baseline, or the one exp/systems.json marks, for every row; else each student's own (default_baselines)
    one_for_all = baseline is not None or any(s.baseline for s in registered if s.name in order)
    chosen = significance.resolve_baseline(baseline, order, registered, exp_root) if one_for_all else None
    stats = {s: _read_decode_dir(exp_root / s / f"decode_{test_set}") for s in order}  # all present first
    other_sets = tuple(o for o in dict.fromkeys(other_sets) if o != test_set)
    for other in other_sets:
        for system in order:
            _read_decode_dir(exp_root / system / f"decode_{other}")
    results: dict[str, dict] = {}
    resamples = significance.Resamples(bootstrap)
    for system in order:
        st = stats[system]
        score, utterances = score_utterances(exp_root / system / f"decode_{test_set}", data_root / test_set / text,
                                             metric_names)
        resamples.add(system, utterances)
        size = checkpoint_bytes(st, exp_root)
        estimated = size is None
        size = st["params"] * BYTES_PER_PARAM if estimated else size
        entry = {m: score[m] for m in metric_names}
        entry.update(n=score["n"], params=st["params"], size_mb=round(size / 1e6, 3), size_bytes=size,
                     size_estimated=estimated, sentences_per_s=st["sentences_per_s"], rtf=st.get("rtf"))
        # A job count is written only by parallel decoding: one job otherwise.
        entry["decode"] = {k: st.get(k, 1 if k == "jobs" else None) for k in CONDITIONS}
        for other in other_sets:
            entry[f"wer_{other}"] = score_decode_dir(exp_root / system / f"decode_{other}", data_root / other / text,
                                                 ["wer"])["wer"]
        results[system] = entry
    ref = results[teacher]
    for entry in results.values():
        entry["param_reduction"] = _ratio(ref["params"], entry["params"])
        entry["size_reduction"] = _ratio(ref["size_bytes"], entry["size_bytes"])
        entry["speedup"] = _ratio(entry["sentences_per_s"], ref["sentences_per_s"])
        # + 0.0 turns a -0.0 into 0.0
        entry["wer_abs_change"] = round(entry["wer"] - ref["wer"], 2) + 0.0
        entry["wer_rel_change"] = (round(100 * (entry["wer"] - ref["wer"]) / ref["wer"], 2) + 0.0
                                   if ref["wer"] else None)
    rows = _test_rows(resamples, results, registered, order, teacher, chosen, metric_names)
    merge_results_json(exp_root, results, order)
    # the chart: a point per row, at its first run's size and mode
    first = {row["summary"]["runs"][0]: row for row in rows}
    modes, others = student_modes(registered, list(first), teacher)
    points = {row["name"]: {"params": row["entry"]["params"], "wer": row["summary"]["mean"]["wer"],
                            "ci": row["summary"].get("ci", {}).get("wer")} for row in rows}
    grouped = ({mode: [first[n]["name"] for n in names] for mode, names in modes.items()},
               [first[n]["name"] for n in others])
    charts = [COMPRESSION_PNG] if plots and plot_compression(points, rows[0]["name"], grouped,
                                                             exp_root / COMPRESSION_PNG) else []
    write_markdown(exp_root / RESULTS_MD, markdown(rows, test_set, charts, other_sets, bootstrap))
    return results


def default_baselines(table_rows: list[significance.Row], registered: list[manifest.System],
                      teacher_row: str) -> dict[str, str]:
    """{row: its baseline row}: a student's is the one student group of its size (arch) that learnt from
    the references alone (significance.arch_baselines), if there is one and it is not that group; else
    (and for such students) the teacher's.  The teacher has none."""
    own = significance.arch_baselines([run for row in table_rows for run in row.runs], registered)
    return {row.name: own.get(row.name, teacher_row) for row in table_rows if row.name != teacher_row}


def _test_rows(resamples: significance.Resamples, results: dict, registered: list[manifest.System],
               order: list[str], teacher: str, chosen: str | None, metric_names: list[str]) -> list[dict]:
    """The table's rows (the teacher's first), each run's interval and test written into its entry."""
    table_rows = significance.rows(significance.groups(order, registered), registered)
    by_name = {row.name: row for row in table_rows}
    teacher_row = next(row.name for row in table_rows if teacher in row.runs)
    if chosen is not None:
        baselines = {row.name: chosen for row in table_rows if row.name != chosen}
    else:
        baselines = default_baselines(table_rows, registered, teacher_row)
    rows = []
    for row in table_rows:
        base = by_name.get(baselines.get(row.name))
        for run, seed in zip(row.runs, row.seeds):
            alone = significance.summarise(resamples, significance.Row(run, (run,), (seed,)), base, metric_names)
            results[run]["significance"] = significance.run_record(alone, resamples.bootstrap)
        summary = significance.summarise(resamples, row, base, metric_names)
        if len(row.runs) > 1:
            for run in row.runs:
                results[run]["seeds"] = {"group": row.name, **summary}
        entry = dict(results[row.runs[0]])
        entry["sentences_per_s"] = sum(results[r]["sentences_per_s"] for r in row.runs) / len(row.runs)
        rows.append({"name": row.name, "summary": summary, "entry": entry})
    top = rows[0]["summary"]["mean"]["wer"]
    for row in rows:  # a row of several seeds: its mean against the teacher's
        wer = row["summary"]["mean"]["wer"]
        row["entry"].update(wer_abs_change=round(wer - top, 2) + 0.0,
                            wer_rel_change=round(100 * (wer - top) / top, 2) + 0.0 if top else None,
                            speedup=_ratio(row["entry"]["sentences_per_s"], rows[0]["entry"]["sentences_per_s"]))
    return rows


def differing_conditions(results: dict) -> list[str]:
    """The decode settings (device, jobs, threads, beam) that are not the same for every system."""
    return [k for k in CONDITIONS if len({r["decode"][k] for r in results.values()}) > 1]


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def markdown(rows: list[dict], test_set: str, charts: list[str] = (), other_sets=(),
             bootstrap: significance.Bootstrap = significance.Bootstrap()) -> str:
    """RESULTS.md: a row per group (``_test_rows``), the teacher's first."""
    present = [m for m in metrics.METRICS if m in rows[0]["summary"]["mean"]]
    extra = [m for m in present if m not in ("wer", "cer")]
    with_cer = "cer" in present
    with_seeds = any(len(r["summary"]["runs"]) > 1 for r in rows)
    teacher = rows[0]["name"]
    header = ["system", *(["seeds"] if with_seeds else []), "params", "× smaller", "size MB", "WER", "ΔWER abs",
              "ΔWER rel %", *(["p", "vs"] if bootstrap.enabled else []), *(["CER"] if with_cer else []),
              *(metrics.LABELS[m] for m in extra), *(f"WER {o}" for o in other_sets), "sentences/s", "RTF",
              "speed-up"]
    lines_rows = []
    for row in rows:
        r, summary = row["entry"], row["summary"]
        cells = [row["name"], *([significance.seeds_cell(summary)] if with_seeds else []),
                 f"{r['params'] / 1e6:.2f}M", _fmt(r["param_reduction"], ".2f", "×"),
                 ("~" if r["size_estimated"] else "") + f"{r['size_mb']:.2f}", significance.value_cell(summary, "wer"),
                 f"{r['wer_abs_change']:+.2f}", _fmt(r["wer_rel_change"], "+.1f"),
                 *([significance.p_cell(summary, "wer"), summary.get("baseline", "-")] if bootstrap.enabled else []),
                 *([significance.value_cell(summary, "cer")] if with_cer else []),
                 *(significance.value_cell(summary, m) for m in extra),
                 *(_fmt(r.get(f"wer_{o}"), ".2f") for o in other_sets),
                 f"{r['sentences_per_s']:.1f}", _fmt(r["rtf"], ".3f"), _fmt(r["speedup"], ".2f", "×")]
        lines_rows.append(cells)
    lines = [f"# Compression ({test_set}, teacher {teacher})", "", *markdown_table(header, lines_rows)]
    lines += ["", f"× smaller: the teacher's parameters / the system's. size MB: the decoded checkpoint "
                  f"on disk (10^6 bytes; ~: not found, estimated as {BYTES_PER_PARAM} bytes per parameter). "
                  "ΔWER abs: WER minus the teacher's, in points; ΔWER rel %: that difference in percent of the "
                  "teacher's WER (- when it is 0). speed-up: sentences/s / the teacher's. RTF: decoding time / "
                  "audio duration (lower is faster)."]
    lines += ["", *significance.footnote(bootstrap, "the system in column vs" if bootstrap.enabled else None,
                                         p_metric="wer", seeds=with_seeds)]
    if bootstrap.enabled:
        lines += ["vs: a student's baseline, the student of its size trained on the references (mode gold), "
                  "else the teacher, unless --baseline or exp/systems.json names one."]
    if other_sets:
        lines += [f"WER {', '.join(other_sets)}: without intervals or tests (those are of {test_set})."]
    results = {row["name"]: row["entry"] for row in rows}
    differ = differing_conditions(results)
    if differ:
        lines += ["", f"**Warning**: the systems were decoded under different conditions ({', '.join(differ)} "
                      "differ): the speed columns (sentences/s, RTF, speed-up) are not comparable."]
        lines += [f"- {name}: {_conditions(r['decode'])}" for name, r in results.items()]
    else:
        lines += ["", f"Decoded with {_conditions(results[teacher]['decode'])}."]
    for chart in charts:
        lines += ["", chart_link(chart)]
    return "\n".join(lines) + "\n"


def _conditions(decode: dict) -> str:
    return ", ".join(f"{k} {'?' if decode[k] is None else decode[k]}" for k in CONDITIONS)  # ?: not recorded


def student_modes(registered: list[manifest.System], names, teacher: str) -> tuple[dict[str, list[str]], list[str]]:
    """({mode: the registered students of that mode, in the order of ``names``}, the other names), the
    teacher in neither.  Students outside the manifest, or registered without a mode, are the others."""
    labels = manifest.by_name(registered)
    modes: dict[str, list[str]] = {}
    others: list[str] = []
    for name in names:
        if name == teacher:
            continue
        system = labels.get(name)
        if system is not None and system.role == "student" and system.mode:
            modes.setdefault(system.mode, []).append(name)
        else:
            others.append(name)
    return modes, others


def plot_compression(results: dict, teacher: str, grouped: tuple[dict[str, list[str]], list[str]], path: Path) -> bool:
    """WER against parameters (log scale); ``grouped`` (student_modes) coloured by mode, a line per mode
    through its sizes; the teacher a star, labelled like the students no mode groups.  ``results``:
    {name: {"params", "wer", "ci": [low, high] or None}}, the interval drawn as an error bar.
    Always writes (there is at least the teacher)."""
    from matplotlib.ticker import FuncFormatter

    fig, (ax,) = figure(1, 7.0)
    modes, others = grouped
    colours = [f"C{i % 10}" for i in range(len(modes))]
    for (mode, names), colour in zip(modes.items(), colours):
        names = sorted(names, key=lambda n: results[n]["params"])  # the trade-off curve: small to large
        ax.plot([results[n]["params"] for n in names], [results[n]["wer"] for n in names], marker="o",
                color=colour, label=mode)
    if others:
        ax.scatter([results[n]["params"] for n in others], [results[n]["wer"] for n in others], marker="o",
                   color="tab:gray", label="other")
    with_ci = [n for n in results if results[n].get("ci")]
    if with_ci:  # an interval need not be centred on the score
        ax.errorbar([results[n]["params"] for n in with_ci], [results[n]["wer"] for n in with_ci],
                    yerr=[[max(0.0, results[n]["wer"] - results[n]["ci"][0]) for n in with_ci],
                          [max(0.0, results[n]["ci"][1] - results[n]["wer"]) for n in with_ci]],
                    fmt="none", ecolor="dimgray", capsize=3, linewidth=0.8)
    t = results[teacher]
    ax.scatter([t["params"]], [t["wer"]], marker="*", s=200, color="black", zorder=3, label="teacher")
    ax.axhline(t["wer"], color="black", linewidth=0.8, linestyle=":", alpha=0.5)
    # The legend names the modes and the x position the size: only the rest get a label (students of
    # one size share an x, where names would overprint each other).
    for name in [teacher, *others]:
        r = results[name]
        ax.annotate(name, (r["params"], r["wer"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1e6:g}M"))
    # Among the minor ticks (2..9 × a power of ten) only 2 and 5 are named: enough to read, not crowded.
    ax.xaxis.set_minor_formatter(FuncFormatter(
        lambda x, _: f"{x / 1e6:g}M" if x > 0 and round(x / 10 ** math.floor(math.log10(x))) in (2, 5) else ""))
    ax.tick_params(axis="x", which="both", labelsize=8)
    ax.margins(x=0.15, y=0.1)  # room for the names beside the outermost points
    ax.set_xlabel("parameters")
    ax.set_ylabel("WER (%)")
    ax.set_title(f"WER against parameters (teacher {teacher})", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_png(fig, path)
    return True


def registered(exp_root: Path, systems: list[str] | None, teacher: str | None) -> tuple[list[str], str]:
    """(systems, teacher): those given, else the ASR systems of the manifest and its ASR teacher."""
    asr = manifest.select(manifest.read_systems(exp_root), task="asr")
    if systems is None:
        systems = [s.name for s in asr]
        if not systems:
            raise KdstError(f"{manifest.manifest_path(exp_root)} lists no asr system: give --systems and "
                            "--teacher, or run the training stages (they register what they train)")
    if teacher is None:
        teachers = [s.name for s in asr if s.role == "teacher" and s.name in systems]
        if len(teachers) != 1:
            raise KdstError(f"{manifest.manifest_path(exp_root)}: {len(teachers)} asr teachers among the systems "
                            f"({' '.join(teachers) or 'none'}): say which with --teacher")
        teacher = teachers[0]
    return systems, teacher


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exp-dir", type=Path, default=Path("exp"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--systems", help="space-separated experiment names under --exp-dir, the teacher "
                                          f"included (default: the asr systems of --exp-dir/{manifest.MANIFEST})")
    parser.add_argument("--teacher", help="one of --systems: what the others are compared with (default: the "
                                          f"asr teacher of {manifest.MANIFEST})")
    parser.add_argument("--set", required=True, dest="test_set", help="the evaluation set (decode_<set>)")
    parser.add_argument("--text", default="text", help="reference file of the set's data dir")
    parser.add_argument("--metrics", default="wer,cer", help="comma-separated; WER is needed")
    parser.add_argument("--no-plots", action="store_true", help=f"do not draw {COMPRESSION_PNG}")
    parser.add_argument("--other-sets", default="", help="space-separated sets whose WER is added as columns")
    parser.add_argument("--baseline", metavar="SYSTEM",
                        help="one of --systems (or their group) that every other is tested against (default: "
                             "for each student the gold student of its size, else the teacher)")
    significance.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    systems, teacher = registered(args.exp_dir, args.systems.split() if args.systems else None, args.teacher)
    collect_compression(args.exp_dir, args.data_dir, systems, teacher, args.test_set,
                        text=args.text, metric_names=metrics.parse_metrics(args.metrics), plots=not args.no_plots,
                        other_sets=tuple(args.other_sets.split()), baseline=args.baseline,
                        bootstrap=significance.from_args(args))
    print((args.exp_dir / RESULTS_MD).read_text(), end="")
    return 0
