"""``kdst nbest-union``: one n-best list from several teachers' (an ensemble for Seq-KD, Seq-Inter, pseudo labels).

Each teacher's ``nbest.txt`` (of ``kdst decode`` on the same data dir) gives, per utterance, a
posterior ``p_k`` over its distinct texts (kdst.teacher.nbest: ``posterior``, ``scale``).  The
union is their mixture over every text some teacher proposed::

    P(y) = Σ_k w_k · p_k(y)        w: the teachers' weights, normalised to sum to 1

computed in the log domain (log-sum-exp of ``log w_k + log p_k(y)``).  A text that several
teachers propose has its weighted posteriors added, not their maximum: the mixture is the
ensemble's own distribution (as an ensemble averages its members' probabilities), and agreement
is evidence; with the maximum, a text two teachers both give 0.4 would lose to one that a
single teacher gives 0.45.  A teacher that did not list a text counts 0 for it, though its
model gives the text some probability: the mixture is over the n-best lists, not the models.

The output is an ``nbest.txt`` like kdst decode's, ranked by P (ties: in the order the teachers,
then their ranks, proposed the texts), whose ``score`` and ``logprob`` columns both hold log P(y).
So ``kdst rescore --metric rank`` takes the ensemble's 1-best, and the posterior that
``kdst pseudo-labels`` and ``--metric mbr`` compute from the file (either ``--posterior``, scale 1)
is P itself, up to the 6 decimals written; ``--confidence logprob`` would be log P per word.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from kdst.data.files import atomic_write_text
from kdst.data.kaldi_dir import c_sort_key
from kdst.errors import DataError, KdstError
from kdst.teacher.nbest import POSTERIORS, NbestEntry, first_utterance, log_posteriors, logsumexp, read_nbest, \
    write_nbest


def union(nbests: list[dict[str, list[NbestEntry]]], weights: list[float] | None = None, *,
          posterior: str = "score", scale: float = 1.0,
          names: list[str] | None = None) -> dict[str, list[NbestEntry]]:
    """The mixture n-best of ``nbests`` (one per teacher, rank-sorted entries per utterance).

    ``weights`` (default: equal) are normalised to sum to 1; ``names`` name the teachers in errors.
    """
    names = names or [f"n-best {k + 1}" for k in range(len(nbests))]
    if not nbests:
        raise KdstError("nbest-union needs at least one n-best list")
    weights = [1.0] * len(nbests) if weights is None else list(weights)
    if len(weights) != len(nbests):
        raise KdstError(f"--weights gives {len(weights)} weights for {len(nbests)} n-best lists")
    if not all(math.isfinite(w) and w > 0.0 for w in weights):
        raise KdstError(f"--weights must be positive numbers, not {' '.join(map(str, weights))}")
    if not scale > 0.0:
        raise KdstError(f"--scale must be positive, not {scale}")
    utts = set(nbests[0])
    for nbest, name in zip(nbests[1:], names[1:]):
        # Teachers decoded on different data dirs: an utterance with fewer teachers would get another mixture.
        for a, b, where in ((utts, set(nbest), name), (set(nbest), utts, names[0])):
            if a - b:
                raise DataError(where, f"{len(a - b)} utterance(s) of the other n-best lists are missing here, "
                                       f"the first '{first_utterance(a - b)}' (decode the same data dir)")
    log_w = [math.log(w / sum(weights)) for w in weights]
    out: dict[str, list[NbestEntry]] = {}
    for utt in sorted(utts, key=c_sort_key):
        mixed: dict[str, list[float]] = {}  # text -> log w_k + log p_k(text), in the order proposed
        for nbest, lw in zip(nbests, log_w):
            for value, text in log_posteriors(nbest[utt], posterior, scale):
                mixed.setdefault(text, []).append(lw + value)
        merged = [(logsumexp(values), order, text) for order, (text, values) in enumerate(mixed.items())]
        merged.sort(key=lambda x: (-x[0], x[1]))
        out[utt] = [NbestEntry(rank, value, value, text) for rank, (value, _, text) in enumerate(merged, start=1)]
    return out


def union_stats(nbests: list[dict[str, list[NbestEntry]]], merged: dict[str, list[NbestEntry]]) -> dict:
    """How much the teachers agree: hypotheses per utterance, and whose 1-best the union's 1-best is."""
    n = len(merged)
    firsts = {u: [" ".join(nb[u][0].text.split()) for nb in nbests] for u in merged}
    return {
        "utterances": n,
        "teachers": len(nbests),
        "mean_hypotheses": round(sum(len(h) for h in merged.values()) / n, 3),
        "mean_hypotheses_per_teacher": [round(sum(len(nb[u]) for u in merged) / n, 3) for nb in nbests],
        "share_1best_agree": round(sum(len(set(f)) == 1 for f in firsts.values()) / n, 4),
        "share_1best_is_teachers": [round(sum(merged[u][0].text == firsts[u][k] for u in merged) / n, 4)
                                    for k in range(len(nbests))],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("nbest", nargs="+", type=Path,
                        help="the teachers' nbest.txt (kdst decode on the same data dir), one per teacher")
    parser.add_argument("--out", required=True, type=Path, help="the union, in the same nbest.txt format")
    parser.add_argument("--weights", nargs="+", type=float, metavar="W",
                        help="one weight per n-best list, normalised to sum to 1 (default: equal)")
    parser.add_argument("--posterior", choices=POSTERIORS, default="score",
                        help="each teacher's posterior over its n-best, softmax(scale * v); v = score: the "
                             "length-normalised score its search ranked by, on the 1-best's scale; logprob: the "
                             "raw log-probability (docs/NBEST.md)")
    parser.add_argument("--scale", type=float, default=1.0, help="each teacher's posterior's scale")
    parser.add_argument("--stats-json", type=Path, help="write the statistics here too")


def run(args: argparse.Namespace) -> int:
    nbests = []
    for path in args.nbest:
        nbest = read_nbest(path)
        if not nbest:
            raise DataError(path, "no hypotheses")
        nbests.append(nbest)
    merged = union(nbests, args.weights, posterior=args.posterior, scale=args.scale,
                   names=[os.fspath(p) for p in args.nbest])
    write_nbest(args.out, merged)
    stats = {"inputs": [os.fspath(p) for p in args.nbest], "weights": args.weights, "posterior": args.posterior,
             "scale": args.scale, **union_stats(nbests, merged)}
    text = json.dumps(stats, indent=1) + "\n"
    if args.stats_json is not None:
        atomic_write_text(args.stats_json, text)
    print(f"{args.out}: {stats['utterances']} utterances, {stats['mean_hypotheses']} hypotheses each "
          f"from {stats['teachers']} n-best lists; the teachers' 1-best agree on "
          f"{100 * stats['share_1best_agree']:.1f}%")
    return 0
