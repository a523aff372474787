"""``kdst pseudo-labels``: a teacher's n-best on the training set -> pseudo-label sets.

Sequence-level KD for ASR (Mun'im, Inoue & Shinoda 2019) trains the student on
the teacher's beam-search hypotheses instead of the references.  From the
``nbest.txt`` of ``kdst decode`` this writes, into the training data dir:

    text.1best              <utt> <the teacher's best hypothesis>           (Kaldi text)
    pseudo_nbest<N>.txt     <utt>-<rank> <weight> <text>, the N best per utterance

The weight of a hypothesis is the teacher's posterior normalised over the
N-best: softmax(scale * v) over the hypotheses kept, with v the length-normalised
score the beam search ranked by, put on the 1-best's scale (``posterior`` "score",
the default), or the raw log P(y|x) ("logprob", which lets a truncated hypothesis
outweigh the longer 1-best; kdst.teacher.nbest says why and how).  ``scale`` < 1
flattens it (the teacher's sequence probabilities are sharp, and a flat
posterior keeps more hypotheses alive); identical texts (different token
sequences that detokenise to the same words) are merged and their
weights added.  With a reference, the statistics also say how good the pseudo
labels are: the WER of the 1-best, of the oracle (best of the N) and the
posterior-weighted expected WER.

Confidence filtering (``min_confidence``, for self-training on unlabelled
speech) drops the utterances whose teacher is unsure, before anything is
written: ``posterior`` is the 1-best's posterior over the whole decoded n-best
(the same posterior as the weights, over every hypothesis, so also with ``n`` = 1), in
[0, 1]; ``logprob`` is the 1-best's log-probability per word (its words + 1, for
the end of the sentence), <= 0.  The statistics count what was dropped; the
label WERs are those of the labels kept (plus the 1-best WER of the dropped).
``drop_empty`` also drops the utterances whose 1-best is empty (a transducer
that emitted only blanks): a training target cannot be empty in a data dir.

A teacher that writes its text another way than the references (Whisper: cased and
punctuated) gets ``normalize`` (kdst.data.text_norm: ``upper`` or ``lower``), applied to every
hypothesis before anything else (identical texts merge after it) and to the references it is
compared with.  The WER filter (``max_wer``, in percent; distil-whisper keeps the utterances
of its pseudo labels under 10) drops the utterances whose 1-best has a higher WER against
their reference, after normalisation; an utterance without a reference is kept, and one with
an empty reference is dropped unless its 1-best is empty too.  It is off by default (a teacher
trained on the recipe's own references needs none; the recipes set 10 for an ``hf:`` teacher).
The statistics count what each filter dropped and the 1-best WER of the dropped; ``dropped``
names a file that lists them: ``<utt> <reason> <WER or confidence> <1-best>``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from kdst import metrics
from kdst.data.files import atomic_write_text
from dataclasses import replace

from kdst.data.kaldi_dir import c_sort_key, read_kv
from kdst.data.text_norm import NORMALIZERS, normalize_text
from kdst.errors import DataError, KdstError
from kdst.teacher.nbest import POSTERIORS, NbestEntry, posteriors, read_nbest


def posterior(entries: list[NbestEntry], n: int, scale: float = 1.0,
              kind: str = "score") -> list[tuple[float, str]]:
    """The first ``n`` distinct texts of a rank-sorted n-best with their normalised posterior ``kind``."""
    return posteriors(entries, kind, scale, n)


def _entropy(weights: list[float]) -> float:
    return -sum(w * math.log(w) for w in weights if w > 0.0)


CONFIDENCE_MEASURES = ("posterior", "logprob")


def confidence(entries: list[NbestEntry], measure: str = "posterior", scale: float = 1.0,
               kind: str = "score") -> float:
    """How sure the teacher is of its 1-best (``entries`` rank-sorted): see the module docstring."""
    if measure == "posterior":
        return posterior(entries, len(entries), scale, kind)[0][0]
    if measure == "logprob":
        return entries[0].logprob / (len(entries[0].text.split()) + 1)
    raise KdstError(f"unknown confidence measure '{measure}' ({', '.join(CONFIDENCE_MEASURES)})")


def write_pseudo_labels(nbest_path: str | os.PathLike, out_dir: str | os.PathLike, n: int, *,
                        scale: float = 1.0, reference: str | os.PathLike | None = None,
                        min_confidence: float | None = None, measure: str = "posterior",
                        drop_empty: bool = False, kind: str = "score", normalize: str = "none",
                        max_wer: float | None = None, dropped_path: str | os.PathLike | None = None) -> dict:
    """Write ``text.1best`` and ``pseudo_nbest<n>.txt`` into ``out_dir``; returns their statistics.

    ``kind`` is the posterior of the weights and of the ``posterior`` confidence (kdst.teacher.nbest:
    score or logprob).  With ``min_confidence``, only the utterances whose
    ``confidence(.., measure, scale, kind)`` is at least that are written (and counted in the label
    statistics); with ``drop_empty``, only those whose 1-best is not empty; with ``max_wer``, only those whose
    1-best's WER (percent) against the reference is at most that, after ``normalize`` (module docstring).
    """
    if measure not in CONFIDENCE_MEASURES:
        raise KdstError(f"unknown confidence measure '{measure}' ({', '.join(CONFIDENCE_MEASURES)})")
    if kind not in POSTERIORS:
        raise KdstError(f"unknown posterior '{kind}' ({', '.join(POSTERIORS)})")
    if n < 1:
        raise KdstError(f"--n must be at least 1, not {n}")
    if not scale > 0.0:
        raise KdstError(f"--scale must be positive, not {scale}")
    if normalize not in NORMALIZERS:
        raise KdstError(f"unknown --normalize '{normalize}' ({', '.join(NORMALIZERS)})")
    if max_wer is not None and not max_wer >= 0.0:
        raise KdstError(f"--max-wer must be a percentage >= 0, not {max_wer}")
    if max_wer is not None and reference is None:
        raise KdstError("--max-wer filters against the references: give --ref")
    nbest = read_nbest(nbest_path)
    if not nbest:
        raise DataError(nbest_path, "no hypotheses")
    out = Path(out_dir)
    refs = read_kv(reference, allow_empty_value=True) if reference is not None else None
    if normalize != "none":
        nbest = {u: [replace(e, text=normalize_text(e.text, normalize)) for e in entries]
                 for u, entries in nbest.items()}
        refs = {u: normalize_text(r, normalize) for u, r in refs.items()} if refs is not None else None
    if refs is not None:
        missing = sorted(set(refs) - set(nbest), key=c_sort_key)
        if missing:
            raise DataError(nbest_path, f"{len(missing)} utterance(s) of {reference} have no hypotheses, "
                                        f"e.g. '{missing[0]}' (decode the same data dir)")
    utts = sorted(nbest, key=c_sort_key)
    dropped: list[str] = []
    why: dict[str, str] = {}  # dropped utterance -> "<reason> <value>"
    if min_confidence is not None:
        values = {u: confidence(nbest[u], measure, scale, kind) for u in utts}
        dropped = [u for u in utts if values[u] < min_confidence]
        if len(dropped) == len(utts):
            raise KdstError(f"{nbest_path}: every one of the {len(utts)} utterances is below the confidence "
                            f"threshold {min_confidence} ({measure}): lower --min-confidence")
        utts = [u for u in utts if u not in set(dropped)]
        why.update((u, f"confidence {values[u]:.4f}") for u in dropped)
    high_wer: list[str] = []
    if max_wer is not None:
        rates = {u: utterance_wer(refs[u], nbest[u][0].text) for u in utts if u in refs}
        high_wer = [u for u in utts if rates.get(u, 0.0) > max_wer]
        if len(high_wer) == len(utts):
            raise KdstError(f"{nbest_path}: the 1-best of every one of the {len(utts)} utterances has a WER above "
                            f"{max_wer}% against {reference}: raise --max-wer (or --normalize the texts alike)")
        utts = [u for u in utts if u not in set(high_wer)]
        why.update((u, f"wer {rates[u]:.2f}") for u in high_wer)
    kept = {u: posterior(nbest[u], n, scale, kind) for u in utts}
    empty = [u for u in utts if drop_empty and not kept[u][0][1]]
    if empty:
        if len(empty) == len(utts):
            raise KdstError(f"{nbest_path}: the 1-best of every one of the {len(utts)} utterances kept is empty "
                            f"(a teacher that emits nothing: train it longer)")
        utts = [u for u in utts if u not in set(empty)]
        kept = {u: kept[u] for u in utts}
        why.update((u, "empty -") for u in empty)
    if dropped_path is not None:
        atomic_write_text(dropped_path, "".join(f"{u} {why[u]} {nbest[u][0].text}".rstrip() + "\n"
                                                for u in sorted(why, key=c_sort_key)))
    atomic_write_text(out / "text.1best", "".join(f"{u} {kept[u][0][1]}".rstrip() + "\n" for u in utts))
    lines = [f"{u}-{rank} {w:.6f} {t}".rstrip() + "\n" for u in utts for rank, (w, t) in enumerate(kept[u], 1)]
    atomic_write_text(out / f"pseudo_nbest{n}.txt", "".join(lines))
    sizes = [len(kept[u]) for u in utts]
    stats = {"utterances": len(utts), "n": n, "posterior": kind, "scale": scale,
             "hypotheses_per_utterance": round(sum(sizes) / len(utts), 3),
             "best_weight_mean": round(sum(kept[u][0][0] for u in utts) / len(utts), 4),
             "entropy_mean_nats": round(sum(_entropy([w for w, _ in kept[u]]) for u in utts) / len(utts), 4)}
    if min_confidence is not None:
        stats.update(confidence=measure, min_confidence=min_confidence, dropped=len(dropped))
    if drop_empty:
        stats["empty"] = len(empty)
    if max_wer is not None:
        stats.update(max_wer=max_wer, dropped_wer=len(high_wer),
                     without_reference=sum(u not in refs for u in nbest))
    if normalize != "none":
        stats["normalize"] = normalize
    if min_confidence is not None or drop_empty or max_wer is not None:
        stats["kept"] = len(utts)
    if refs is not None:
        stats.update(_label_quality(kept, refs))
        if dropped or empty or high_wer:
            stats["wer_1best_dropped"] = _label_quality({u: posterior(nbest[u], 1) for u in dropped + high_wer + empty},
                                                        refs)["wer_1best"]
    return stats


def utterance_wer(reference: str, hypothesis: str) -> float:
    """WER in percent of one utterance; an empty reference: 0 for an empty hypothesis, else infinite."""
    ref = reference.split()
    errors = metrics.align(ref, hypothesis.split())[0].errors
    if not ref:
        return 0.0 if errors == 0 else math.inf
    return 100.0 * errors / len(ref)


def _label_quality(kept: dict[str, list[tuple[float, str]]], refs: dict[str, str]) -> dict:
    """WER (percent) of the pseudo labels against the references: 1-best, oracle, posterior-expected."""
    one_best = oracle = metrics.ErrorCounts(0, 0, 0, 0)
    expected_errors = 0.0
    for utt, hyps in kept.items():
        if utt not in refs:
            continue
        ref = refs[utt].split()
        counts = [metrics.align(ref, text.split())[0] for _, text in hyps]
        one_best = one_best + counts[0]
        oracle = oracle + min(counts, key=lambda c: c.errors)
        expected_errors += sum(w * c.errors for (w, _), c in zip(hyps, counts))
    return {"wer_1best": round(one_best.rate, 2), "wer_oracle": round(oracle.rate, 2),
            "wer_expected": round(100.0 * expected_errors / max(one_best.ref_length, 1), 2)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nbest", required=True, type=Path, help="nbest.txt of kdst decode on the training set")
    parser.add_argument("--out-dir", required=True, type=Path, help="where text.1best and pseudo_nbest<N>.txt go "
                                                                   "(the training data dir)")
    parser.add_argument("--n", type=int, default=5, help="hypotheses kept per utterance")
    parser.add_argument("--posterior", choices=POSTERIORS, default="score",
                        help="the weights (and --confidence posterior) are softmax(scale * v) over the n-best; "
                             "v = score: the length-normalised score the search ranked by, on the 1-best's scale; "
                             "logprob: the raw log-probability, which favours short hypotheses (docs/NBEST.md)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="the posterior's scale: < 1 flattens the weights, > 1 sharpens them")
    parser.add_argument("--ref", type=Path, help="references (Kaldi text): adds the pseudo labels' WER to the stats")
    parser.add_argument("--stats-json", type=Path, help="write the statistics here too")
    parser.add_argument("--min-confidence", type=float, metavar="X",
                        help="drop the utterances whose teacher confidence is below X (default: keep all)")
    parser.add_argument("--confidence", choices=CONFIDENCE_MEASURES, default="posterior",
                        help="posterior: the 1-best's posterior over the whole n-best (0..1, with --posterior "
                             "and --scale); logprob: its log-probability per word (<= 0)")
    parser.add_argument("--drop-empty", action="store_true",
                        help="drop the utterances whose 1-best is empty (they cannot be training targets)")
    parser.add_argument("--normalize", choices=NORMALIZERS, default="none",
                        help="normalise the hypotheses (and the references they are compared with) first: upper or "
                             "lower case, no punctuation (a teacher that writes cased, punctuated text: Whisper)")
    parser.add_argument("--max-wer", type=float, metavar="PERCENT",
                        help="drop the utterances whose 1-best has a higher WER than this against --ref "
                             "(distil-whisper: 10; default: keep all)")
    parser.add_argument("--dropped", type=Path, metavar="FILE",
                        help="list the dropped utterances here: <utt> <reason> <value> <1-best>")


def run(args: argparse.Namespace) -> int:
    stats = write_pseudo_labels(args.nbest, args.out_dir, args.n, scale=args.scale, reference=args.ref,
                                min_confidence=args.min_confidence, measure=args.confidence,
                                drop_empty=args.drop_empty, kind=args.posterior, normalize=args.normalize,
                                max_wer=args.max_wer, dropped_path=args.dropped)
    text = json.dumps(stats, indent=1) + "\n"
    if args.stats_json is not None:
        atomic_write_text(args.stats_json, text)
    print(text, end="")
    return 0
