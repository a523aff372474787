"""``kdst rescore``: pick one distillation target per utterance from a teacher's n-best list.

Sequence-level knowledge distillation (Seq-KD, Kim & Rush 2016) trains the
student on the teacher's beam-search 1-best; *sequence interpolation* instead
takes, among the teacher's n-best, the hypothesis closest to the reference
(sentence BLEU in the paper, among 35), which keeps the student near both the
teacher and the data.  Both are one rule here: score every hypothesis of an
utterance with a *scorer* and keep the highest; on a tie the better-ranked
hypothesis wins, so a flat scorer falls back to Seq-KD.

The input is the ``nbest.txt`` of ``kdst decode`` or ``kdst nbest-union``
(kdst.teacher.nbest, docs/FORMATS.md)::

    <utt>-<rank> <score> <logprob> <text>

and the output a Kaldi ``text`` file ``<utt> <chosen text>`` to train on.

Scorers (``--metric``), higher is better:

- ``rank``     minus the rank: the 1-best (Seq-KD)
- ``bleu``     sentence BLEU against the reference (sacrebleu, effective order)
- ``chrf``     sentence chrF against the reference
- ``ter``      minus sentence TER against the reference
- ``mbr``      reference-free: minimum Bayes risk, the hypothesis the rest of the n-best
               agrees with most (``mbr_expected_utilities``)
- ``qe:MODULE:FUNCTION``  reference-free: a quality-estimation model's score of each
               hypothesis given the source text (kdst.teacher.qe; needs ``--src``)

There was a ``logprob`` scorer, the highest length-normalised score: that is the
ranking itself, so it always chose the 1-best; it is gone (``rank`` is the same).

Adding a scorer: write a function ``(entries, reference, source) -> list[float]``
(one value per NbestEntry of the utterance, higher is better; ``reference`` and
``source`` are None for a scorer that needs none) and add it to ``SCORERS`` as
``Scorer(name, function, help, needs_reference=...)``, or build it in ``make_scorer``
when it takes options.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Sequence

import numpy as np
from sacrebleu.metrics import BLEU, CHRF, TER

from kdst.data.files import atomic_write_text
from kdst.data.kaldi_dir import c_sort_key, read_kv
from kdst.errors import DataError, KdstError
from kdst.teacher import qe
from kdst.teacher.nbest import POSTERIORS, NbestEntry, first_utterance, normalise_text, posteriors, read_nbest

__all__ = ["SCORERS", "MBR_UTILITIES", "NbestEntry", "Scorer", "make_scorer", "mbr_expected_utilities",
           "read_nbest", "rescore", "utility_matrix"]

# --- scorers ------------------------------------------------------------------------------------

ScoreFunction = Callable[[Sequence[NbestEntry], "str | None", "str | None"], list[float]]


@dataclass(frozen=True)
class Scorer:
    name: str
    function: ScoreFunction = field(repr=False)
    help: str
    needs_reference: bool = False
    needs_source: bool = False
    options: dict = field(default_factory=dict)  # what the statistics record besides the name

    def __call__(self, entries: Sequence[NbestEntry], reference: str | None, source: str | None) -> list[float]:
        return self.function(entries, reference, source)


# Built once: sacrebleu metric objects hold no per-sentence state, and building one per call
# would dominate the time on a large training set.
_BLEU = BLEU(effective_order=True)  # short sentences have no 4-grams; without it they all score 0
_CHRF = CHRF()
_TER = TER()


def sentence_bleu(hypothesis: str, reference: str) -> float:
    return _BLEU.sentence_score(hypothesis, [reference]).score


def _by_rank(entries, reference, source) -> list[float]:
    return [-float(e.rank) for e in entries]


def _by_bleu(entries, reference, source) -> list[float]:
    return [sentence_bleu(e.text, reference) for e in entries]


def _by_chrf(entries, reference, source) -> list[float]:
    return [_CHRF.sentence_score(e.text, [reference]).score for e in entries]


def _by_ter(entries, reference, source) -> list[float]:
    return [-_TER.sentence_score(e.text, [reference]).score for e in entries]


# --- minimum Bayes risk -------------------------------------------------------------------------

MBR_UTILITIES = {"chrf": _CHRF, "bleu": _BLEU}


def utility_matrix(texts: Sequence[str], utility: str = "chrf") -> list[list[float]]:
    """``u[i][j]``: sacrebleu's sentence ``utility`` of ``texts[i]`` with ``texts[j]`` as the reference.

    The same numbers as ``sentence_score(texts[i], [texts[j]])`` (the tests compare them): each
    text is tokenised and its n-grams counted once by sacrebleu, the n-gram matches of all pairs
    are counted at once (``_matches``), and sacrebleu turns each pair's counts into its score.
    sacrebleu alone counts every pair in a Python loop, ~0.2 ms for two 20-word sentences, and MBR
    over a 35-best scores ~1200 pairs per utterance.  ``u[i][i]`` is 100, full agreement, also for
    an empty text (sacrebleu gives an empty reference 0).
    """
    metric = MBR_UTILITIES.get(utility)
    if metric is None:
        raise KdstError(f"unknown MBR utility '{utility}' ({', '.join(MBR_UTILITIES)})")
    # A text's n-grams as a reference are also its n-grams as a hypothesis.
    refs = [metric._extract_reference_info([metric._preprocess_segment(t)]) for t in texts]
    n = len(texts)
    if metric is _CHRF:
        ngrams = [r["ref_ngrams"][0] for r in refs]  # a Counter per order: characters, then words
        stats = np.zeros((n, n, 3 * len(ngrams[0])), dtype=np.int64)
        for k in range(len(ngrams[0])):
            totals, matches = _matches([x[k] for x in ngrams])
            # As sacrebleu: a hypothesis's n-grams count only against a reference that has some of that order.
            stats[:, :, 3 * k] = totals[:, None] * (totals[None, :] > 0)
            stats[:, :, 3 * k + 1] = totals[None, :]
            stats[:, :, 3 * k + 2] = matches
        score = lambda i, j: _CHRF._compute_f_score(stats[i, j].tolist())  # noqa: E731
    else:
        orders = metric.max_ngram_order
        lengths = np.array([r["ref_lens"][0] for r in refs], dtype=np.int64)
        by_order = [[Counter({g: c for g, c in r["ref_ngrams"].items() if len(g) == k + 1}) for r in refs]
                    for k in range(orders)]
        stats = np.zeros((n, n, 2 + 2 * orders), dtype=np.int64)  # hyp len, ref len, correct by order, total
        stats[:, :, 0], stats[:, :, 1] = lengths[:, None], lengths[None, :]
        for k in range(orders):
            totals, matches = _matches(by_order[k])
            stats[:, :, 2 + k] = matches
            stats[:, :, 2 + orders + k] = totals[:, None]
        score = lambda i, j: metric._compute_score_from_stats(stats[i, j].tolist()).score  # noqa: E731
    return [[100.0 if i == j else score(i, j) for j in range(n)] for i in range(n)]


def _matches(ngrams: list[Counter]) -> tuple[np.ndarray, np.ndarray]:
    """Each text's number of n-grams, and the clipped matches Σ_g min(c_i(g), c_j(g)) of every pair."""
    index: dict = {}
    cells = [(i, index.setdefault(g, len(index)), c) for i, text in enumerate(ngrams) for g, c in text.items()]
    counts = np.zeros((len(ngrams), max(len(index), 1)), dtype=np.int64)
    for i, g, c in cells:
        counts[i, g] = c
    matches = np.stack([np.minimum(row, counts).sum(axis=1) for row in counts])
    return counts.sum(axis=1), matches


