"""Datasets, dynamic batches, DDP sharding and collation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdst.cli import main
from kdst.data.dataset import SpeechDataset, collate, make_batches, shard_batches
from kdst.data.tokenizer import load_tokenizer, train_tokenizer
from kdst.errors import DataError

LENGTHS = {f"u{i:03d}": 50 + (i * 37) % 400 for i in range(200)}


def test_batches_cover_every_utterance_once_within_the_size_limit():
    batches = make_batches(LENGTHS, 2000, seed=3, epoch=1)
    flat = [u for b in batches for u in b]
    assert sorted(flat) == sorted(LENGTHS)
    assert all(max(LENGTHS[u] for u in b) * len(b) <= 2000 or len(b) == 1 for b in batches)
    # similar lengths together: padding wastes little
    padded = sum(max(LENGTHS[u] for u in b) * len(b) for b in batches)
    assert padded < 1.25 * sum(LENGTHS.values())


def test_batch_order_depends_only_on_seed_and_epoch():
    assert make_batches(LENGTHS, 2000, seed=3, epoch=1) == make_batches(LENGTHS, 2000, seed=3, epoch=1)
    assert make_batches(LENGTHS, 2000, seed=3, epoch=1) != make_batches(LENGTHS, 2000, seed=3, epoch=2)
    assert max(len(b) for b in make_batches(LENGTHS, 100_000, max_items=4)) == 4


def test_shards_are_disjoint_and_equally_long():
    batches = make_batches(LENGTHS, 2000)
    shards = [shard_batches(batches, r, 3) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    seen = [tuple(b) for s in shards for b in s]
    assert len(seen) == len(set(seen)) == len(batches) - len(batches) % 3
    with pytest.raises(ValueError, match="cannot feed 4 ranks"):
        shard_batches(batches[:3], 0, 4)


def test_speech_dataset_with_ctc_targets(segmented_dir: Path, tmp_path: Path):
    assert main(["fbank", str(segmented_dir), str(tmp_path / "f")]) == 0
    train_tokenizer(tmp_path / "de", [segmented_dir / "text.de"], type="char")
    train_tokenizer(tmp_path / "en", [segmented_dir / "text.en"], type="char")
    de, en = load_tokenizer(tmp_path / "de"), load_tokenizer(tmp_path / "en")
    dataset = SpeechDataset(segmented_dir, de, text="text.de", ctc_text="text.en", ctc_tokenizer=en)
    utt = dataset.ids[0]
    example = dataset[utt]
    assert example.src.shape == (dataset.src_lengths[utt], 80)
    assert de.decode(example.tgt) == "der Hund sieht die Katze 1" and en.decode(example.ctc) == "the dog sees the cat 1"
    batch = collate([dataset[u] for u in dataset.ids])
    assert batch["src"].shape == (4, max(dataset.src_lengths.values()), 80)
    assert batch["ctc_tgt_lengths"].tolist() == [len(dataset[u].ctc) for u in dataset.ids]
    padding = torch.arange(batch["tgt"].shape[1])[None, :] >= batch["tgt_lengths"][:, None]
    assert (batch["tgt"][padding] == 0).all() and (batch["tgt"][~padding] > 2).all()

    decoding = SpeechDataset(segmented_dir, de, text=None, ctc_text="text.en", ctc_tokenizer=en)
    assert decoding[utt].tgt == [] and decoding[utt].ctc is None

    (segmented_dir / "text.en").write_text((segmented_dir / "text.en").read_text().split("\n", 1)[1])
    with pytest.raises(DataError, match=r"text.en: 1 utterance\(s\) with features have no text"):
        SpeechDataset(segmented_dir, de, text="text.de", ctc_text="text.en", ctc_tokenizer=en)
