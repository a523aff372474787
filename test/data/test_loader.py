"""DataLoader batches: the same as reading them in-process, from a start position, without touching torch's RNG."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from helpers import make_mt_task
from kdst.data.dataset import SpeechDataset, TextDataset, iterate, make_batches
from kdst.data.features import write_fbank_shard
from kdst.data.loader import BatchesFrom, batch_loader
from kdst.data.nbest_targets import NbestTargets
from kdst.data.tokenizer import load_tokenizer, train_tokenizer
from kdst.errors import DataError, KdstError


@pytest.fixture(scope="module")
def mt(tmp_path_factory) -> tuple[TextDataset, Path]:
    root = make_mt_task(tmp_path_factory.mktemp("mt"))
    return TextDataset(root / "train", load_tokenizer(root / "tok_en"), load_tokenizer(root / "tok_de")), root


def same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]) if torch.is_tensor(x[key]) else x[key] == y[key], key


def test_sampler_starts_where_asked():
    batches = [["a"], ["b", "c"], ["d"]]
    assert list(BatchesFrom(batches)) == batches
    assert list(BatchesFrom(batches, 2)) == [["d"]] and len(BatchesFrom(batches, 2)) == 1
    assert list(BatchesFrom(batches, 3)) == [] and len(BatchesFrom(batches, 3)) == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_gives_the_batches_of_iterate_from_a_start(mt, workers):
    dataset, _ = mt
    batches = make_batches(dataset.src_lengths, 400, seed=3, epoch=2)
    assert len(batches) > 4
    same_batches(list(batch_loader(dataset, batches, start=3, num_workers=workers)),
                 list(iterate(dataset, batches, 3)))


def test_starting_a_pass_draws_nothing_from_the_global_rng(mt):
    dataset, _ = mt
    batches = make_batches(dataset.src_lengths, 400)
    torch.manual_seed(5)
    for workers in (0, 2):
        before = torch.get_rng_state()
        next(iter(batch_loader(dataset, batches, num_workers=workers)))
        assert torch.equal(torch.get_rng_state(), before), workers


def test_per_epoch_targets_reach_the_workers(mt):
    """N-best targets sampled per epoch: the workers of a pass see the epoch set before it."""
    dataset, root = mt
    texts = (root / "train" / "text").read_text().splitlines()
    nbest = {line.split(" ", 1)[0]: [(0.5, line.split(" ", 1)[1]), (0.5, "x y z")] for line in texts}
    sampled = NbestTargets(dataset, nbest, load_tokenizer(root / "tok_de"), mode="sample", seed=1)
    batches = make_batches(sampled.src_lengths, 400, shuffle=False)
    for epoch in (1, 2):
        sampled.set_epoch(epoch)
        same_batches(list(batch_loader(sampled, batches, num_workers=2)), list(iterate(sampled, batches)))
    sampled.set_epoch(1)
    first = list(batch_loader(sampled, batches, num_workers=2))
    sampled.set_epoch(2)
    assert any(not torch.equal(a["tgt"], b["tgt"]) for a, b in zip(first, batch_loader(sampled, batches,
                                                                                         num_workers=2)))


def test_speech_features_pickle_and_load_in_workers(plain_dir: Path, tmp_path: Path):
    scp = write_fbank_shard(plain_dir, tmp_path / "fbank", "plain")
    (plain_dir / "feats.scp").write_text(scp.read_text())
    (plain_dir / "utt2num_frames").write_text((tmp_path / "fbank" / "plain.utt2num_frames").read_text())
    train_tokenizer(tmp_path / "tok", [plain_dir / "text"], type="char")
    dataset = SpeechDataset(plain_dir, load_tokenizer(tmp_path / "tok"))
    dataset[dataset.ids[0]]  # a reader opened before the workers start
    copy = pickle.loads(pickle.dumps(dataset))  # as a spawned worker gets it
    assert (copy[dataset.ids[1]].src == dataset[dataset.ids[1]].src).all()
    batches = [dataset.ids[:2], dataset.ids[2:]]
    same_batches(list(batch_loader(dataset, batches, num_workers=2)), list(iterate(dataset, batches)))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_example_is_the_one_line_it_raised_in_any_process(workers):
    class Broken:
        def __getitem__(self, utt):
            raise DataError("data/feats.scp", f"the features of '{utt}' cannot be read", line=3)

    with pytest.raises(KdstError) as caught:
        list(batch_loader(Broken(), [["u1", "u2"]], num_workers=workers))
    assert str(caught.value) == "data/feats.scp:3: the features of 'u1' cannot be read"
