"""Training examples from Kaldi data dirs, length-bucketed dynamic batches, and collation.

An example is ``(utt id, source, target ids)``: the source is a (frames, 80)
feature matrix (speech) or a list of token ids (MT, from ``text.<src lang>``).
Everything is keyed by utterance id, so any extra per-utterance data (teacher
outputs, pseudo labels) can be joined safely.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from kdst.config import DataConfig
from kdst.data.features import GlobalCMVN, load_feature_matrix, read_utt2num_frames
from kdst.data.kaldi_dir import DataDir, Entry, iter_entries
from kdst.data.tokenizer import Tokenizer, load_tokenizer
from kdst.errors import DataError, KdstError


@dataclass(frozen=True)
class Example:
    id: str
    src: np.ndarray | list[int]
    tgt: list[int]
    ctc: list[int] | None = None  # CTC targets when they differ from tgt (ST: the source transcript)
    teacher_src: list[int] | None = None  # what an online MT teacher reads (the transcript)
    teacher_topk: tuple[np.ndarray, np.ndarray] | None = None  # cached (indices, values), (len(tgt) + 1, k)
    nbest: tuple[tuple[float, list[int]], ...] | None = None  # weighted targets, all trained on (N-best)


class SpeechDataset:
    """Features (feats.scp, global CMVN) -> target tokens from a text file of the data dir."""

    def __init__(self, data_dir: str | Path, tokenizer: Tokenizer, *, text: str | None = "text",
                 cmvn: str | Path | None = None, ctc_text: str | None = None, ctc_tokenizer: Tokenizer | None = None):
        data = DataDir(data_dir)
        self.feats_scp = data.file("feats.scp")
        self.feats = _feature_entries(data)  # read on access
        if not data.has("utt2num_frames"):
            raise DataError(data.file("utt2num_frames"), "missing (kdst fbank writes it with feats.scp)")
        frames = read_utt2num_frames(data.file("utt2num_frames"))
        without = [u for u in frames if u not in self.feats]
        if without:
            raise DataError(self.feats_scp, f"{len(without)} utterance(s) of utt2num_frames have no features here, "
                                            f"e.g. '{without[0]}' (run kdst fix-data)")
        # Decoding needs no targets (text None), and then no CTC targets either.
        self.targets = _encode_texts(data, text, frames, tokenizer) if text else {u: [] for u in frames}
        self.ctc_targets = _encode_texts(data, ctc_text, frames, ctc_tokenizer) if text and ctc_text else None
        self.cmvn = GlobalCMVN.load(cmvn) if cmvn else None
        self.ids = sorted(frames)
        self.src_lengths = {u: frames[u] for u in self.ids}

    def __getitem__(self, utt: str) -> Example:
        feats = load_feature_matrix(self.feats_scp, self.feats[utt])
        if self.cmvn is not None:
            feats = self.cmvn(feats)
        ctc = self.ctc_targets[utt] if self.ctc_targets is not None else None
        return Example(utt, feats.astype(np.float32), self.targets[utt], ctc)


def _feature_entries(data: DataDir) -> dict[str, Entry]:
    """utterance -> its feats.scp line; no feats.scp is a DataError saying what would make one."""
    if not data.has("feats.scp"):
        raise DataError(data.file("feats.scp"), "missing: the model reads speech features (run kdst fbank on "
                                                "this data dir)")
    entries: dict[str, Entry] = {}
    for entry in iter_entries(data.file("feats.scp")):
        if entry.key in entries:
            raise DataError(data.file("feats.scp"), f"duplicate key '{entry.key}' (first on line "
                                                    f"{entries[entry.key].line})", entry.line)
        entries[entry.key] = entry
    return entries


def _encode_texts(data: DataDir, name: str, utterances, tokenizer: Tokenizer) -> dict[str, list[int]]:
    """Token ids of every utterance from the text file ``name``; a missing one is a DataError."""
    texts = data.require(name)
    missing = [u for u in utterances if u not in texts]
    if missing:
        raise DataError(data.file(name), f"{len(missing)} utterance(s) with features have no text, "
                                         f"e.g. '{missing[0]}' (run kdst fix-data)")
    return {u: tokenizer.encode(texts[u]) for u in utterances}


class TextDataset:
    """Source text -> target text (the MT teacher): two text files of one data dir."""

    def __init__(self, data_dir: str | Path, src_tokenizer: Tokenizer, tokenizer: Tokenizer, *,
                 src_text: str = "text.en", text: str | None = "text"):
        data = DataDir(data_dir)
        sources = data.require(src_text)
        targets = data.require(text) if text is not None else {u: "" for u in sources}
        self.ids = sorted(u for u in sources if u in targets)
        self.sources = {u: src_tokenizer.encode(sources[u]) for u in self.ids}
        self.targets = {u: tokenizer.encode(targets[u]) if targets[u] else [] for u in self.ids}
        self.src_lengths = {u: len(self.sources[u]) for u in self.ids}

    def __getitem__(self, utt: str) -> Example:
        return Example(utt, self.sources[utt], self.targets[utt])


def make_dataset(data: DataConfig, data_dir: str | Path, *, with_targets: bool = True):
    """The dataset of ``data_dir`` as the ``data`` section of a config describes it."""
    if data.tokenizer is None:
        raise KdstError("data.tokenizer is not set")
    tokenizer = load_tokenizer(data.tokenizer)
    text = data.text if with_targets else None
    if data.input == "text":
        return TextDataset(data_dir, load_tokenizer(data.src_tokenizer), tokenizer, src_text=data.src_text, text=text)
    ctc_tokenizer = load_tokenizer(data.ctc_tokenizer) if data.ctc_text else None
    return SpeechDataset(data_dir, tokenizer, text=text, cmvn=data.cmvn, ctc_text=data.ctc_text,
                         ctc_tokenizer=ctc_tokenizer)


def make_batches(lengths: dict[str, int], max_units: int, *, max_items: int = 10_000,
                 seed: int = 0, epoch: int = 0, shuffle: bool = True) -> list[list[str]]:
    """Length-bucketed dynamic batches: ids of similar length together, padded size ≤ max_units.

    The order depends only on (seed, epoch), so every rank and every resumed
    run sees the same batches.  Lengths are jittered a little per epoch so
    batches differ between epochs.
    """
    rng = random.Random(seed * 100_003 + epoch)
    ids = sorted(lengths)
    if shuffle:
        ids.sort(key=lambda u: lengths[u] * (1 + 0.1 * rng.random()))
    else:
        ids.sort(key=lambda u: lengths[u])
    batches: list[list[str]] = []
    current: list[str] = []
    longest = 0
    for utt in ids:
        longest_if_added = max(longest, lengths[utt])
        if current and (longest_if_added * (len(current) + 1) > max_units or len(current) >= max_items):
            batches.append(current)
            current, longest_if_added = [], lengths[utt]
        current.append(utt)
        longest = longest_if_added
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


def shard_batches(batches: list[list[str]], rank: int, world_size: int) -> list[list[str]]:
    """Batches of one DDP rank: every world_size-th, the list cut so every rank gets as many."""
    usable = len(batches) - len(batches) % world_size
    if usable == 0:
        raise ValueError(f"{len(batches)} batches cannot feed {world_size} ranks: lower the batch size")
    return batches[rank:usable:world_size]


def collate(examples: Sequence[Example]) -> dict:
    """Pad a list of examples into a batch dict (see kdst.models.encoder_decoder)."""
    src_lengths = torch.tensor([len(e.src) for e in examples])
    if examples[0].nbest is not None:
        return _collate_nbest(examples, src_lengths)
    tgt, tgt_lengths = _pad([e.tgt for e in examples])
    batch = {"ids": [e.id for e in examples], "src": _pad_sources(examples, src_lengths), "src_lengths": src_lengths,
             "tgt": tgt, "tgt_lengths": tgt_lengths}
    if examples[0].ctc is not None:
        batch["ctc_tgt"], batch["ctc_tgt_lengths"] = _pad([e.ctc for e in examples])
    if examples[0].teacher_src is not None:
        batch["teacher_src"], batch["teacher_src_lengths"] = _pad([e.teacher_src for e in examples])
    if examples[0].teacher_topk is not None:
        # (B, U+1, k), row u = the decoder position that predicts target token u (or <eos>); padding
        # rows get index 0 and value 0 and are masked out by the loss.
        width, k = max(len(e.tgt) for e in examples) + 1, examples[0].teacher_topk[0].shape[1]
        indices = torch.zeros(len(examples), width, k, dtype=torch.long)
        values = torch.zeros(len(examples), width, k)
        for i, e in enumerate(examples):
            idx, val = e.teacher_topk
            indices[i, :len(idx)], values[i, :len(val)] = torch.from_numpy(idx), torch.from_numpy(val)
        batch["teacher_topk_indices"], batch["teacher_topk_values"] = indices, values
    return batch


def _collate_nbest(examples: Sequence[Example], src_lengths: torch.Tensor) -> dict:
    """Several weighted targets per example: one target row each, ``tgt_utt`` naming its example."""
    rows = [(i, weight, ids) for i, e in enumerate(examples) for weight, ids in e.nbest]
    tgt, tgt_lengths = _pad([ids for _, _, ids in rows])
    batch = {"ids": [e.id for e in examples], "src": _pad_sources(examples, src_lengths), "src_lengths": src_lengths,
             "tgt": tgt, "tgt_lengths": tgt_lengths, "tgt_utt": torch.tensor([i for i, _, _ in rows]),
             "tgt_weight": torch.tensor([w for _, w, _ in rows], dtype=torch.float32)}
    if examples[0].ctc is not None:  # CTC on the source transcript (ST): one target per example still
        batch["ctc_tgt"], batch["ctc_tgt_lengths"] = _pad([e.ctc for e in examples])
    return batch


def _pad_sources(examples: Sequence[Example], src_lengths: torch.Tensor) -> torch.Tensor:
    if isinstance(examples[0].src, np.ndarray):
        src = torch.zeros(len(examples), int(src_lengths.max()), examples[0].src.shape[1])
    else:
        src = torch.zeros(len(examples), int(src_lengths.max()), dtype=torch.long)
    for i, e in enumerate(examples):
        src[i, : len(e.src)] = torch.as_tensor(e.src)
    return src


def _pad(sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in sequences])
    padded = torch.zeros(len(sequences), max(int(lengths.max()), 1), dtype=torch.long)
    for i, s in enumerate(sequences):
        padded[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return padded, lengths


def iterate(dataset, batches: list[list[str]], start: int = 0) -> Iterator[dict]:
    """Collated batches from position ``start`` on (for resuming inside an epoch)."""
    for ids in batches[start:]:
        yield collate([dataset[u] for u in ids])