def mbr_expected_utilities(entries: Sequence[NbestEntry], utility: str = "chrf", posterior: str = "score",
                           scale: float = 1.0) -> list[float]:
    """The expected utility of each entry: Σ_y p(y) · u(h, y) over the n-best's distinct texts y.

    ``p`` is the n-best posterior (kdst.teacher.nbest.posteriors: ``posterior``, ``scale``),
    identical texts merged; ``u(h, y)`` is sentence ``utility`` with ``y`` as the reference.  The
    expectation includes ``y = h`` (at 100): it is over the teacher's distribution restricted to
    the n-best, and ``h`` is one of its outcomes.  Leaving it out would count a hypothesis's own
    probability against it (a 1-best of posterior 0.9 would be judged only by the other 0.1) and
    would make the choice among two hypotheses depend on nothing but each other.
    """
    dist = posteriors(entries, posterior, scale)
    texts = [t for _, t in dist]
    weights = [w for w, _ in dist]
    u = utility_matrix(texts, utility)
    expected = {t: sum(w * u[i][j] for j, w in enumerate(weights)) for i, t in enumerate(texts)}
    return [expected[normalise_text(e.text)] for e in entries]


def _by_mbr(utility: str, posterior: str, scale: float, cache: dict, entries, reference, source) -> list[float]:
    # The speed-perturbed copies of an utterance have the same source text, so an MT teacher gives
    # them the same n-best: scored once, not three times.
    key = tuple((e.score, e.logprob, e.text) for e in entries)
    if key not in cache:
        cache[key] = mbr_expected_utilities(entries, utility, posterior, scale)
    return cache[key]


