"""Scoring hypotheses against references: BLEU, chrF, TER (sacrebleu), WER and CER.

Both inputs are Kaldi ``text`` files (``utt-id words...``) matched by
utterance id, not by line order.  A hypothesis may be empty (a model can
output nothing), and so may a reference (real test sets have empty segments,
which sacrebleu and Kaldi's compute-wer score too).  ``kdst score`` is a thin
layer over :func:`score`.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import astuple, dataclass
from typing import Sequence

import numpy as np
from sacrebleu.metrics import BLEU, CHRF, TER

from kdst.data.files import atomic_write_text
from kdst.data.kaldi_dir import c_sort_key, iter_entries
from kdst.errors import DataError, KdstError

METRICS = ("bleu", "chrf", "ter", "wer", "cer")
LABELS = {"bleu": "BLEU", "chrf": "chrF", "ter": "TER", "wer": "WER", "cer": "CER"}
LENGTH_KEYS = {"wer": "ref_words", "cer": "ref_chars"}  # in the ``<metric>_counts`` of a result
MAX_REPORTED = 5  # ids named in one missing/extra-utterance message


def _read_text(path) -> dict[str, tuple[str, int]]:
    """utterance id -> (text, line), the text maybe empty; a duplicate id is a DataError at its second line."""
    out: dict[str, tuple[str, int]] = {}
    for e in iter_entries(path, allow_empty_value=True):
        if e.key in out:
            raise DataError(path, f"duplicate utterance '{e.key}' (first on line {out[e.key][1]})", e.line)
        out[e.key] = (e.value, e.line)
    return out


def _some(items: list[str]) -> str:
    more = len(items) - MAX_REPORTED
    return ", ".join(items[:MAX_REPORTED]) + (f" and {more} more" if more > 0 else "")


def read_pairs(ref_path, hyp_path) -> tuple[list[str], list[str], list[str]]:
    """(ids, refs, hyps) matched by utterance id, ids in C (byte) order.

    Every reference needs exactly one hypothesis and vice versa; the first
    few offending ids are named in one DataError, with their count.
    """
    refs = _read_text(ref_path)
    hyps = _read_text(hyp_path)
    ref_name = os.fspath(ref_path)
    missing = [k for k in refs if k not in hyps]  # in ref line order
    if len(missing) == 1:
        raise DataError(hyp_path, f"utterance '{missing[0]}' of {ref_name}:{refs[missing[0]][1]} is missing")
    if missing:
        named = [f"'{k}' ({ref_name}:{refs[k][1]})" for k in missing]
        raise DataError(hyp_path, f"{len(missing)} utterances of {ref_name} are missing: {_some(named)}")
    extra = [k for k in hyps if k not in refs]
    if len(extra) == 1:
        raise DataError(hyp_path, f"utterance '{extra[0]}' is not in {ref_name}", hyps[extra[0]][1])
    if extra:
        named = [f"'{k}' (line {hyps[k][1]})" for k in extra]
        raise DataError(hyp_path, f"{len(extra)} utterances are not in {ref_name}: {_some(named)}",
                        hyps[extra[0]][1])
    ids = sorted(refs, key=c_sort_key)
    return ids, [refs[k][0] for k in ids], [hyps[k][0] for k in ids]


@dataclass(frozen=True)
class ErrorCounts:
    substitutions: int
    deletions: int
    insertions: int
    ref_length: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def correct(self) -> int:
        return self.ref_length - self.substitutions - self.deletions

    @property
    def rate(self) -> float:
        """errors / ref_length in percent.  With ref_length 0 it is 0.0 without errors and
        100.0 with any (a choice: not infinity, nor a division error)."""
        if self.ref_length == 0:
            return 0.0 if self.errors == 0 else 100.0
        return 100.0 * self.errors / self.ref_length

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(*(a + b for a, b in zip(astuple(self), astuple(other))))


Pair = tuple[str | None, str | None]


def align(ref: list[str], hyp: list[str]) -> tuple[ErrorCounts, list[Pair]]:
    """Levenshtein alignment of two token lists.

    Returns the counts and the aligned pairs: ``(r, h)`` a match or a
    substitution, ``(r, None)`` a deletion, ``(None, h)`` an insertion.
    The total number of errors is the edit distance (unit costs, as Kaldi's
    compute-wer); among the alignments with that many errors one with the
    most substitutions (fewest insertions + deletions) is chosen, so the
    S/D/I split does not depend on tie-breaking details.
    """
    # The table is filled for the reversed lists and walked back from their end, i.e. from
    # the start of the originals, preferring a match/substitution: on a tie, insertions and
    # deletions come as late as possible ("the cat *** sat" / "the bat big sat").
    ref, hyp = ref[::-1], hyp[::-1]
    n, m = len(ref), len(hyp)
    # Cost (errors, indels) packed into one int: errors * W + indels, W > any indel count.
    w = n + m + 1
    sub, indel = w, w + 1
    vocab: dict[str, int] = {}
    r = np.array([vocab.setdefault(t, len(vocab)) for t in ref], dtype=np.int64)
    h = np.array([vocab.setdefault(t, len(vocab)) for t in hyp], dtype=np.int64)
    steps = np.arange(m + 1, dtype=np.int64) * indel
    d = np.empty((n + 1, m + 1), dtype=np.int64)
    d[0] = steps
    for i in range(1, n + 1):
        cand = np.empty(m + 1, dtype=np.int64)
        cand[0] = d[i - 1, 0] + indel
        cand[1:] = np.minimum(d[i - 1, :-1] + np.where(h == r[i - 1], 0, sub), d[i - 1, 1:] + indel)
        # Insertions along the row: d[i, j] = min over k <= j of cand[k] + (j - k) * indel.
        d[i] = np.minimum.accumulate(cand - steps) + steps
    pairs: list[Pair] = []
    s = dl = ins = 0
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and d[i, j] == d[i - 1, j - 1] + (0 if ref[i - 1] == hyp[j - 1] else sub):
            s += ref[i - 1] != hyp[j - 1]
            i, j = i - 1, j - 1
            pairs.append((ref[i], hyp[j]))
        elif i > 0 and d[i, j] == d[i - 1, j] + indel:
            dl, i = dl + 1, i - 1
            pairs.append((ref[i], None))
        else:
            ins, j = ins + 1, j - 1
            pairs.append((None, hyp[j]))
    return ErrorCounts(int(s), dl, ins, n), pairs


def chars(text: str) -> list[str]:
    """The characters of ``text`` with all whitespace removed."""
    return [c for c in text if not c.isspace()]


def _corpus_counts(refs: Sequence[str], hyps: Sequence[str], tokens) -> ErrorCounts:
    total = ErrorCounts(0, 0, 0, 0)
    for ref, hyp in zip(refs, hyps, strict=True):
        total += align(tokens(ref), tokens(hyp))[0]
    return total


def wer(refs: Sequence[str], hyps: Sequence[str]) -> ErrorCounts:
    """Word errors summed over the corpus; words are split on whitespace, case and punctuation kept."""
    return _corpus_counts(refs, hyps, str.split)


def cer(refs: Sequence[str], hyps: Sequence[str]) -> ErrorCounts:
    """Character errors summed over the corpus, with spaces (all whitespace) removed first.

    Like ESPnet's "CER without spaces": word boundaries do not count as characters.
    """
    return _corpus_counts(refs, hyps, chars)


def parse_metrics(metrics: Sequence[str] | str) -> list[str]:
    """Lower-cased, de-duplicated metric names (a string may list them comma-separated)."""
    if isinstance(metrics, str):
        metrics = metrics.split(",")
    names = list(dict.fromkeys(m.strip().lower() for m in metrics if m.strip()))
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise KdstError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
    if not names:
        raise KdstError(f"no metric asked; known: {', '.join(METRICS)}")
    return names


def score(ref_path, hyp_path, metrics: Sequence[str] = ("bleu",), *, alignment_path=None,
          tokenize: str = "13a") -> dict:
    """Score a hypothesis file against a reference file; every value is in percent, rounded to 2 decimals.

    With BLEU, ``len_ratio`` is also given: hypothesis / reference length in
    BLEU tokens (sacrebleu's ``sys_len / ref_len``), a plain ratio rounded to 4 decimals.

    ``tokenize`` is sacrebleu's BLEU tokenizer (chrF and TER use their own
    defaults).  ``alignment_path`` gets a per-utterance alignment: of words,
    or of characters when CER is asked and WER is not.
    """
    names = parse_metrics(metrics)
    ids, refs, hyps = read_pairs(ref_path, hyp_path)
    if not ids:
        raise DataError(ref_path, "no utterances to score")
    result, _ = score_pairs(refs, hyps, names, tokenize=tokenize)
    if alignment_path is not None:
        tokens = chars if "cer" in names and "wer" not in names else str.split
        write_alignment(alignment_path, ids, refs, hyps, tokens)
    return result


def sacrebleu_metric(name: str, tokenize: str = "13a"):
    """The sacrebleu metric object of ``name`` (bleu, chrf or ter) as kdst scores with it."""
    try:
        return BLEU(tokenize=tokenize) if name == "bleu" else CHRF() if name == "chrf" else TER()
    except Exception as e:  # an unknown tokenizer, or one whose extra is not installed
        raise KdstError(f"BLEU tokenizer '{tokenize}' unavailable: {e!r}") from None


def score_pairs(refs: Sequence[str], hyps: Sequence[str], metrics: Sequence[str] = ("bleu",), *,
                tokenize: str = "13a") -> tuple[dict, dict[str, np.ndarray]]:
    """(the result of :func:`score`, minus the alignment; ``{metric: per-utterance statistics}``).

    The statistics of an utterance are a row of numbers whose sum over any set of utterances
    gives that set's corpus score (:func:`score_from_stats`): sacrebleu's sentence statistics
    for BLEU, chrF and TER (n-gram matches and totals, lengths; edits and reference length),
    and (substitutions, deletions, insertions, reference length) for WER and CER.  The corpus
    scores here are computed from them, the way sacrebleu's ``corpus_score`` does.
    """
    names = parse_metrics(metrics)
    if not refs:
        raise KdstError("no utterances to score")
    result: dict = {}
    signature: dict[str, str] = {}
    stats: dict[str, np.ndarray] = {}
    for name in names:
        if name in ("bleu", "chrf", "ter"):
            metric = sacrebleu_metric(name, tokenize)
            rows = metric._extract_corpus_statistics(list(hyps), [list(refs)])
            corpus = metric._aggregate_and_compute(rows)
            stats[name] = np.array(rows, dtype=np.float64).reshape(len(refs), -1)
            result[name] = round(corpus.score, 2)
            signature[name] = str(metric.get_signature())
            # Word-level KD tends to shorten outputs: the BP alone hides by how much.  Only empty
            # references have no length to divide by.
            if name == "bleu" and corpus.ref_len > 0:
                result["len_ratio"] = round(corpus.sys_len / corpus.ref_len, 4)
        else:
            tokens = str.split if name == "wer" else chars
            rows = [align(tokens(ref), tokens(hyp))[0] for ref, hyp in zip(refs, hyps, strict=True)]
            counts = sum(rows, ErrorCounts(0, 0, 0, 0))
            stats[name] = np.array([astuple(r) for r in rows], dtype=np.float64).reshape(len(refs), 4)
            result[name] = round(counts.rate, 2)
            result[f"{name}_counts"] = {"sub": counts.substitutions, "del": counts.deletions,
                                        "ins": counts.insertions, LENGTH_KEYS[name]: counts.ref_length}
    result["n"] = len(refs)
    result["signature"] = signature
    return result, stats


# --- bootstrap resampling over utterances ----------------------------------------------------
#
# The resamples are sacrebleu's own: numpy's default_rng(seed).choice(n, (samples, n)), seed
# 12345 unless told (sacrebleu's SACREBLEU_SEED default), so that BLEU, chrF and TER come out as
# ``sacrebleu --paired-bs`` gives them, and WER/CER are resampled the same way.  A resampled
# corpus score is the sum of the drawn utterances' statistics, i.e. the matrix product of how
# often each utterance is drawn with the statistics: one product per system and metric.

BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 12345
SIGNIFICANCE_LEVEL = 0.05
SIGNIFICANCE_TESTS = ("centred", "sacrebleu")  # paired_p_value's


def resample_counts(n: int, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(samples, n) floats: how often each of ``n`` utterances is drawn, with replacement, in each resample."""
    if n < 1 or samples < 1:
        raise KdstError(f"bootstrap: {samples} resamples of {n} utterances (both must be at least 1)")
    drawn = np.random.default_rng(seed).choice(n, size=(samples, n), replace=True)
    flat = drawn + n * np.arange(samples)[:, None]
    return np.bincount(flat.ravel(), minlength=samples * n).reshape(samples, n).astype(np.float64)


