"""``kdst study-report``: the document of a study — its table over seeds, a chart, and the findings it tests.

A study trains a recipe's systems under several seeds and scores them with ``kdst results``
(egs/mini/st1/local/study.sh).  This program writes what it found, from

- ``exp/results.json`` and ``exp/systems.json``: one row per group of systems (the runs of one
  system under its seeds): each metric's mean ± sd over the seeds, its 95% confidence interval, the
  length ratio, and the p-value of the paired test against the row's baseline, as ``kdst results``
  computed them (docs/RESULTS_FORMAT.md);
- a findings spec (YAML, :class:`Spec`; docs/results/findings/): the published findings the study
  tests, each one or more comparisons "system beats other in metric";
- the invocation log the study script appends a line to whenever it runs (:data:`FIELDS`): the
  command, when it started, its wall time, the machine, the commit, and which systems were
  already trained when it began.

Each comparison gets a verdict (:func:`comparison_verdict`): *holds* when the difference goes the
way the finding says and p < 0.05, *does not hold* when it goes the other way and p < 0.05, *not
significant* otherwise, *not measured* when a system has no result.  A comparison with the row's
baseline in a metric results.json tested takes that test; any other one (two KD modes, the length
ratio) is the same paired bootstrap computed here from the systems' hypotheses, over the
resamples results.json records, after checking that they still give results.json's scores.
A finding holds when all its comparisons hold, does not hold when any goes significantly the other
way (:func:`finding_verdict`).

Writes the markdown and ``<its stem>.png`` beside it (the first metric per row, with its interval
and each seed's run), each through a temporary name.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Literal

import numpy as np
import yaml

from kdst import metrics
from kdst.config.schema import ConfigError, build, require
from kdst.errors import DataError, KdstError
from kdst.report import significance
from kdst.report import systems as manifest
from kdst.report.writer import RESULTS_JSON, chart_link, figure, markdown_table, save_png, score_utterances
from kdst.report.writer import write_markdown

# The invocation log: one tab-separated line per run of a study script, in this order.  ``registered``
# lists (space-separated) the systems exp/systems.json held when it started; ``seconds`` is its wall
# time, ``exit`` its exit status (0: it finished).
FIELDS = ("started", "seconds", "exit", "commit", "nproc", "cpu", "mem_kb", "registered", "command")
LENGTH_RATIO = "len_ratio"  # hypothesis / reference length in BLEU tokens, from BLEU's statistics
QUANTITIES = (*metrics.METRICS, LENGTH_RATIO)
DEFAULT_BETTER = {"bleu": "higher", "chrf": "higher", "ter": "lower", "wer": "lower", "cer": "lower",
                  LENGTH_RATIO: "closer_to_1"}
LABELS = {**metrics.LABELS, LENGTH_RATIO: "length ratio"}
HOLDS, DOES_NOT_HOLD, NOT_SIGNIFICANT, NOT_MEASURED = "holds", "does not hold", "not significant", "not measured"


# --- the findings spec --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Comparison:
    """``system`` beats each of ``over`` in ``metric`` (default: the study's first metric): ``better``
    says which way is better (default: by the metric; the length ratio: closer to 1)."""
    system: str
    over: str | tuple[str, ...]
    metric: str | None = None
    better: Literal["higher", "lower", "closer_to_1"] | None = None

    def __post_init__(self):
        require(bool(self.over), "over", "names no system")
        require(self.metric is None or self.metric in QUANTITIES, "metric",
                f"'{self.metric}' is none of {', '.join(QUANTITIES)}")


@dataclasses.dataclass(frozen=True)
class Finding:
    claim: str
    source: str  # who found it
    tests: tuple[Comparison, ...]
    comment: str = ""  # the study's author's words after the run (why it does not hold here), shown as such

    def __post_init__(self):
        require(bool(self.tests), "tests", "a finding needs at least one comparison")


@dataclasses.dataclass(frozen=True)
class Spec:
    title: str
    set: str  # the evaluation set of the table and the tests
    metrics: tuple[str, ...]  # the table's metrics; the first is the chart's, the p column's and the default test's
    findings: tuple[Finding, ...] = ()
    rows: tuple[str, ...] = ()  # the order of the table's groups: these first, the others as they registered

    def __post_init__(self):
        require(bool(self.metrics), "metrics", "name at least one metric")
        for m in self.metrics:
            require(m in metrics.METRICS, "metrics", f"'{m}' is none of {', '.join(metrics.METRICS)}")


@dataclasses.dataclass(frozen=True)
class Test:
    """One comparison of a finding, resolved: ``system`` against one ``other``."""
    system: str
    other: str
    metric: str
    better: str


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KdstError(f"{path}: findings spec not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise DataError(path, f"not valid YAML ({getattr(e, 'problem', None) or e})",
                        None if mark is None else mark.line + 1) from None
    try:
        return build(Spec, raw)
    except ConfigError as e:
        raise DataError(path, str(e)) from None


def tests_of(finding: Finding, spec: Spec) -> list[Test]:
    out = []
    for c in finding.tests:
        metric = c.metric or spec.metrics[0]
        for other in (c.over,) if isinstance(c.over, str) else c.over:
            out.append(Test(c.system, other, metric, c.better or DEFAULT_BETTER[metric]))
    return out


# --- verdicts ---------------------------------------------------------------------------------------

def gain(better: str, value, other):
    """How much ``value`` is better than ``other`` (arrays too): positive when it is."""
    if better == "higher":
        return value - other
    if better == "lower":
        return other - value
    return np.abs(1.0 - other) - np.abs(1.0 - value)  # closer_to_1


def comparison_verdict(gained: float | None, p: float | None) -> str:
    if gained is None or p is None:
        return NOT_MEASURED
    if p >= metrics.SIGNIFICANCE_LEVEL or gained == 0:
        return NOT_SIGNIFICANT
    return HOLDS if gained > 0 else DOES_NOT_HOLD


def finding_verdict(verdicts: list[str]) -> str:
    """A measured contradiction stands even beside a comparison that could not be measured."""
    if DOES_NOT_HOLD in verdicts:
        return DOES_NOT_HOLD
    if NOT_MEASURED in verdicts:
        return NOT_MEASURED
    return HOLDS if all(v == HOLDS for v in verdicts) else NOT_SIGNIFICANT


def deciding(outcomes: list[dict], verdict: str) -> dict:
    """The comparison a finding's verdict rests on: the weakest that holds, the strongest contradiction,
    the least significant of those that are not, the first not measured."""
    if verdict == DOES_NOT_HOLD:
        return min((o for o in outcomes if o["verdict"] == DOES_NOT_HOLD), key=lambda o: o["p"])
    if verdict == NOT_MEASURED:
        return next(o for o in outcomes if o["verdict"] == NOT_MEASURED)
    candidates = [o for o in outcomes if o["verdict"] == verdict]
    return max(candidates, key=lambda o: o["p"])


# --- the table: one row per group, from results.json -------------------------------------------------

def entry_key(results: dict, system: str, test_set: str) -> str | None:
    """results.json's key of ``system`` on ``test_set`` (``system/set`` when several sets were scored)."""
    for key in (f"{system}/{test_set}", system):
        if key in results:
            return key
    return None


def table_rows(results: dict, registered: list[manifest.System], test_set: str, metric_names) -> list[dict]:
    """A row per group of registered systems scored in results.json, in the order they registered.

    A row's ``key`` is how results.json names the group (a test's ``baseline``): its name, or
    ``name/set`` when several sets were scored."""
    scored = [s.name for s in registered if entry_key(results, s.name, test_set)]
    roles = {s.name: s.role for s in registered}
    seeds = {s.name: s.seed for s in registered}
    rows = []
    for group, runs in significance.groups(scored, registered).items():
        keys = [entry_key(results, r, test_set) for r in runs]
        entries = [results[k] for k in keys]
        rows.append({"name": group, "key": group if keys[0] == runs[0] else f"{group}/{test_set}", "runs": runs,
                     "seeds": [seeds[r] for r in runs], "role": roles[runs[0]], "entries": entries,
                     **_summary(group, runs, entries, metric_names)})
    return rows


def _summary(group: str, runs: list[str], entries: list[dict], metric_names) -> dict:
    """mean, sd (several runs), ci, baseline, delta, p of a group: its seeds record, or its one run's."""
    for m in metric_names:
        missing = [r for r, e in zip(runs, entries) if m not in e]
        if missing:
            raise KdstError(f"{RESULTS_JSON}: {' '.join(missing)} has no {metrics.LABELS[m]} (score with "
                            f"--metrics {','.join(metric_names)})")
    if len(runs) == 1:
        record = entries[0].get("significance") or {}
        out = {"mean": {m: entries[0][m] for m in metric_names}, "ci": record.get("ci")}
    else:
        record = entries[0].get("seeds")
        if not record or sorted(record["runs"]) != sorted(runs):
            raise KdstError(f"{RESULTS_JSON}: the group {group} ({' '.join(runs)}) was not scored as one "
                            "(run kdst results on all its runs again)")
        out = {"mean": record["mean"], "sd": record["sd"], "ci": record.get("ci")}
        for m in metric_names:  # a run scored again alone would leave the group's record stale
            runs_mean = float(np.mean([e[m] for e in entries]))
            if abs(runs_mean - record["mean"][m]) > 0.011:  # both sides rounded to 0.01
                raise KdstError(f"{RESULTS_JSON}: {group}'s mean {metrics.LABELS[m]} {record['mean'][m]:.2f} is not "
                                f"the mean of its runs ({runs_mean:.2f}): run kdst results on all its runs again")
    out.update(baseline=record.get("baseline"), delta=record.get("delta"), p=record.get("p"),
               pairs=record.get("pairs") or ([[runs[0], record["paired_with"]]] if record.get("paired_with") else []))
    ratios = [e[LENGTH_RATIO] for e in entries if LENGTH_RATIO in e]
    if len(ratios) == len(entries):
        out["len_ratio"] = float(np.mean(ratios))
        if len(ratios) > 1:
            out["len_ratio_sd"] = float(np.std(ratios, ddof=1))
    return out


# --- comparisons --------------------------------------------------------------------------------

class Hypotheses:
    """Every run's scores on one set, scored again from its hypotheses, and on each resample of the set."""

    def __init__(self, exp_root: Path, data_root: Path, test_set: str, text: str, results: dict,
                 bootstrap: significance.Bootstrap):
        self.exp_root, self.data_root, self.set, self.text = exp_root, data_root, test_set, text
        self.results, self.bootstrap = results, bootstrap
        self.counts: np.ndarray | None = None
        self.values: dict[str, dict[str, float]] = {}
        self.samples: dict[str, dict[str, np.ndarray]] = {}

    def get(self, run: str, quantity: str) -> tuple[float, np.ndarray]:
        if run not in self.values or quantity not in self.values[run]:
            self._score(run, quantity)
        return self.values[run][quantity], self.samples[run][quantity]

    def _score(self, run: str, quantity: str) -> None:
        metric = "bleu" if quantity == LENGTH_RATIO else quantity
        decode_dir = self.exp_root / run / f"decode_{self.set}"
        if not (decode_dir / "hyp.txt").is_file():
            raise KdstError(f"{decode_dir / 'hyp.txt'}: missing, the comparisons need it (run the decoding stage)")
        score, stats = score_utterances(decode_dir, self.data_root / self.set / self.text, [metric], write=False)
        held = self.results[entry_key(self.results, run, self.set)]
        for name in (metric, LENGTH_RATIO):
            if name in score and name in held and score[name] != held[name]:
                raise KdstError(f"{decode_dir / 'hyp.txt'}: {LABELS[name]} {score[name]} against "
                                f"{self.data_root / self.set / self.text}, {RESULTS_JSON} says {held[name]} "
                                "(run kdst results again)")
        rows = stats[metric]
        if self.counts is None:
            self.counts = metrics.resample_counts(len(rows), self.bootstrap.samples, self.bootstrap.seed)
        elif self.counts.shape[1] != len(rows):
            raise KdstError(f"{decode_dir / 'hyp.txt'}: {len(rows)} utterances scored, the other systems "
                            f"{self.counts.shape[1]}")
        values, samples = self.values.setdefault(run, {}), self.samples.setdefault(run, {})
        values[metric] = float(metrics.score_from_stats(metric, rows.sum(axis=0))[0])
        samples[metric] = metrics.bootstrap_scores(metric, rows, self.counts)
        if metric == "bleu":  # sacrebleu's BLEU statistics begin with the hypothesis and reference lengths
            lengths = self.counts @ rows[:, :2]
            values[LENGTH_RATIO] = float(rows[:, 0].sum() / rows[:, 1].sum())
            samples[LENGTH_RATIO] = lengths[:, 0] / lengths[:, 1]


def compare(test: Test, rows: dict[str, dict], hypotheses: Hypotheses | None) -> dict:
    """The outcome of one comparison: both groups' values, Δ (system − other), p, the seeds whose pair
    goes the claimed way, the verdict, and where the test came from."""
    out = {**dataclasses.asdict(test), "value": None, "other_value": None, "delta": None, "p": None,
           "agreeing": 0, "pairs": 0, "tested_in": None}
    missing = [g for g in (test.system, test.other) if g not in rows]
    if missing:
        out.update(verdict=NOT_MEASURED, unmeasured="no result for " + " and ".join(f"`{g}`" for g in missing))
        return out
    row, other = rows[test.system], rows[test.other]
    recorded = row["baseline"] == other["key"] and row["p"] and test.metric in row["p"]
    if recorded:  # the test results.json holds
        out.update(value=row["mean"][test.metric], other_value=other["mean"][test.metric],
                   delta=row["delta"][test.metric], p=row["p"][test.metric], pairs=len(row["pairs"]),
                   agreeing=sum(gain(test.better, delta[test.metric], 0.0) > 0 for e in row["entries"]
                                if (delta := (e.get("significance") or {}).get("delta"))),
                   tested_in=RESULTS_JSON)
        out["verdict"] = comparison_verdict(gain(test.better, out["delta"], 0.0), out["p"])
        return out
    if hypotheses is None:
        out.update(verdict=NOT_MEASURED, unmeasured=f"no test: {RESULTS_JSON} was scored with --bootstrap-samples 0")
        return out
    pairs = significance.pairs(_as_row(row), _as_row(other))
    if not pairs:
        out.update(verdict=NOT_MEASURED, unmeasured=f"no seed of `{test.system}` that `{test.other}` was trained with")
        return out
    got = {run: hypotheses.get(run, test.metric) for pair in pairs for run in pair}
    gains = [gain(test.better, got[a][0], got[b][0]) for a, b in pairs]
    observed = float(np.mean(gains))
    resampled = np.mean([gain(test.better, got[a][1], got[b][1]) for a, b in pairs], axis=0)
    mean = {g: float(np.mean([hypotheses.get(r, test.metric)[0] for r in rows[g]["runs"]]))
            for g in (test.system, test.other)}
    out.update(value=mean[test.system], other_value=mean[test.other],
               delta=float(np.mean([got[a][0] - got[b][0] for a, b in pairs])),
               p=round(metrics.paired_p_value(observed, resampled, hypotheses.bootstrap.test), 4),
               pairs=len(pairs), agreeing=sum(g > 0 for g in gains), tested_in="the hypotheses")
    out["verdict"] = comparison_verdict(observed, out["p"])
    return out


def _as_row(row: dict) -> significance.Row:
    return significance.Row(row["name"], tuple(row["runs"]), tuple(row["seeds"]))


def bootstrap_of(results: dict) -> significance.Bootstrap | None:
    """The resampling ``kdst results`` used (from any run's record); None without intervals."""
    for entry in results.values():
        record = entry.get("significance") if isinstance(entry, dict) else None
        if record and record.get("samples"):
            return significance.Bootstrap(record["samples"], record["seed"], record["test"])
    return None


# --- the invocation log ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Invocation:
    started: str
    seconds: int
    exit: int
    commit: str
    nproc: int
    cpu: str
    mem_kb: int
    registered: tuple[str, ...]
    command: str


def read_invocations(path: str | Path) -> list[Invocation]:
    path = Path(path)
    if not path.is_file():
        raise KdstError(f"{path}: no invocation log (the study script writes it as it runs)")
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(FIELDS):
            raise DataError(path, f"{len(fields)} tab-separated fields, expected {len(FIELDS)} "
                                  f"({' '.join(FIELDS)})", number)
        raw = dict(zip(FIELDS, fields))
        try:
            out.append(Invocation(raw["started"], int(raw["seconds"]), int(raw["exit"]), raw["commit"],
                                  int(raw["nproc"]), raw["cpu"].strip(), int(raw["mem_kb"]),
                                  tuple(raw["registered"].split()), raw["command"]))
        except ValueError as e:
            raise DataError(path, f"seconds, exit, nproc and mem_kb are whole numbers ({e})", number) from None
    if not out:
        raise DataError(path, "empty: no invocation recorded")
    return out


def duration(seconds: int) -> str:
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    text = f"{h} h {m} min {s} s" if h else f"{m} min {s} s" if m else f"{s} s"
    return text + (f" ({seconds} s)" if seconds >= 60 else "")


def machine(inv: Invocation) -> str:
    return f"{inv.nproc} cores (`nproc`), {inv.cpu or 'CPU model unknown'}, {inv.mem_kb / 2**20:.1f} GiB RAM"


def run_lines(invocations: list[Invocation]) -> list[str]:
    """The header lines: the command and its invocations (every one of the last line's command)."""
    last = invocations[-1]
    mine = [i for i in invocations if i.command == last.command]
    lines = [f"- **Command** (from the repository root): `{last.command}`",
             f"- **Date**: started {mine[0].started.replace('T', ' ')}"]
    total = sum(i.seconds for i in mine)
    wall = f"- **Wall time**: {duration(total)}"
    if len(mine) > 1:
        wall += (f" over {len(mine)} invocations of the command (" +
                 "; ".join(f"{duration(i.seconds)}, exit {i.exit}" for i in mine) + ")")
    lines.append(wall)
    machines = list(dict.fromkeys(machine(i) for i in mine))
    lines.append(f"- **Machine**: {machines[-1]}" + (f" (earlier invocations: {'; '.join(machines[:-1])})"
                                                      if len(machines) > 1 else ""))
    commits = list(dict.fromkeys(i.commit for i in mine))
    lines.append(f"- **Commit**: {commits[-1]}" + (f" (earlier invocations: {', '.join(commits[:-1])})"
                                                    if len(commits) > 1 else ""))
    reused = mine[0].registered
    lines.append("- **Reused**: " + (f"trained before the study began, and not again: {' '.join(reused)}"
                                     if reused else "nothing: every system was trained by the study"))
    return lines


# --- the document -------------------------------------------------------------------------------

def _number(value: float | None, digits: int = 2, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _p(p: float | None) -> str:
    return "-" if p is None else f"{p:.3f}"


def table_lines(rows: list[dict], spec: Spec) -> list[str]:
    primary = spec.metrics[0]
    bases = {r["baseline"] for r in rows if r["baseline"]}
    baseline_rows = {r["key"] for r in rows} & bases
    with_seeds = any(len(r["runs"]) > 1 for r in rows)
    with_ratio = any("len_ratio" in r for r in rows)
    header = ["system", *(["seeds"] if with_seeds else [])]
    for m in spec.metrics:
        header += [metrics.LABELS[m], "95% CI"]
    header += [*(["len ratio"] if with_ratio else []), f"Δ{metrics.LABELS[primary]}", "p",
               *(["against"] if len(bases) > 1 else [])]
    body = []
    for r in rows:
        cells = [f"`{r['name']}`" + (" (teacher)" if r["role"] == "teacher" else ""),
                 *([significance.seeds_cell(r)] if with_seeds else [])]
        for m in spec.metrics:
            value = _number(r["mean"][m]) + (f" ± {r['sd'][m]:.2f}" if "sd" in r else "")
            mark = significance.MARK if r["p"] and r["p"].get(m, 1.0) < metrics.SIGNIFICANCE_LEVEL else ""
            ci = r["ci"][m] if r["ci"] else None
            cells += [value + mark, f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "-"]
        if with_ratio:
            ratio = r.get("len_ratio")
            cells.append("-" if ratio is None else f"{ratio:.3f}" + (f" ± {r['len_ratio_sd']:.3f}"
                                                                      if "len_ratio_sd" in r else ""))
        if r["key"] in baseline_rows:
            cells += ["(baseline)", "-"]
        else:
            cells += [_number((r["delta"] or {}).get(primary), sign=True), _p((r["p"] or {}).get(primary))]
        if len(bases) > 1:
            cells.append(f"`{r['baseline']}`" if r["baseline"] else "-")
        body.append(cells)
    return markdown_table(header, body)


def outcome_text(o: dict) -> str:
    label = LABELS[o["metric"]]
    if o["verdict"] == NOT_MEASURED and o.get("unmeasured"):
        return f"`{o['system']}` vs `{o['other']}`, {label}: not measured ({o['unmeasured']})"
    digits = 3 if o["metric"] == LENGTH_RATIO else 2
    way = {"higher": "higher is better", "lower": "lower is better", "closer_to_1": "closer to 1 is better"}
    return (f"`{o['system']}` vs `{o['other']}`, {label} ({way[o['better']]}): {_number(o['value'], digits)} vs "
            f"{_number(o['other_value'], digits)}, Δ {_number(o['delta'], digits, sign=True)}, p {_p(o['p'])}, "
            f"{o['agreeing']} of {o['pairs']} seed pairs the claimed way (tested in {o['tested_in']})")


def findings_lines(findings: list[dict], spec_link: str) -> list[str]:
    rows = []
    for f in findings:
        d = f["deciding"]
        measured = (d["unmeasured"] if d.get("unmeasured") else
                    f"`{d['system']}` vs `{d['other']}`: {LABELS[d['metric']]} "
                    f"{_number(d['delta'], 3 if d['metric'] == LENGTH_RATIO else 2, sign=True)}")
        rows.append([f["claim"], f["source"], measured, _p(d["p"]), f"**{f['verdict']}**"])
    lines = ["## Findings", "",
             f"Each published finding as comparisons on this study's results (spec: {spec_link}). A comparison "
             f"*holds* when the difference goes the way the finding says and p < {metrics.SIGNIFICANCE_LEVEL}, "
             f"*does not hold* when it goes the other way and p < {metrics.SIGNIFICANCE_LEVEL}, and is *not "
             "significant* otherwise. A finding holds when every comparison holds and does not hold when any "
             "goes significantly the other way; its row gives the comparison it rests on (the weakest that "
             "holds, the strongest contradiction). Against a row's baseline the test is the one in "
             f"{RESULTS_JSON}; any other comparison is the same paired bootstrap over the same resamples, "
             "computed from the hypotheses, seed paired with seed.", "",
             *markdown_table(["finding", "source", "measured", "p", "verdict"], rows), ""]
    for f in findings:
        lines.append(f"- **{f['claim']}** ({f['source']}): {f['verdict']}")
        lines += [f"  - {outcome_text(o)}" for o in f["outcomes"]]
        if f["comment"]:
            lines.append(f"  - Comment (the study's author, not computed): {f['comment']}")
    return lines


def plot(rows: list[dict], metric: str, test_set: str, path: Path) -> None:
    """The metric per row: a bar at the mean, the 95% interval as the error bar, a dot per seed's run."""
    names = [r["name"] for r in rows]
    bases = {r["baseline"] for r in rows if r["baseline"]}
    colors = ["tab:gray" if r["role"] == "teacher" else "tab:orange" if r["key"] in bases else "tab:blue"
              for r in rows]
    values = [r["mean"][metric] for r in rows]
    errors = None
    if all(r["ci"] for r in rows):
        errors = [[max(0.0, v - r["ci"][metric][0]) for v, r in zip(values, rows)],
                  [max(0.0, r["ci"][metric][1] - v) for v, r in zip(values, rows)]]
    fig, (ax,) = figure(1, max(5.0, 0.8 * len(names) + 2.0))
    bars = ax.bar(range(len(names)), values, color=colors, yerr=errors, capsize=3, ecolor="dimgray")
    ax.bar_label(bars, fmt="%.2f", padding=2, fontsize=7)
    for i, r in enumerate(rows):
        if len(r["runs"]) > 1:
            runs = [e[metric] for e in r["entries"]]
            ax.plot([i] * len(runs), runs, "o", color="black", markersize=3)
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(metrics.LABELS[metric])
    ax.margins(y=0.15)
    ax.set_title(f"{metrics.LABELS[metric]} per system ({test_set})\nbars: mean over the seeds"
                 f"{', whiskers: 95% CI' if errors else ''}, dots: each seed; baseline orange, teacher gray",
                 fontsize=9)
    save_png(fig, path)


def write_report(exp_root: str | Path, spec_path: str | Path, out: str | Path, invocations_path: str | Path, *,
                 data_root: str | Path | None = None, test_set: str | None = None, text: str = "text") -> dict:
    """Write ``out`` (markdown) and its chart; returns what it found: {"rows", "findings"}."""
    exp_root, out = Path(exp_root), Path(out)
    spec = load_spec(spec_path)
    test_set = test_set or spec.set
    invocations = read_invocations(invocations_path)
    path = exp_root / RESULTS_JSON
    if not path.is_file():
        raise KdstError(f"{path}: missing (run kdst results first)")
    results = json.loads(path.read_text())
    registered = manifest.read_systems(exp_root)
    rows = table_rows(results, registered, test_set, spec.metrics)
    # parallel training registers in the order jobs finish: the spec's order is the document's
    rank = {name: i for i, name in enumerate(spec.rows)}
    rows.sort(key=lambda r: rank.get(r["name"], len(rank)))
    if not rows:
        raise KdstError(f"{path}: no system of {manifest.manifest_path(exp_root)} scored on {test_set}")
    by_group = {r["name"]: r for r in rows}
    bootstrap = bootstrap_of(results)
    hypotheses = None
    if bootstrap is not None:
        data_root = exp_root.parent / "data" if data_root is None else Path(data_root)
        hypotheses = Hypotheses(exp_root, data_root, test_set, text, results, bootstrap)
    found = []
    for finding in spec.findings:
        outcomes = [compare(t, by_group, hypotheses) for t in tests_of(finding, spec)]
        verdict = finding_verdict([o["verdict"] for o in outcomes])
        found.append({"claim": finding.claim, "source": finding.source, "comment": finding.comment,
                      "verdict": verdict, "outcomes": outcomes, "deciding": deciding(outcomes, verdict)})
    chart = out.with_suffix(".png")
    plot(rows, spec.metrics[0], test_set, chart)
    n = rows[0]["entries"][0].get("n")
    lines = [f"# {spec.title}", "", *run_lines(invocations), "",
             f"## Results ({test_set}{f', {n} utterances' if n else ''})", "", *table_lines(rows, spec), ""]
    lines += _footnote(bootstrap, any("len_ratio" in r for r in rows))
    lines += ["", chart_link(chart.name, f"{metrics.LABELS[spec.metrics[0]]} per system"), ""]
    if found:
        spec_path = Path(os.path.relpath(Path(spec_path).resolve(), out.resolve().parent))
        lines += findings_lines(found, f"[{spec_path.name}]({spec_path.as_posix()})")
    write_markdown(out, "\n".join(lines) + "\n")
    return {"rows": rows, "findings": found}


def _footnote(bootstrap: significance.Bootstrap | None, with_ratio: bool = True) -> list[str]:
    """``with_ratio``: the table has the length ratio column (BLEU was scored; not in an ASR or RNN-T study)."""
    lines = ["mean ± sd: over the seeds of a system (sample standard deviation; no ± for a system trained once)." +
             (" len ratio: hypothesis / reference length in BLEU tokens (below 1: outputs too short), mean ± sd."
              if with_ratio else "")]
    if bootstrap is None:
        return lines + ["No confidence intervals or tests: results.json was scored with --bootstrap-samples 0."]
    return lines + [
        f"95% CI: bootstrap percentile interval of the mean over the seeds, {bootstrap.samples} resamples of the "
        f"test utterances (seed {bootstrap.seed}). Δ and p: against the baseline, each seed's run paired with the "
        f"baseline's run of the same seed, paired bootstrap test ({bootstrap.test}); {significance.MARK}: p < "
        f"{metrics.SIGNIFICANCE_LEVEL} in that metric. How: docs/RESULTS_FORMAT.md."]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exp-dir", type=Path, default=Path("exp"), help="where results.json and systems.json are")
    parser.add_argument("--data-dir", type=Path, help="the references of the comparisons (default: data/ beside "
                                                      "--exp-dir)")
    parser.add_argument("--findings", required=True, type=Path, help="the findings spec (YAML; docs/results/findings/)")
    parser.add_argument("--invocations", required=True, type=Path,
                        help="the study script's invocation log (tab-separated: " + " ".join(FIELDS) + ")")
    parser.add_argument("--out", required=True, type=Path, help="the markdown to write; the chart goes beside it "
                                                                "(.png)")
    parser.add_argument("--set", dest="test_set", help="the evaluation set (default: the spec's)")
    parser.add_argument("--text", default="text", help="reference file of the set's data dir")


def run(args: argparse.Namespace) -> int:
    found = write_report(args.exp_dir, args.findings, args.out, args.invocations, data_root=args.data_dir,
                         test_set=args.test_set, text=args.text)
    for f in found["findings"]:
        print(f"{f['verdict']}: {f['claim']}")
    print(f"{args.out}: written")
    return 0