def _by_qe(name: str, scorer: qe.QEScorer, entries, reference, source) -> list[float]:
    return qe.qe_scores(scorer, name, source, [e.text for e in entries])


SCORERS: dict[str, Scorer] = {
    "rank": Scorer("rank", _by_rank, "the teacher's 1-best (Seq-KD)"),
    "bleu": Scorer("bleu", _by_bleu, "highest sentence BLEU against the reference (sequence interpolation)",
                   needs_reference=True),
    "chrf": Scorer("chrf", _by_chrf, "highest sentence chrF against the reference", needs_reference=True),
    "ter": Scorer("ter", _by_ter, "lowest sentence TER against the reference", needs_reference=True),
}
MBR_HELP = ("reference-free: the hypothesis with the highest expected --mbr-utility against the n-best "
            "weighted by its --posterior")
QE_HELP = "reference-free: a QE model's score given the source (--src; kdst.teacher.qe)"


def make_scorer(metric: str, *, mbr_utility: str = "chrf", posterior: str = "score",
                scale: float = 1.0) -> Scorer:
    """The scorer ``--metric`` names: a key of ``SCORERS``, ``mbr`` or ``qe:MODULE:FUNCTION``."""
    if metric in SCORERS:
        return SCORERS[metric]
    if metric == "mbr":
        if mbr_utility not in MBR_UTILITIES:
            raise KdstError(f"unknown MBR utility '{mbr_utility}' ({', '.join(MBR_UTILITIES)})")
        if posterior not in POSTERIORS:
            raise KdstError(f"unknown posterior '{posterior}' ({', '.join(POSTERIORS)})")
        if not scale > 0.0:
            raise KdstError(f"--scale must be positive, not {scale}")
        return Scorer("mbr", partial(_by_mbr, mbr_utility, posterior, scale, {}), MBR_HELP,
                      options={"mbr_utility": mbr_utility, "posterior": posterior, "scale": scale})
    if qe.is_qe(metric):
        return Scorer(metric, partial(_by_qe, metric, qe.load_qe(metric)), QE_HELP, needs_source=True)
    raise KdstError(unknown_metric(metric))


def unknown_metric(metric: str) -> str:
    if metric == "logprob":
        return ("--metric logprob is gone: the teacher's length-normalised score is what it ranked by, so it "
                "always chose the 1-best (use rank for that, mbr or qe:MODULE:FUNCTION for a reference-free choice)")
    return f"unknown scorer '{metric}'; known: {', '.join(SCORERS)}, mbr, qe:MODULE:FUNCTION"


# --- selection ----------------------------------------------------------------------------------

def _check_references(nbest: dict, references: dict[str, str], ref_name: str) -> None:
    no_ref = [u for u in nbest if u not in references]
    if no_ref:
        more = f" (and {len(no_ref) - 1} more)" if len(no_ref) > 1 else ""
        raise KdstError(f"utterance '{first_utterance(no_ref)}' of the n-best list has no reference in "
                        f"{ref_name}{more}")
    no_hyp = [u for u in references if u not in nbest]
    if no_hyp:
        # Every training utterance needs a target; dropping some silently would shrink the data.
        raise KdstError(f"{len(no_hyp)} utterance(s) of {ref_name} have no hypotheses in the n-best list, "
                        f"the first '{first_utterance(no_hyp)}'")


