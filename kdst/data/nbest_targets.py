"""Training on a teacher's N-best pseudo labels instead of (or beside) the references.

Mun'im, Inoue & Shinoda (2019) train a small attention ASR student on several
beam-search hypotheses of a big teacher per utterance.  The hypotheses come
from ``kdst pseudo-labels`` (kdst.teacher.pseudo_labels) as a file of the
training data dir (docs/FORMATS.md)::

    <utt>-<rank> <weight> <text>        weight: the teacher's posterior over the N-best, summing to 1

and are used in one of three ways (``MODES``):

- ``expand``    every hypothesis is an example of its own: N times the examples per epoch
- ``sample``    one hypothesis per utterance and epoch, drawn in proportion to its weight
                (deterministic in (seed, epoch, utterance), so resumed and DDP runs agree)
- ``weighted``  all N in one example: the decoder runs once per hypothesis on the same
                encoder output and the loss is the weight-averaged cross-entropy

``gold_weight`` g mixes the reference in as one more hypothesis: the teacher's
weights are scaled by 1 - g and the reference gets g (in ``expand`` mode, g > 0
adds the reference as one more example).  A hypothesis equal to the reference
is merged with it.
"""

from __future__ import annotations

import os
import random
from dataclasses import replace
from pathlib import Path

from kdst.config import NbestTargetsConfig
from kdst.data.kaldi_dir import iter_entries
from kdst.data.tokenizer import Tokenizer
from kdst.errors import DataError, KdstError

MODES = ("expand", "sample", "weighted")
WEIGHT_TOLERANCE = 1e-3  # the file holds weights rounded to 6 digits


def read_pseudo_nbest(path: str | os.PathLike) -> dict[str, list[tuple[float, str]]]:
    """utterance id -> [(weight, text)] in rank order; the weights of an utterance must sum to 1."""
    found: dict[str, dict[int, tuple[float, str]]] = {}
    lines: dict[str, int] = {}
    for entry in iter_entries(path, allow_empty_value=False):
        utt, dash, rank_text = entry.key.rpartition("-")
        if not dash or not utt or not rank_text.isdigit() or int(rank_text) < 1:
            raise DataError(path, f"key '{entry.key}' is not '<utt>-<rank>' with a rank >= 1", entry.line)
        weight_text, _, text = entry.value.partition(" ")
        try:
            weight = float(weight_text)
        except ValueError:
            raise DataError(path, f"weight '{weight_text}' is not a number", entry.line) from None
        if not 0.0 <= weight <= 1.0:
            raise DataError(path, f"weight {weight} is outside [0, 1]", entry.line)
        ranks = found.setdefault(utt, {})
        if int(rank_text) in ranks:
            raise DataError(path, f"'{entry.key}' appears twice", entry.line)
        ranks[int(rank_text)] = (weight, text.strip())
        lines[utt] = entry.line
    nbest: dict[str, list[tuple[float, str]]] = {}
    for utt, ranks in found.items():
        if sorted(ranks) != list(range(1, len(ranks) + 1)):
            raise DataError(path, f"utterance '{utt}' has ranks {sorted(ranks)}, not 1..{len(ranks)}", lines[utt])
        total = sum(w for w, _ in ranks.values())
        if abs(total - 1.0) > WEIGHT_TOLERANCE:
            raise DataError(path, f"the weights of utterance '{utt}' sum to {total:.6f}, not 1", lines[utt])
        nbest[utt] = [ranks[r] for r in sorted(ranks)]
    return nbest


def mix_gold(hyps: list[tuple[float, str]], gold: str, gold_weight: float) -> list[tuple[float, str]]:
    """The hypotheses with the reference mixed in at ``gold_weight``; equal texts are merged."""
    if gold_weight <= 0.0:
        return hyps
    mixed: dict[str, float] = {}
    for weight, text in hyps:
        mixed[text] = mixed.get(text, 0.0) + (1.0 - gold_weight) * weight
    mixed[gold] = mixed.get(gold, 0.0) + gold_weight
    return [(w, t) for t, w in mixed.items()]