def score_from_stats(name: str, sums: np.ndarray, *, tokenize: str = "13a") -> np.ndarray:
    """The corpus score of ``name`` (percent, unrounded) for each row of summed statistics.

    WER/CER is vectorised (the rate of :class:`ErrorCounts`, zero-length convention
    included); BLEU, chrF and TER go through sacrebleu's own score function, a row at a
    time, so that the numbers are sacrebleu's: float32 rows are handed over as they are (what
    its paired bootstrap does; integer sums below 2**24 lose nothing), other rows as Python
    floats (what its corpus_score does with its integer sums).
    """
    sums = np.atleast_2d(np.asarray(sums))
    if name in LENGTH_KEYS:
        sums = sums.astype(np.float64)
        errors, length = sums[:, :3].sum(axis=1), sums[:, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(length > 0, 100.0 * errors / length, np.where(errors > 0, 100.0, 0.0))
    metric = sacrebleu_metric(name, tokenize)
    rows = sums if sums.dtype == np.float32 else sums.astype(np.float64).tolist()
    return np.array([metric._compute_score_from_stats(row).score for row in rows], dtype=np.float64)


def bootstrap_scores(name: str, stats: np.ndarray, counts: np.ndarray, *, tokenize: str = "13a") -> np.ndarray:
    """The corpus score of ``name`` on every resample of :func:`resample_counts`, from per-utterance ``stats``."""
    return score_from_stats(name, (counts @ stats).astype(np.float32), tokenize=tokenize)


def confidence_interval(samples: np.ndarray) -> tuple[float, float]:
    """95% bootstrap percentile interval: the order statistics sacrebleu takes, the ⌊S/40⌋-th from each end."""
    ordered = np.sort(np.asarray(samples))
    k = len(ordered) // 40
    return float(ordered[k]), float(ordered[len(ordered) - k - 1])


def paired_p_value(delta: float, deltas: np.ndarray, test: str = "centred") -> float:
    """p-value of the paired bootstrap test of a difference ``delta`` between two systems on the test set,
    given their difference ``deltas`` on each resample of it (the same resamples for both).  Two-sided.

    ``centred`` (the default): the resampled differences, shifted to mean zero, stand for what chance
    gives: p = (#{|Δ* − mean Δ*| >= |Δ|} + 1) / (S + 1).  Between two equally good systems p is
    uniform (mean 0.5; p < 0.05 one time in twenty), between identical outputs 1.

    ``sacrebleu``: sacrebleu's ``--paired-bs`` (2.x): it shifts the *absolute* differences instead,
    p = (#{|Δ*| − mean |Δ*| > |Δ|} + 1) / (S + 1), which leaves p below about 0.5 and, between equally
    good systems, under 0.05 about one time in ten (docs/RESULTS_FORMAT.md has the measurement).
    One departure: outputs that differ on no resample get 1.0, where sacrebleu's strict ``>``
    gives 1/(S+1), calling a system significantly different from itself.

    Either is at least 1/(S+1): the smallest p that S resamples can show.
    """
    deltas = np.asarray(deltas, dtype=np.float64)
    if test == "centred":
        exceeding = int(np.count_nonzero(np.abs(deltas - deltas.mean()) >= abs(delta)))
    elif test == "sacrebleu":
        resampled = np.abs(deltas)
        if delta == 0 and not resampled.any():
            return 1.0
        exceeding = int(np.count_nonzero(resampled - resampled.mean() > abs(delta)))
    else:
        raise KdstError(f"significance test '{test}': one of {', '.join(SIGNIFICANCE_TESTS)}")
    return (exceeding + 1) / (len(deltas) + 1)


def format_alignment(utt: str, pairs: list[Pair]) -> list[str]:
    """Four Kaldi-style lines: ``<id> ref ...``, ``hyp``, ``op`` (C/S/D/I) and ``#csid`` counts."""
    ref_row = [r if r is not None else "***" for r, _ in pairs]
    hyp_row = [h if h is not None else "***" for _, h in pairs]
    ops = ["I" if r is None else "D" if h is None else "C" if r == h else "S" for r, h in pairs]
    widths = [max(len(a), len(b)) for a, b in zip(ref_row, hyp_row)]
    csid = " ".join(str(ops.count(op)) for op in "CSID")

    def line(label: str, row: list[str]) -> str:
        return " ".join([utt, f"{label:<5}", *(t.ljust(wd) for t, wd in zip(row, widths))]).rstrip()

    return [line("ref", ref_row), line("hyp", hyp_row), line("op", ops), f"{utt} {'#csid':<5} {csid}"]


def write_alignment(path, ids: list[str], refs: list[str], hyps: list[str], tokens=str.split) -> None:
    lines: list[str] = []
    for utt, ref, hyp in zip(ids, refs, hyps, strict=True):
        lines += format_alignment(utt, align(tokens(ref), tokens(hyp))[1])
    atomic_write_text(path, "".join(f"{x}\n" for x in lines))


def format_table(result: dict) -> str:
    """One line per metric: the score, then its counts (WER/CER) or sacrebleu signature."""
    out = [f"{result['n']} utterances"]
    for name in (m for m in METRICS if m in result):
        if name in LENGTH_KEYS:  # Kaldi's "%WER 12.50 [ 5 / 40, ... ]"
            c = result[f"{name}_counts"]
            errors = c["sub"] + c["del"] + c["ins"]
            detail = f"[ {errors} / {c[LENGTH_KEYS[name]]}, {c['sub']} sub, {c['del']} del, {c['ins']} ins ]"
        else:
            detail = result["signature"][name]
        out.append(f"{LABELS[name]:<5} {result[name]:6.2f}  {detail}")
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ref", required=True, help="reference Kaldi text file (utt-id words...)")
    parser.add_argument("--hyp", required=True, help="hypothesis Kaldi text file; lines may have no words")
    parser.add_argument("--metrics", default="bleu",
                        help=f"comma-separated, from {','.join(METRICS)} (default: bleu)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--alignment", metavar="FILE", help="write a per-utterance alignment to FILE")
    parser.add_argument("--tokenize", default="13a", choices=list(BLEU.TOKENIZERS),
                        help="sacrebleu BLEU tokenizer (default: 13a)")


def run(args: argparse.Namespace) -> int:
    result = score(args.ref, args.hyp, args.metrics, alignment_path=args.alignment, tokenize=args.tokenize)
    print(json.dumps(result) if args.json else format_table(result))
    return 0