def rescore(nbest: dict[str, list[NbestEntry]], references: dict[str, str] | None, scorer: str | Scorer,
            nbest_size: int | None = None, *, sources: dict[str, str] | None = None,
            ref_name: str = "the references", src_name: str = "the sources") -> tuple[dict[str, str], dict]:
    """Choose one hypothesis per utterance among its first ``nbest_size`` (all if None).

    ``scorer`` is a Scorer or a ``--metric`` name (``make_scorer`` with its defaults).
    Returns ``{utt: chosen text}`` and summary statistics: ``utterances``,
    ``mean_chosen_rank``, ``share_not_1best`` (0..1), ``chosen_rank_counts``,
    ``mean_words_1best``/``mean_words_chosen``, ``mean_score_1best``/``mean_score_chosen``
    (the scorer's value) and, with references, ``mean_bleu_1best``/``mean_bleu_chosen``
    (sentence BLEU, percent).  ``ref_name``/``src_name`` name the files in error messages.
    """
    score_fn = scorer if isinstance(scorer, Scorer) else make_scorer(scorer)
    if score_fn.needs_reference and references is None:
        raise KdstError(f"scorer '{score_fn.name}' compares with a reference; give references (--ref)")
    if score_fn.needs_source and sources is None:
        raise KdstError(f"scorer '{score_fn.name}' reads the source text; give it (--src)")
    if nbest_size is not None and nbest_size < 1:
        raise KdstError(f"n-best size must be at least 1, not {nbest_size}")
    if not nbest:
        raise KdstError("the n-best list has no utterances")
    if references is not None:
        _check_references(nbest, references, ref_name)
    if score_fn.needs_source:
        no_src = [u for u in nbest if u not in sources]
        if no_src:
            raise KdstError(f"{len(no_src)} utterance(s) of the n-best list have no source in {src_name}, "
                            f"the first '{first_utterance(no_src)}'")

    chosen: dict[str, str] = {}
    ranks: list[int] = []
    words_1best = words_chosen = 0
    bleu_1best = bleu_chosen = score_1best = score_chosen = 0.0
    candidates = 0
    for utt in sorted(nbest, key=c_sort_key):
        entries = nbest[utt][:nbest_size]
        if not entries:
            raise KdstError(f"utterance '{utt}' has no hypotheses")
        reference = references[utt] if references is not None and score_fn.needs_reference else None
        source = sources[utt] if score_fn.needs_source else None
        scores = score_fn(entries, reference, source)
        if len(scores) != len(entries):
            raise KdstError(f"scorer '{score_fn.name}' gave {len(scores)} scores for {len(entries)} hypotheses")
        # Entries are in rank order, so -i breaks ties towards the better rank.
        best = max(range(len(entries)), key=lambda i: (scores[i], -i))
        pick = entries[best]
        chosen[utt] = pick.text
        ranks.append(pick.rank)
        candidates += len(entries)
        words_1best += len(entries[0].text.split())
        words_chosen += len(pick.text.split())
        score_1best += scores[0]
        score_chosen += scores[best]
        if references is not None:
            first = sentence_bleu(entries[0].text, references[utt])
            bleu_1best += first
            bleu_chosen += first if best == 0 else sentence_bleu(pick.text, references[utt])

    n = len(chosen)
    counts: dict[str, int] = {}
    for r in sorted(ranks):
        counts[str(r)] = counts.get(str(r), 0) + 1
    stats: dict = {
        "scorer": score_fn.name,
        **score_fn.options,
        "nbest_size": nbest_size,
        "utterances": n,
        "mean_candidates": candidates / n,
        "mean_chosen_rank": sum(ranks) / n,
        "share_not_1best": sum(r != 1 for r in ranks) / n,
        "chosen_rank_counts": counts,
        "mean_words_1best": words_1best / n,
        "mean_words_chosen": words_chosen / n,
        "mean_score_1best": score_1best / n,
        "mean_score_chosen": score_chosen / n,
    }
    if references is not None:
        stats["mean_bleu_1best"] = bleu_1best / n
        stats["mean_bleu_chosen"] = bleu_chosen / n
    return chosen, stats


