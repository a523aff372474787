"""``kdst results``: score decoded systems and collect them into exp/results.json and RESULTS.md.

A system is an experiment directory ``exp/<system>/`` holding one
``decode_<set>/`` per evaluation set (hyp.txt, decode_stats.json).  Each is scored
against ``data/<set>/<text>`` and the scores are written beside the hypotheses
(``score.json``), then gathered into one table, with PNG charts beside it:
``results.png`` (BLEU and chrF per system) and ``training_curves.png`` (the
losses a system's trainer logged to ``exp/<system>/tensorboard/``).

The systems are those ``--systems`` names, else every system the recipe registered in
``exp/systems.json`` (kdst.report.systems), in the order it trained them.  The runs of one
system under several seeds (one ``group`` there) make one row, mean ± sd.  Every score has
its bootstrap confidence interval and every row its paired test against the baseline
(kdst.report.significance; docs/RESULTS_FORMAT.md).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from kdst import metrics
from kdst.errors import KdstError
from kdst.report import significance
from kdst.report import systems as manifest
from kdst.report.writer import (RESULTS_MD, chart_link, figure, markdown_table, merge_results_json, save_png,
                                score_utterances, write_markdown)

RESULTS_PNG = "results.png"
CURVES_PNG = "training_curves.png"
# Scalar tags written by kdst.train.trainer: ``valid/<key>`` once per epoch from validate(),
# ``train/<key>`` every log_interval steps from log_stats().  valid/nll is the validation loss
# (and what checkpoints are ranked by); train/loss is the optimised loss (KD/CTC mixed in),
# train/nll its cross-entropy part, used if an older log lacks train/loss.
VALID_LOSS_TAGS = ("valid/nll",)
TRAIN_LOSS_TAGS = ("train/loss", "train/nll")


def collect(exp_root: Path, data_root: Path, systems: list[str], sets: list[str], *, text: str = "text",
            metric_names: list[str] = ("bleu", "chrf", "ter"), baseline: str | None = None,
            plots: bool = True, bootstrap: significance.Bootstrap = significance.Bootstrap()) -> dict:
    """Score every (system, set) pair; keys are the system name, or ``system/set`` with several sets.

    ``baseline`` (a system or group; default: the one ``significance.resolve_baseline`` finds in
    exp/systems.json, if any) is what every row is tested against, and adds a Δ column of the
    first metric to RESULTS.md; where none is found, each student is tested against the student of
    its architecture that learnt from the references (``significance.arch_baselines``: the RNN-T
    recipe's none student of each column), named in a "vs" column.  ``bootstrap`` says how
    (``samples`` 0: no intervals, no tests).
    ``plots`` writes the PNG charts beside it.
    """
    registered = manifest.read_systems(exp_root)
    # fail before the (slow) scoring
    baseline = significance.resolve_baseline(baseline, systems, registered, exp_root)
    per_group = {} if baseline else significance.arch_baselines(systems, registered)
    grouped = significance.groups(systems, registered)
    metric_names = list(metric_names)
    results: dict[str, dict] = {}
    signatures: dict[str, str] = {}
    rows: list[dict] = []
    for test_set in sets:
        key = (lambda s: s) if len(sets) == 1 else (lambda s, t=test_set: f"{s}/{t}")
        resamples = significance.Resamples(bootstrap)
        for system in systems:
            decode_dir = exp_root / system / f"decode_{test_set}"
            if not (decode_dir / "hyp.txt").is_file():
                raise KdstError(f"{decode_dir}/hyp.txt: missing (run the decoding stage first)")
            score, stats = score_utterances(decode_dir, data_root / test_set / text, metric_names)
            resamples.add(key(system), stats)
            decode_stats = json.loads((decode_dir / "decode_stats.json").read_text())
            signatures.update(score["signature"])
            entry = {m: score[m] for m in metric_names}
            if "len_ratio" in score:
                entry["len_ratio"] = score["len_ratio"]
            entry.update(n=score["n"], params=decode_stats["params"], sentences_per_s=decode_stats["sentences_per_s"])
            if "rtf" in decode_stats:
                entry["rtf"] = decode_stats["rtf"]
            results[key(system)] = entry
        table_rows = significance.rows(grouped, registered, key, key)
        by_name = {r.name: r for r in table_rows}
        for group, row in zip(grouped, table_rows):
            against = baseline or per_group.get(group)
            base_row = by_name.get(key(against)) if against else None
            for run, seed in zip(row.runs, row.seeds):
                alone = significance.summarise(resamples, significance.Row(run, (run,), (seed,)), base_row,
                                               metric_names)
                results[run]["significance"] = significance.run_record(alone, bootstrap)
            summary = significance.summarise(resamples, row, base_row, metric_names)
            if len(row.runs) > 1:
                for run in row.runs:
                    results[run]["seeds"] = {"group": row.name, **summary}
            rows.append({"name": row.name, "summary": summary, "entry": _row_entry([results[r] for r in row.runs])})
    # the table, and results.json, go system by system, each over the sets
    rows = _interleave(rows, sets)
    results = {run: results[run] for row in rows for run in row["summary"]["runs"]}
    table = {"systems": results, "rows": rows, "signatures": signatures, "sets": list(sets),
             "baseline": baseline, "per_arch": bool(per_group), "bootstrap": bootstrap, "metrics": metric_names}
    merge_results_json(exp_root, results, systems)
    charts: list[str] = []
    if plots:
        if plot_results(table, exp_root / RESULTS_PNG):
            charts.append(RESULTS_PNG)
        if plot_training_curves(exp_root, systems, exp_root / CURVES_PNG):
            charts.append(CURVES_PNG)
    table["charts"] = charts
    write_markdown(exp_root / RESULTS_MD, markdown(table))
    return results


def _row_entry(entries: list[dict]) -> dict:
    """The non-metric columns of a row: those of its first run, speeds and the length ratio averaged."""
    row = dict(entries[0])
    for k in ("len_ratio", "sentences_per_s", "rtf"):
        if all(k in e for e in entries):
            row[k] = sum(e[k] for e in entries) / len(entries)
    return row


def _by_set(rows: list[dict], sets: list[str]) -> list[list[dict]]:
    per = len(rows) // len(sets)
    return [rows[i * per:(i + 1) * per] for i in range(len(sets))]


def _interleave(rows: list[dict], sets: list[str]) -> list[dict]:
    """Rows scored set by set (the resamples are a set's), put system by system, each over the sets."""
    return [row for group in zip(*_by_set(rows, sets)) for row in group]


def markdown(table: dict) -> str:
    rows, bootstrap = table["rows"], table["bootstrap"]
    metric_names = [m for m in metrics.METRICS if m in table["metrics"]]
    baseline = table.get("baseline")
    per_arch = baseline is None and table.get("per_arch", False)  # each student against its architecture's
    tested = baseline is not None or per_arch
    primary = "bleu" if "bleu" in metric_names else metric_names[0]  # the Δ and p columns
    with_ratio = any("len_ratio" in r["entry"] for r in rows)
    with_seeds = any(len(r["summary"]["runs"]) > 1 for r in rows)
    labels = [metrics.LABELS[m] for m in metric_names]
    if tested:
        at = metric_names.index(primary) + 1
        labels[at:at] = [f"Δ{metrics.LABELS[primary]}", *(["p"] if bootstrap.enabled else []),
                         *(["vs"] if per_arch else [])]
    # "len ratio" goes last so that the columns from params to RTF keep their order.
    header = ["system", *(["seeds"] if with_seeds else []), *labels, "params", "sentences/s", "RTF",
              *(["len ratio"] if with_ratio else [])]
    bases = {row["summary"].get("baseline") for row in rows}
    lines_rows = []
    for row in rows:
        r, summary = row["entry"], row["summary"]
        scores = [significance.value_cell(summary, m) for m in metric_names]
        if tested:
            at = metric_names.index(primary) + 1
            untested = per_arch and "baseline" not in summary and row["name"] not in bases  # the teacher
            scores[at:at] = ["-" if untested else significance.delta_cell(summary, primary),
                             *([significance.p_cell(summary, primary)] if bootstrap.enabled else []),
                             *([summary.get("baseline") or "-"] if per_arch else [])]
        cells = [row["name"], *([significance.seeds_cell(summary)] if with_seeds else []), *scores,
                 f"{r['params'] / 1e6:.2f}M", f"{r['sentences_per_s']:.1f}", f"{r['rtf']:.3f}" if "rtf" in r else "-"]
        if with_ratio:
            cells.append(f"{r['len_ratio']:.3f}" if "len_ratio" in r else "-")
        lines_rows.append(cells)
    against = (f"{baseline} on the same set" if baseline is not None else
               "the system in column vs on the same set" if per_arch else None)
    lines = [f"# Results ({', '.join(table['sets'])})", "", *markdown_table(header, lines_rows), ""]
    lines += significance.footnote(bootstrap, against, p_metric=primary if tested else None, seeds=with_seeds)
    if baseline is not None:
        lines += ["", f"Δ{metrics.LABELS[primary]}: {metrics.LABELS[primary]} minus that of {baseline} on the "
                      "same set."]
    elif per_arch:
        lines += ["", f"Δ{metrics.LABELS[primary]}: {metrics.LABELS[primary]} minus that of the system in column vs "
                      "on the same set. vs: no one baseline is registered, so each student is tested against the "
                      "student of its architecture that learnt from the references alone."]
    if with_ratio:
        lines += ["", "len ratio: hypothesis / reference length in BLEU tokens (below 1: outputs too short)."]
    lines += ["", "sacrebleu signatures:", ""]
    lines += [f"- {metrics.LABELS[m]}: `{sig}`" for m, sig in table["signatures"].items()]
    for chart in table.get("charts", ()):
        lines += ["", chart_link(chart)]
    return "\n".join(lines) + "\n"


# --- charts ----------------------------------------------------------------------------

def plot_results(table: dict, path: Path) -> bool:
    """Bar chart of BLEU and chrF (else the first metric) per row, with its confidence interval as an error
    bar; False, and no file, if nothing to plot."""
    rows = table["rows"]
    present = [m for m in metrics.METRICS if m in table["metrics"]]
    shown = [m for m in ("bleu", "chrf") if m in present] or present[:1]
    if not shown:
        path.unlink(missing_ok=True)  # a chart from an earlier run would not match RESULTS.md
        return False
    names = [r["name"] for r in rows]
    baseline = table.get("baseline")
    # With several sets a name is "system/set"; the system part decides the colour.
    system_of = (lambda n: n) if len(table["sets"]) == 1 else (lambda n: n.rpartition("/")[0])
    colors = ["tab:orange" if baseline is not None and system_of(n) == baseline else "tab:blue" for n in names]
    slanted = len(names) > 4  # long names side by side would overlap
    fig, axes = figure(len(shown), max(4.0, 0.9 * len(names) + 2.0))
    for ax, metric in zip(axes, shown):
        values = [r["summary"]["mean"][metric] for r in rows]
        errors = None
        if all("ci" in r["summary"] for r in rows):  # the interval need not be centred on the score
            errors = [[max(0.0, v - r["summary"]["ci"][metric][0]) for v, r in zip(values, rows)],
                      [max(0.0, r["summary"]["ci"][metric][1] - v) for v, r in zip(values, rows)]]
        bars = ax.bar(range(len(names)), values, color=colors, yerr=errors, capsize=3, ecolor="dimgray")
        ax.bar_label(bars, fmt="%.2f", padding=2, fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=30 if slanted else 0,
                      ha="right" if slanted else "center", fontsize=8)
        ax.set_ylabel(metrics.LABELS[metric])
        ax.margins(y=0.15)  # room for the labels above the highest bar
        title = f"{metrics.LABELS[metric]} ({', '.join(table['sets'])})"
        if errors is not None:
            title += ", 95% CI"
        ax.set_title(title + (f", baseline {baseline} in orange" if baseline is not None else ""), fontsize=10)
    save_png(fig, path)
    return True


def read_curves(tensorboard_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{"valid": [(step, value)...], "train": [...]}`` from a trainer's tensorboard log; missing ones left out."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    # it logs an INFO line per event file it finishes reading: noise in a recipe's log
    logging.getLogger("tensorboard").setLevel(logging.WARNING)

    # size_guidance 0 keeps every point (the default samples scalars down to 10,000).  Event files
    # of a resumed run are read in order, and the accumulator drops points a restart superseded.
    acc = EventAccumulator(str(tensorboard_dir), size_guidance={SCALARS: 0})
    acc.Reload()
    tags = set(acc.Tags().get(SCALARS, ()))
    curves: dict[str, list[tuple[int, float]]] = {}
    for kind, candidates in (("valid", VALID_LOSS_TAGS), ("train", TRAIN_LOSS_TAGS)):
        tag = next((t for t in candidates if t in tags), None)
        if tag is not None:
            points = {e.step: e.value for e in acc.Scalars(tag)}  # a step logged twice: the later one
            curves[kind] = sorted(points.items())
    return curves


def plot_training_curves(exp_root: Path, systems: list[str], path: Path) -> bool:
    """Validation loss per epoch and training loss per step of every system with a tensorboard log.

    False, and no file, if no system has either curve.
    """
    curves = {}
    for system in systems:
        tb = exp_root / system / "tensorboard"
        if tb.is_dir() and (found := read_curves(tb)):
            curves[system] = found
    kinds = [k for k in ("valid", "train") if any(k in c for c in curves.values())]
    if not kinds:
        path.unlink(missing_ok=True)  # a chart from an earlier run would not match RESULTS.md
        return False
    fig, axes = figure(len(kinds), 7.0)
    for ax, kind in zip(axes, kinds):
        for system, found in curves.items():
            if kind not in found:
                continue
            steps, values = zip(*found[kind])
            # Validation runs once per finished epoch, logged at the global step: its n-th point is epoch n.
            xs = range(1, len(values) + 1) if kind == "valid" else steps
            ax.plot(xs, values, marker="o" if kind == "valid" else None, markersize=3, label=system)
        ax.set_xlabel("epoch" if kind == "valid" else "step")
        ax.set_ylabel("validation NLL per token" if kind == "valid" else "training loss")
        ax.set_title("validation loss" if kind == "valid" else "training loss", fontsize=10)
        if kind == "valid":
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_png(fig, path)
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exp-dir", type=Path, default=Path("exp"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--systems", help="space-separated experiment names under --exp-dir (default: the "
                                           f"systems of --exp-dir/{manifest.MANIFEST}, of --task if given)")
    parser.add_argument("--task", choices=manifest.TASKS, help=f"without --systems: the {manifest.MANIFEST} "
                                                                "systems of this task only")
    parser.add_argument("--sets", required=True, help="space-separated evaluation sets")
    parser.add_argument("--text", default="text", help="reference file of each set's data dir")
    parser.add_argument("--metrics", default="bleu,chrf,ter")
    parser.add_argument("--baseline", metavar="SYSTEM",
                        help="one of --systems (or their group): every row is tested against it and RESULTS.md "
                             f"gets a column of differences to it (default: the baseline of {manifest.MANIFEST}, "
                             "else its one student group of mode none or gold, else none)")
    significance.add_arguments(parser)


def registered_systems(exp_root: Path, task: str | None = None) -> list[str]:
    """The names of the systems of ``exp_root/systems.json`` (of ``task``), in the order they trained."""
    names = [s.name for s in manifest.select(manifest.read_systems(exp_root), task=task)]
    if not names:
        raise KdstError(f"{manifest.manifest_path(exp_root)} lists no{' ' + task if task else ''} system: "
                        "give --systems, or run the training stages (they register what they train)")
    return names


def run(args: argparse.Namespace) -> int:
    systems = args.systems.split() if args.systems else registered_systems(args.exp_dir, args.task)
    collect(args.exp_dir, args.data_dir, systems, args.sets.split(), text=args.text,
            metric_names=metrics.parse_metrics(args.metrics), baseline=args.baseline,
            bootstrap=significance.from_args(args))
    print((args.exp_dir / "RESULTS.md").read_text(), end="")
    return 0
