"""Confidence intervals and paired significance tests for the report tables.

Each report (``kdst results``, ``kdst compression``, ``kdst rnnt-report``) draws S resamples of
a test set's utterances (1,000 unless told, one seed: the same draws for every system of the
set) and scores every system on each from its per-utterance statistics (kdst.metrics).  From
these come, per system and metric,

- a 95% confidence interval: the bootstrap percentile interval;
- a p-value against the baseline: the paired bootstrap test over those resamples
  (``metrics.paired_p_value``), the same for every metric; RESULTS.md marks p < 0.05 with a
  dagger.  The resamples and each resampled BLEU, chrF and TER are sacrebleu's own; the test
  is the centred one unless ``--significance-test sacrebleu`` asks for sacrebleu's formula,
  which finds twice too many differences between equally good systems (docs/RESULTS_FORMAT.md).
  results.json carries sacrebleu's p-value too (``p_sacrebleu``), equal to its ``--paired-bs``.

A row of a table is a group (``kdst.report.systems``): one system, or the runs of one system
under several seeds.  Its value is the mean over its runs (± their sample standard deviation),
its interval that of the mean over its runs on each resample, and its test pairs each run with
the baseline's run of the same seed (with the one run of a baseline trained once): the
difference is the mean over those pairs of (run − its baseline run), on the test set and on each
resample alike.  docs/RESULTS_FORMAT.md says the same for the reader of the tables.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import sacrebleu

from kdst import metrics
from kdst.errors import KdstError
from kdst.report import systems as manifest

MARK = "†"


@dataclasses.dataclass(frozen=True)
class Bootstrap:
    samples: int = metrics.BOOTSTRAP_SAMPLES  # 0: no intervals, no tests
    seed: int = metrics.BOOTSTRAP_SEED
    test: str = "centred"  # which p-value the marks use: one of metrics.SIGNIFICANCE_TESTS

    def __post_init__(self):
        if self.test not in metrics.SIGNIFICANCE_TESTS:
            raise KdstError(f"--significance-test {self.test}: one of {', '.join(metrics.SIGNIFICANCE_TESTS)}")
        if self.samples < 0:
            raise KdstError(f"--bootstrap-samples {self.samples}: the number of resamples, 0 for none")
        if self.seed < 0:
            raise KdstError(f"--bootstrap-seed {self.seed}: a seed is 0 or more")

    @property
    def enabled(self) -> bool:
        return self.samples > 0

    def record(self) -> dict:
        """What results.json says of the resampling."""
        return {"samples": self.samples, "seed": self.seed, "test": self.test, "level": metrics.SIGNIFICANCE_LEVEL,
                "sacrebleu": sacrebleu.__version__}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap-samples", type=int, default=metrics.BOOTSTRAP_SAMPLES, metavar="S",
                        help="resamples of the test utterances for the confidence intervals and the paired "
                             f"tests against the baseline (default {metrics.BOOTSTRAP_SAMPLES}; 0: none)")
    parser.add_argument("--bootstrap-seed", type=int, default=metrics.BOOTSTRAP_SEED, metavar="SEED",
                        help=f"seed of the resamples (default {metrics.BOOTSTRAP_SEED}, sacrebleu's)")
    parser.add_argument("--significance-test", choices=metrics.SIGNIFICANCE_TESTS, default="centred",
                        help="the p-value that marks a difference: the centred paired bootstrap (default) or "
                             "sacrebleu's formula (results.json has both)")


def from_args(args: argparse.Namespace) -> Bootstrap:
    return Bootstrap(args.bootstrap_samples, args.bootstrap_seed, args.significance_test)


class Resamples:
    """One evaluation set: every run's scores on it and, with the bootstrap on, on each resample."""

    def __init__(self, bootstrap: Bootstrap, tokenize: str = "13a"):
        self.bootstrap = bootstrap
        self.tokenize = tokenize
        self.counts: np.ndarray | None = None
        self.utterances: int | None = None
        self.scores: dict[str, dict[str, float]] = {}  # run key -> metric -> unrounded corpus score
        self.samples: dict[str, dict[str, np.ndarray]] = {}  # run key -> metric -> score on each resample

    def add(self, key: str, stats: dict[str, np.ndarray]) -> None:
        """Score the run ``key`` from its per-utterance statistics (``metrics.score_pairs``)."""
        n = len(next(iter(stats.values())))
        if self.utterances is None:
            self.utterances = n
            if self.bootstrap.enabled:
                self.counts = metrics.resample_counts(n, self.bootstrap.samples, self.bootstrap.seed)
        elif n != self.utterances:  # read_pairs matches every run to the same references: a bug if so
            raise KdstError(f"{key}: {n} utterances scored where the other systems of its set have {self.utterances}")
        self.scores[key] = {m: float(metrics.score_from_stats(m, s.sum(axis=0), tokenize=self.tokenize)[0])
                            for m, s in stats.items()}
        if self.counts is not None:
            self.samples[key] = {m: metrics.bootstrap_scores(m, s, self.counts, tokenize=self.tokenize)
                                 for m, s in stats.items()}