def format_summary(stats: dict) -> str:
    parts = [f"{stats['utterances']} utterances", f"scorer {stats['scorer']}",
             f"mean rank {stats['mean_chosen_rank']:.2f}",
             f"{100 * stats['share_not_1best']:.1f}% not the 1-best",
             f"words {stats['mean_words_1best']:.1f} -> {stats['mean_words_chosen']:.1f}"]
    if "mean_bleu_1best" in stats:
        parts.append(f"sentence BLEU {stats['mean_bleu_1best']:.2f} -> {stats['mean_bleu_chosen']:.2f}")
    return ", ".join(parts)


# --- command line -------------------------------------------------------------------------------

def metric_name(value: str) -> str:
    """argparse type of ``--metric``: a known name, or one of the ``qe:`` form (imported when run)."""
    if value in SCORERS or value == "mbr" or qe.is_qe(value):
        return value
    raise argparse.ArgumentTypeError(unknown_metric(value))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nbest", required=True,
                        help="nbest.txt of kdst decode or nbest-union (<utt>-<rank> <score> <logprob> <text>)")
    parser.add_argument("--out", required=True, help="Kaldi text file of the chosen targets")
    parser.add_argument("--ref", help="reference Kaldi text file: needed by bleu/chrf/ter, otherwise only "
                        "for the statistics (and then every utterance must be in both files)")
    parser.add_argument("--metric", default="rank", type=metric_name, metavar="METRIC",
                        help="; ".join(f"{k}: {s.help}" for k, s in SCORERS.items())
                        + f"; mbr: {MBR_HELP}; qe:MODULE:FUNCTION: {QE_HELP} (default: rank)")
    parser.add_argument("--mbr-utility", choices=list(MBR_UTILITIES), default="chrf",
                        help="mbr: the sentence metric between two hypotheses")
    parser.add_argument("--posterior", choices=POSTERIORS, default="score",
                        help="mbr: the hypotheses' weights, softmax(scale * v) over the n-best; v = score: "
                             "the length-normalised score the search ranked by, on the 1-best's scale; "
                             "logprob: the raw log-probability, which favours short hypotheses (docs/NBEST.md)")
    parser.add_argument("--scale", type=float, default=1.0, help="mbr: the posterior's scale (< 1 flattens it)")
    parser.add_argument("--src", help="source Kaldi text file (e.g. data/<train>/text.en): needed by qe:...")
    parser.add_argument("--nbest-size", type=int, metavar="N",
                        help="consider only the first N hypotheses (default: all)")
    parser.add_argument("--stats-json", metavar="FILE", help="write the summary statistics to FILE")


def run(args: argparse.Namespace) -> int:
    scorer = make_scorer(args.metric, mbr_utility=args.mbr_utility, posterior=args.posterior, scale=args.scale)
    nbest = read_nbest(args.nbest)
    if not nbest:
        raise DataError(args.nbest, "no hypotheses")
    references = read_kv(args.ref) if args.ref else None
    sources = read_kv(args.src, allow_empty_value=True) if args.src and scorer.needs_source else None
    chosen, stats = rescore(nbest, references, scorer, args.nbest_size, sources=sources,
                            ref_name=os.fspath(args.ref) if args.ref else "the references",
                            src_name=os.fspath(args.src) if args.src else "the sources")
    # As hyp.txt of kdst decode: C order, and an empty target is the bare id (no trailing space).
    lines = (f"{u} {chosen[u]}".rstrip() + "\n" for u in sorted(chosen, key=c_sort_key))
    atomic_write_text(args.out, "".join(lines))
    if args.stats_json:
        atomic_write_text(args.stats_json, json.dumps(stats, indent=1) + "\n")
    print(f"{args.out}: {format_summary(stats)}")
    return 0
