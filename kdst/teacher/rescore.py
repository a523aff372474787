"""``kdst rescore``: pick one distillation target per utterance from a teacher's n-best list.

Sequence-level knowledge distillation (Seq-KD, Kim & Rush 2016) trains the
student on the teacher's beam-search 1-best; *sequence interpolation* instead
takes, among the teacher's n-best, the hypothesis closest to the reference
(sentence BLEU in the paper), which keeps the student near both the teacher
and the data.  Both are one rule here: score every hypothesis of an utterance
with a *scorer* and keep the highest; on a tie the better-ranked hypothesis
wins, so a flat scorer falls back to Seq-KD.

The input is the ``nbest.txt`` of ``kdst decode`` (docs/FORMATS.md)::

    <utt>-<rank> <score> <logprob> <text>

and the output a Kaldi ``text`` file ``<utt> <chosen text>`` to train on.

Scorers (``SCORERS``), higher is better:

- ``rank``     minus the rank: the 1-best (Seq-KD)
- ``bleu``     sentence BLEU against the reference (sacrebleu, effective order)
- ``chrf``     sentence chrF against the reference
- ``ter``      minus sentence TER against the reference
- ``logprob``  the teacher's length-normalised log-probability (the ``score``
               field); needs no reference, a quality estimate for unlabelled data

Adding a scorer: write a function ``(hypotheses, reference, entries) ->
list[float]`` (one value per hypothesis, higher is better; ``reference`` is
None for a scorer that needs none, ``entries`` the NbestEntry of each
hypothesis) and add it to ``SCORERS`` as ``Scorer(function, needs_reference,
help)``; the command line offers every key of ``SCORERS`` to ``--metric``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence

from sacrebleu.metrics import BLEU, CHRF, TER

from kdst.data.files import atomic_write_text
from kdst.data.kaldi_dir import c_sort_key, iter_entries, read_kv
from kdst.errors import DataError, KdstError


@dataclass(frozen=True)
class NbestEntry:
    rank: int  # 1 is the teacher's best
    score: float  # logprob / length**length_penalty: what the beam search ranked by
    logprob: float
    text: str  # may be empty: a model can output nothing


def _parse_line(path, key: str, value: str, line: int) -> tuple[str, NbestEntry]:
    utt, dash, rank_text = key.rpartition("-")  # utterance ids may contain '-' themselves
    if not dash or not utt or not (rank_text.isascii() and rank_text.isdigit()) or int(rank_text) < 1:
        raise DataError(path, f"key '{key}' is not '<utt>-<rank>' with a rank >= 1", line)
    fields = value.split(None, 2)
    if len(fields) < 2:
        raise DataError(path, "expected '<utt>-<rank> <score> <logprob> [<text>]'", line)
    try:
        score, logprob = float(fields[0]), float(fields[1])
    except ValueError:
        raise DataError(path, f"score/logprob are not numbers: '{fields[0]} {fields[1]}'", line) from None
    if math.isnan(score) or math.isnan(logprob):  # a NaN would make every comparison false
        raise DataError(path, "score/logprob is NaN", line)
    text = fields[2].strip() if len(fields) == 3 else ""
    return utt, NbestEntry(int(rank_text), score, logprob, text)


def read_nbest(path: str | os.PathLike) -> dict[str, list[NbestEntry]]:
    """utterance id -> its hypotheses sorted by rank, which must run 1..k without gaps.

    The file is sorted as text (``utt-10`` before ``utt-2``), so the order of
    the lines does not matter; a malformed line or a repeated key is a DataError
    at its line, and so is a last line without its newline.
    """
    check_final_newline(path)
    out: dict[str, list[NbestEntry]] = {}
    first_line: dict[str, int] = {}
    seen: dict[tuple[str, int], int] = {}
    for e in iter_entries(path, allow_empty_value=True):
        utt, entry = _parse_line(path, e.key, e.value, e.line)
        if (utt, entry.rank) in seen:
            raise DataError(path, f"duplicate key '{e.key}' (first on line {seen[utt, entry.rank]})", e.line)
        seen[utt, entry.rank] = e.line
        first_line.setdefault(utt, e.line)
        out.setdefault(utt, []).append(entry)
    for utt, entries in out.items():
        entries.sort(key=lambda x: x.rank)
        # A gap means a truncated or badly merged file; "the 1-best" would silently be another one.
        missing = next((r for r, x in enumerate(entries, start=1) if x.rank != r), None)
        if missing is not None:
            raise DataError(path, f"utterance '{utt}' has no rank {missing} (ranks must run 1..k)",
                            first_line[utt])
    return out


def check_final_newline(path: str | os.PathLike) -> None:
    """kdst decode ends every line with a newline: a file without one was cut short (a job killed while
    writing, a partial copy), and its last line may be cut mid-word, which still parses."""
    if not os.path.isfile(path):
        raise DataError(path, "missing")
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        last_line = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b"")) + 1
    raise DataError(path, "the last line has no newline: the file was cut short (re-run the decoding)", last_line)


# --- scorers ------------------------------------------------------------------------------------

ScoreFunction = Callable[[list[str], str | None, Sequence[NbestEntry]], list[float]]


@dataclass(frozen=True)
class Scorer:
    function: ScoreFunction
    needs_reference: bool
    help: str

    def __call__(self, hypotheses: list[str], reference: str | None, entries: Sequence[NbestEntry]) -> list[float]:
        return self.function(hypotheses, reference, entries)


# Built once: sacrebleu metric objects hold no per-sentence state, and building one per call
# would dominate the time on a large training set.
_BLEU = BLEU(effective_order=True)  # short sentences have no 4-grams; without it they all score 0
_CHRF = CHRF()
_TER = TER()


def sentence_bleu(hypothesis: str, reference: str) -> float:
    return _BLEU.sentence_score(hypothesis, [reference]).score


def _by_rank(hypotheses, reference, entries) -> list[float]:
    return [-float(e.rank) for e in entries]


def _by_bleu(hypotheses, reference, entries) -> list[float]:
    return [sentence_bleu(h, reference) for h in hypotheses]


def _by_chrf(hypotheses, reference, entries) -> list[float]:
    return [_CHRF.sentence_score(h, [reference]).score for h in hypotheses]


def _by_ter(hypotheses, reference, entries) -> list[float]:
    return [-_TER.sentence_score(h, [reference]).score for h in hypotheses]


def _by_logprob(hypotheses, reference, entries) -> list[float]:
    return [e.score for e in entries]


SCORERS: dict[str, Scorer] = {
    "rank": Scorer(_by_rank, False, "the teacher's 1-best (Seq-KD)"),
    "bleu": Scorer(_by_bleu, True, "highest sentence BLEU against the reference (sequence interpolation)"),
    "chrf": Scorer(_by_chrf, True, "highest sentence chrF against the reference"),
    "ter": Scorer(_by_ter, True, "lowest sentence TER against the reference"),
    "logprob": Scorer(_by_logprob, False, "highest length-normalised teacher log-probability"),
}


# --- selection ----------------------------------------------------------------------------------

def _first(ids: list[str]) -> str:
    return min(ids, key=c_sort_key)


def _check_references(nbest: dict, references: dict[str, str], ref_name: str) -> None:
    no_ref = [u for u in nbest if u not in references]
    if no_ref:
        more = f" (and {len(no_ref) - 1} more)" if len(no_ref) > 1 else ""
        raise KdstError(f"utterance '{_first(no_ref)}' of the n-best list has no reference in {ref_name}{more}")
    no_hyp = [u for u in references if u not in nbest]
    if no_hyp:
        # Every training utterance needs a target; dropping some silently would shrink the data.
        raise KdstError(f"{len(no_hyp)} utterance(s) of {ref_name} have no hypotheses in the n-best list, "
                        f"the first '{_first(no_hyp)}'")


def rescore(nbest: dict[str, list[NbestEntry]], references: dict[str, str] | None, scorer: str,
            nbest_size: int | None = None, *, ref_name: str = "the references") -> tuple[dict[str, str], dict]:
    """Choose one hypothesis per utterance among its first ``nbest_size`` (all if None).

    Returns ``{utt: chosen text}`` and summary statistics: ``utterances``,
    ``mean_chosen_rank``, ``share_not_1best`` (0..1), ``chosen_rank_counts``,
    ``mean_words_1best``/``mean_words_chosen`` and, with references,
    ``mean_bleu_1best``/``mean_bleu_chosen`` (sentence BLEU, percent).
    ``ref_name`` names the reference file in error messages.
    """
    if scorer not in SCORERS:
        raise KdstError(f"unknown scorer '{scorer}'; known: {', '.join(SCORERS)}")
    score_fn = SCORERS[scorer]
    if score_fn.needs_reference and references is None:
        raise KdstError(f"scorer '{scorer}' compares with a reference; give references (--ref)")
    if nbest_size is not None and nbest_size < 1:
        raise KdstError(f"n-best size must be at least 1, not {nbest_size}")
    if not nbest:
        raise KdstError("the n-best list has no utterances")
    if references is not None:
        _check_references(nbest, references, ref_name)

    chosen: dict[str, str] = {}
    ranks: list[int] = []
    words_1best = words_chosen = 0
    bleu_1best = bleu_chosen = 0.0
    candidates = 0
    for utt in sorted(nbest, key=c_sort_key):
        entries = nbest[utt][:nbest_size]
        if not entries:
            raise KdstError(f"utterance '{utt}' has no hypotheses")
        reference = references[utt] if references is not None else None
        texts = [e.text for e in entries]
        scores = score_fn(texts, reference if score_fn.needs_reference else None, entries)
        if len(scores) != len(entries):
            raise KdstError(f"scorer '{scorer}' gave {len(scores)} scores for {len(entries)} hypotheses")
        # Entries are in rank order, so -i breaks ties towards the better rank.
        best = max(range(len(entries)), key=lambda i: (scores[i], -i))
        pick = entries[best]
        chosen[utt] = pick.text
        ranks.append(pick.rank)
        candidates += len(entries)
        words_1best += len(entries[0].text.split())
        words_chosen += len(pick.text.split())
        if reference is not None:
            first = sentence_bleu(entries[0].text, reference)
            bleu_1best += first
            bleu_chosen += first if best == 0 else sentence_bleu(pick.text, reference)

    n = len(chosen)
    counts: dict[str, int] = {}
    for r in sorted(ranks):
        counts[str(r)] = counts.get(str(r), 0) + 1
    stats: dict = {
        "scorer": scorer,
        "nbest_size": nbest_size,
        "utterances": n,
        "mean_candidates": candidates / n,
        "mean_chosen_rank": sum(ranks) / n,
        "share_not_1best": sum(r != 1 for r in ranks) / n,
        "chosen_rank_counts": counts,
        "mean_words_1best": words_1best / n,
        "mean_words_chosen": words_chosen / n,
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

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nbest", required=True,
                        help="nbest.txt of kdst decode (<utt>-<rank> <score> <logprob> <text>)")
    parser.add_argument("--out", required=True, help="Kaldi text file of the chosen targets")
    parser.add_argument("--ref", help="reference Kaldi text file: needed by bleu/chrf/ter, otherwise only "
                        "for the statistics (and then every utterance must be in both files)")
    parser.add_argument("--metric", default="rank", choices=list(SCORERS),
                        help="; ".join(f"{k}: {s.help}" for k, s in SCORERS.items()) + " (default: rank)")
    parser.add_argument("--nbest-size", type=int, metavar="N",
                        help="consider only the first N hypotheses (default: all)")
    parser.add_argument("--stats-json", metavar="FILE", help="write the summary statistics to FILE")


def run(args: argparse.Namespace) -> int:
    nbest = read_nbest(args.nbest)
    if not nbest:
        raise DataError(args.nbest, "no hypotheses")
    references = read_kv(args.ref) if args.ref else None
    chosen, stats = rescore(nbest, references, args.metric, args.nbest_size,
                            ref_name=os.fspath(args.ref) if args.ref else "the references")
    # As hyp.txt of kdst decode: C order, and an empty target is the bare id (no trailing space).
    lines = (f"{u} {chosen[u]}".rstrip() + "\n" for u in sorted(chosen, key=c_sort_key))
    atomic_write_text(args.out, "".join(lines))
    if args.stats_json:
        atomic_write_text(args.stats_json, json.dumps(stats, indent=1) + "\n")
    print(f"{args.out}: {format_summary(stats)}")
    return 0