class NbestTargets:
    """A training set (SpeechDataset or TextDataset) whose targets are N-best pseudo labels.

    Quacks like the dataset it wraps: ``ids``, ``src_lengths`` and ``[id]``; the
    trainer calls ``set_epoch`` before each epoch (used by ``sample``).
    """

    def __init__(self, dataset, nbest: dict[str, list[tuple[float, str]]], tokenizer: Tokenizer, *,
                 mode: str, gold: dict[str, str] | None = None, gold_weight: float = 0.0, seed: int = 1,
                 source: str | os.PathLike = "pseudo labels"):
        if mode not in MODES:
            raise KdstError(f"N-best mode must be one of {', '.join(MODES)}, not '{mode}'")
        if not 0.0 <= gold_weight < 1.0:
            raise KdstError(f"gold_weight must be in [0, 1), not {gold_weight}")
        missing = [u for u in dataset.ids if u not in nbest]
        if missing:
            raise DataError(source, f"{len(missing)} training utterance(s) have no pseudo labels, "
                                    f"e.g. '{missing[0]}' (was the n-best decoded on another data dir?)")
        if gold_weight > 0.0 and gold is None:
            raise KdstError("gold_weight > 0 needs the references")
        self.dataset, self.mode, self.seed, self.epoch = dataset, mode, seed, 1
        # (weight, token ids) per utterance; in expand mode every hypothesis counts once, whatever its weight.
        self.targets: dict[str, list[tuple[float, list[int]]]] = {}
        for utt in dataset.ids:
            if gold is not None and utt not in gold:
                raise DataError(source, f"utterance '{utt}' has no reference to mix in (gold_weight > 0)")
            hyps = mix_gold(nbest[utt], gold[utt], gold_weight) if gold is not None else nbest[utt]
            self.targets[utt] = [(w, tokenizer.encode(t)) for w, t in hyps if w > 0.0 or mode == "expand"]
        if mode == "expand":
            self.members = {f"{utt}#{i}": (utt, i) for utt in dataset.ids for i in range(len(self.targets[utt]))}
            self.ids = sorted(self.members)
            self.src_lengths = {key: dataset.src_lengths[utt] for key, (utt, _) in self.members.items()}
        else:
            self.ids, self.src_lengths = dataset.ids, dataset.src_lengths

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def choose(self, utt: str) -> int:
        """The hypothesis ``sample`` mode trains on for ``utt`` this epoch, drawn by weight."""
        # A str seed is hashed with SHA-512 by random.seed: the same draw in every process and run.
        rng = random.Random(f"{self.seed}:{self.epoch}:{utt}")
        weights = [w for w, _ in self.targets[utt]]
        return rng.choices(range(len(weights)), weights=weights)[0]

    def __getitem__(self, key: str):
        if self.mode == "expand":
            utt, index = self.members[key]
            return replace(self.dataset[utt], id=key, tgt=self.targets[utt][index][1])
        example = self.dataset[key]
        if self.mode == "sample":
            return replace(example, tgt=self.targets[key][self.choose(key)][1])
        return replace(example, tgt=self.targets[key][0][1], nbest=tuple(self.targets[key]))


def load_nbest_targets(dataset, section: NbestTargetsConfig, data_dir: str | os.PathLike, tokenizer: Tokenizer,
                       *, gold_text: str = "text", seed: int = 1) -> NbestTargets:
    """The ``data.nbest_targets`` section of a training config applied to the training set.

    ``{file: pseudo_nbest5.txt, mode: weighted, gold_weight: 0.0}``; ``file`` is
    relative to the training data dir.
    """
    path = Path(data_dir) / section.file
    if not path.is_file():
        raise KdstError(f"{path}: N-best pseudo labels not found (run the pseudo-label stage)")
    gold_weight = section.gold_weight
    gold = None
    if gold_weight > 0.0:
        gold = {e.key: e.value for e in iter_entries(Path(data_dir) / gold_text, allow_empty_value=True)}
    return NbestTargets(dataset, read_pseudo_nbest(path), tokenizer, mode=section.mode,
                        gold=gold, gold_weight=gold_weight, seed=seed, source=path)