@dataclasses.dataclass(frozen=True)
class Row:
    """A line of a table: a group's runs (result keys) and their seeds."""
    name: str
    runs: tuple[str, ...]
    seeds: tuple[int | None, ...]


def groups(systems: list[str], registered: list[manifest.System]) -> dict[str, list[str]]:
    """{group: its systems among ``systems``}, groups in the order of their first system; a system
    the manifest lacks is a group of its own."""
    labels = manifest.by_name(registered)
    out: dict[str, list[str]] = {}
    for name in dict.fromkeys(systems):
        out.setdefault(labels[name].group_name if name in labels else name, []).append(name)
    return out


def rows(grouped: dict[str, list[str]], registered: list[manifest.System], key=lambda system: system,
         label=lambda group: group) -> list[Row]:
    """A Row per group; ``key`` maps a system to its results key, ``label`` a group to the row's name."""
    seeds = {s.name: s.seed for s in registered}
    return [Row(label(group), tuple(key(s) for s in members), tuple(seeds.get(s) for s in members))
            for group, members in grouped.items()]


def resolve_baseline(option: str | None, systems: list[str], registered: list[manifest.System],
                     exp_root) -> str | None:
    """The group the others are tested against: ``option`` (a system or a group), else the one the manifest
    marks as the baseline, else the one group of students that learnt from the references alone
    (``manifest.REFERENCE_MODES``, not fine-tuned); None when none of these says."""
    grouped = groups(systems, registered)
    group_of = {s: g for g, members in grouped.items() for s in members}
    if option is not None:
        if option in grouped:
            return option
        if option in group_of:
            return group_of[option]
        raise KdstError(f"--baseline {option}: not among the systems ({' '.join(systems)})")
    labels = [s for s in registered if s.name in group_of]
    marked = list(dict.fromkeys(group_of[s.name] for s in labels if s.baseline))
    if len(marked) > 1:
        raise KdstError(f"{manifest.manifest_path(exp_root)}: {len(marked)} baselines registered among the systems "
                        f"({' '.join(marked)}): say which with --baseline")
    if marked:
        return marked[0]
    plain = list(dict.fromkeys(group_of[s.name] for s in labels if s.role == "student"
                               and s.mode in manifest.REFERENCE_MODES and s.init is None))
    return plain[0] if len(plain) == 1 else None


def arch_baselines(systems: list[str], registered: list[manifest.System]) -> dict[str, str]:
    """{group: its baseline group} where no one baseline is (several student groups learnt from the references
    alone, e.g. the RNN-T recipe's none student of each architecture): a student group's is the one such
    group of its architecture, when there is exactly one and it is not the group itself."""
    grouped = groups(systems, registered)
    labels = manifest.by_name(registered)
    first = {group: labels.get(members[0]) for group, members in grouped.items()}
    plain: dict[str, list[str]] = {}
    for group, label in first.items():
        if label is not None and label.role == "student" and label.mode in manifest.REFERENCE_MODES \
                and label.init is None:
            plain.setdefault(label.arch, []).append(group)
    out = {}
    for group, label in first.items():
        same_arch = plain.get(label.arch, []) if label is not None and label.role == "student" else []
        if len(same_arch) == 1 and same_arch[0] != group:
            out[group] = same_arch[0]
    return out


def pairs(row: Row, baseline: Row) -> list[tuple[str, str]]:
    """(run, baseline run) pairs: the baseline's run of the same seed, or its only run; a run whose seed
    the baseline lacks is left out."""
    if len(baseline.runs) == 1:
        return [(run, baseline.runs[0]) for run in row.runs]
    by_seed = {seed: run for run, seed in zip(baseline.runs, baseline.seeds) if seed is not None}
    return [(run, by_seed[seed]) for run, seed in zip(row.runs, row.seeds) if seed in by_seed]


