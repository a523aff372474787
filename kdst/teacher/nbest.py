"""A teacher's n-best list: the ``nbest.txt`` of ``kdst decode`` and the posterior of its hypotheses.

The file (docs/FORMATS.md) holds one hypothesis a line::

    <utt>-<rank> <score> <logprob> <text>

``logprob`` is log P(y|x), the plain sum over the tokens and ``<eos>``; ``score`` is what the
beam search ranked by, ``logprob / len ** length_penalty`` (``len`` counts ``<eos>``; a
transducer writes its log-probability in both).

Posteriors (``POSTERIORS``): the n-best with weights summing to 1 is the teacher's distribution
that pseudo labels train on and MBR takes expectations over.  ``posteriors`` gives
softmax(``scale`` · v) over the hypotheses, identical texts merged, with v one of

- ``score``    (default) the ranking's own score put back on the 1-best's scale:
               ``score · n₁``, with ``n₁ = logprob₁ / score₁`` the 1-best's length normaliser
               (``len₁ ** length_penalty``).  The weights fall with the rank, as the search
               ordered the hypotheses, and the 1-best's value is its own log-probability, so the
               weights are as sharp as sequence probabilities.  ``score`` alone would be a
               per-token value: rivals 0.05 nats per token apart would get weights within 5% of
               each other whatever their length, and ``--scale`` would have to be ~20 to undo it.
- ``logprob``  the raw log-probability, the posterior the model itself defines over these
               sequences.  It favours short hypotheses: a truncated 10-token rival with a higher
               log-probability than the 20-token 1-best (fewer tokens to pay for) outweighs it,
               0.88 to 0.12 for a difference of 2 nats, although the search ranked it lower.

With ``length_penalty`` 0 (and for a transducer) both are the same; so they are for a file
written by ``kdst nbest-union``, whose two columns both hold the merged log-posterior.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

from kdst.data.files import atomic_write_text
from kdst.data.kaldi_dir import c_sort_key, iter_entries
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


def write_nbest(path: str | os.PathLike, nbest: dict[str, Sequence[NbestEntry]]) -> None:
    """``nbest.txt`` as kdst decode writes it: lines sorted as text, an empty hypothesis ends after logprob."""
    lines = sorted((f"{utt}-{e.rank}", f"{e.score:.6f} {e.logprob:.6f} {e.text}".rstrip())
                   for utt, entries in nbest.items() for e in entries)
    atomic_write_text(path, "".join(f"{k} {v}\n" for k, v in lines))


def first_utterance(ids) -> str:
    """The first of some utterance ids in C order: what an error message names."""
    return min(ids, key=c_sort_key)


# --- posteriors ---------------------------------------------------------------------------------

POSTERIORS = ("score", "logprob")


def normalise_text(text: str) -> str:
    """Two token sequences that detokenise to the same words are one hypothesis."""
    return " ".join(text.split())


def log_weights(entries: Sequence[NbestEntry], posterior: str = "score", scale: float = 1.0) -> list[float]:
    """The unnormalised log-weight ``scale · v`` of each entry of a rank-sorted n-best (module docstring)."""
    if posterior == "logprob":
        return [scale * e.logprob for e in entries]
    if posterior != "score":
        raise KdstError(f"unknown posterior '{posterior}' ({', '.join(POSTERIORS)})")
    first = entries[0]
    normaliser = first.logprob / first.score if first.score != 0.0 else 1.0
    if not (math.isfinite(normaliser) and normaliser > 0.0):
        normaliser = 1.0  # a 1-best of probability 1 (or a hand-made file): the score as it is
    return [scale * normaliser * e.score for e in entries]


def logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def log_posteriors(entries: Sequence[NbestEntry], posterior: str = "score", scale: float = 1.0,
                   n: int | None = None) -> list[tuple[float, str]]:
    """``(log-posterior, text)`` of the first ``n`` distinct texts (all if None), in rank order.

    Identical texts (after ``normalise_text``) are one hypothesis whose probability is the sum of
    theirs; the distribution is normalised over the texts kept.
    """
    merged: dict[str, list[float]] = {}  # text -> log-weights, the best-ranked variant first
    for e, value in zip(entries, log_weights(entries, posterior, scale)):
        text = normalise_text(e.text)
        if text in merged:
            merged[text].append(value)
        elif n is None or len(merged) < n:
            merged[text] = [value]
    if not merged:
        raise KdstError("an utterance has no hypotheses")
    values = {t: logsumexp(v) for t, v in merged.items()}
    total = logsumexp(list(values.values()))
    if total == -math.inf:  # every weight underflowed: nothing to tell the hypotheses apart
        return [(-math.log(len(values)), t) for t in values]
    return [(v - total, t) for t, v in values.items()]


def posteriors(entries: Sequence[NbestEntry], posterior: str = "score", scale: float = 1.0,
               n: int | None = None) -> list[tuple[float, str]]:
    """``(weight, text)`` of the first ``n`` distinct texts, weights summing to 1 (``log_posteriors``)."""
    return [(math.exp(v), t) for v, t in log_posteriors(entries, posterior, scale, n)]