def summarise(res: Resamples, row: Row, baseline: Row | None, metric_names) -> dict:
    """A row's numbers, rounded for results.json: ``mean`` (its one run's score), ``sd`` (several runs),
    ``ci`` (with the bootstrap on), and against a baseline other than itself ``baseline``, ``pairs``,
    ``delta``, ``p`` and ``p_sacrebleu`` (the p-values with the bootstrap on; all null without a pair)."""
    metric_names = list(metric_names)
    on = res.bootstrap.enabled
    out: dict = {"runs": list(row.runs), "seeds": list(row.seeds)}
    values = {m: np.array([res.scores[k][m] for k in row.runs]) for m in metric_names}
    out["mean"] = {m: round(float(v.mean()), 2) for m, v in values.items()}
    if len(row.runs) > 1:
        out["sd"] = {m: round(float(v.std(ddof=1)), 2) for m, v in values.items()}
    if on:
        out["ci"] = {m: [round(x, 2) for x in metrics.confidence_interval(
            np.mean([res.samples[k][m] for k in row.runs], axis=0))] for m in metric_names}
    if baseline is None or baseline.name == row.name:
        return out
    matched = pairs(row, baseline)
    out.update(baseline=baseline.name, pairs=[list(p) for p in matched])
    if not matched:  # seeds the baseline has no run of
        out.update(delta=None, p=None, p_sacrebleu=None)
        return out
    observed = {m: float(np.mean([res.scores[a][m] - res.scores[b][m] for a, b in matched])) for m in metric_names}
    out["delta"] = {m: round(d, 2) + 0.0 for m, d in observed.items()}  # + 0.0: no -0.0
    if on:
        resampled = {m: np.mean([res.samples[a][m] - res.samples[b][m] for a, b in matched], axis=0)
                     for m in metric_names}
        for field, test in (("p", res.bootstrap.test), ("p_sacrebleu", "sacrebleu")):
            out[field] = {m: round(metrics.paired_p_value(observed[m], resampled[m], test), 4) for m in metric_names}
    return out


def run_record(summary: dict, bootstrap: Bootstrap) -> dict:
    """What results.json says of one run (a system trained once, or one seed's): how it was resampled, its
    interval, and its test against the baseline run it was paired with."""
    return {**bootstrap.record(), "ci": summary.get("ci"), "baseline": summary.get("baseline"),
            "paired_with": summary["pairs"][0][1] if summary.get("pairs") else None,
            "delta": summary.get("delta"), "p": summary.get("p"), "p_sacrebleu": summary.get("p_sacrebleu")}


def significant(summary: dict | None, metric: str) -> bool:
    p = (summary or {}).get("p") or {}
    return metric in p and p[metric] < metrics.SIGNIFICANCE_LEVEL


def value_cell(summary: dict, metric: str) -> str:
    """``12.31``, ``± sd`` over seeds, ``[low, high]`` and the mark when significant."""
    text = f"{summary['mean'][metric]:.2f}"
    if "sd" in summary:
        text += f" ± {summary['sd'][metric]:.2f}"
    if "ci" in summary:
        low, high = summary["ci"][metric]
        text += f" [{low:.2f}, {high:.2f}]"
    return text + (MARK if significant(summary, metric) else "")


def delta_cell(summary: dict, metric: str) -> str:
    """The signed difference to the baseline; the baseline's own row reads +0.00, no pair reads -."""
    if "baseline" not in summary:
        return "+0.00"
    delta = summary.get("delta")
    return "-" if delta is None else f"{delta[metric]:+.2f}"


def p_cell(summary: dict, metric: str) -> str:
    p = summary.get("p")
    return "-" if not p else f"{p[metric]:.3f}"


def seeds_cell(summary: dict) -> str:
    seeds = [s for s in summary["seeds"] if s is not None]
    return " ".join(str(s) for s in seeds) or "-"


def footnote(bootstrap: Bootstrap, against: str | None, *, p_metric: str | None = None,
             seeds: bool = False) -> list[str]:
    """What the intervals, marks and ± of a table mean; ``against`` says what the tests compare with."""
    if not bootstrap.enabled:
        lines = ["No confidence intervals or significance tests (--bootstrap-samples 0)."]
    else:
        lines = [f"[low, high]: 95% confidence interval, the bootstrap percentile interval over "
                 f"{bootstrap.samples} resamples of the test utterances (seed {bootstrap.seed})."]
        if against:
            p_text = f"; p: its p-value for {metrics.LABELS[p_metric]}" if p_metric else ""
            formula = ("p = (#{|Δ* − mean Δ*| ≥ |Δ|} + 1) / (resamples + 1)" if bootstrap.test == "centred" else
                       f"sacrebleu {sacrebleu.__version__}'s formula, p = (#{{|Δ*| − mean |Δ*| > |Δ|}} + 1) / "
                       "(resamples + 1)")
            lines.append(
                f"{MARK}: differs from {against} at p < {metrics.SIGNIFICANCE_LEVEL}{p_text}.  Paired bootstrap test "
                f"over the same resamples (sacrebleu {sacrebleu.__version__}'s draws and BLEU, chrF and TER; WER and "
                f"CER from per-utterance error counts), two-sided, Δ the difference in the metric: {formula}.")
    if seeds:
        lines.append("mean ± sd: over the seeds of a system (sample standard deviation); its interval and test "
                     "are those of the mean over its seeds, each seed's run paired with the baseline's run of the "
                     "same seed (or its only run).")
    return lines
