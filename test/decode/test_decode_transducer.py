"""kdst decode for a transducer: greedy (beam 1) and modified beam search, in the encoder-decoder's formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdst.cli import main
from kdst.config import parse_config
from kdst.data.dataset import collate, make_dataset
from kdst.data.kaldi_dir import DataDir, iter_entries
from kdst.data.tokenizer import load_tokenizer
from kdst.decode.decode import decode_data_dir
from kdst.decode.search import SearchOptions
from kdst.decode.transducer_search import greedy_search, modified_beam_search
from kdst.models import Transducer
from kdst.models.loading import load_model
from kdst.train.trainer import run
from transducer_task import make_feature_task, transducer_config


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A transducer trained for two epochs, its two epoch checkpoints averaged by ``kdst average``."""
    root = make_feature_task(tmp_path_factory.mktemp("rnnt_decode"))
    exp = root / "exp"
    torch.set_num_threads(1)
    progress = run(parse_config(transducer_config(root, streaming=True, epochs=2)), exp)
    assert sorted(progress.history) == [1, 2]
    assert main(["average", "--exp-dir", str(exp), "--num", "2"]) == 0
    model, _ = load_model(exp / "avg_best2.pt")
    assert isinstance(model, Transducer)
    return root, exp / "avg_best2.pt"


def read_nbest(path: Path) -> dict[str, list[tuple[int, float, float, str]]]:
    nbest: dict[str, list[tuple[int, float, float, str]]] = {}
    for e in iter_entries(path):
        utt, rank = e.key.rsplit("-", 1)
        score, logprob, *text = e.value.split(" ", 2)
        nbest.setdefault(utt, []).append((int(rank), float(score), float(logprob), text[0] if text else ""))
    return nbest


@pytest.mark.parametrize("beam, nbest", [(1, 1), (3, 3)])
def test_decode_writes_the_documented_files(trained, tmp_path: Path, beam: int, nbest: int):
    root, checkpoint = trained
    out = tmp_path / "out"
    stats = decode_data_dir(checkpoint, root / "dev", out, SearchOptions(beam=beam, nbest=nbest), batch_units=300,
                            device="cpu")
    ids = DataDir(root / "dev").utterances()
    hyps = {e.key: e.value for e in iter_entries(out / "hyp.txt", allow_empty_value=True)}
    assert list(hyps) == ids
    nbests = read_nbest(out / "nbest.txt")
    assert sorted(nbests) == ids
    for utt, entries in nbests.items():
        assert [r for r, *_ in entries] == list(range(1, len(entries) + 1)) and 1 <= len(entries) <= nbest
        scores = [s for _, s, _, _ in entries]
        assert scores == sorted(scores, reverse=True), "rank 1 is the best"
        assert all(s == lp and s <= 0 for _, s, lp, _ in entries)  # a transducer's score is its log-probability
        assert entries[0][3] == hyps[utt]
        assert len({text for *_, text in entries}) == len(entries)  # distinct label sequences
    assert json.loads((out / "decode_stats.json").read_text()) == stats
    assert stats["utterances"] == len(ids) and stats["beam"] == beam and stats["rtf"] > 0

    # the same hypotheses as the searches themselves, one utterance at a time
    model, config = load_model(checkpoint)
    tokenizer = load_tokenizer(config.data.tokenizer)
    dataset = make_dataset(config.data, root / "dev", with_targets=False)
    for utt in ids[:3]:
        batch = collate([dataset[utt]])
        if beam == 1:
            hyp = greedy_search(model, batch["src"], batch["src_lengths"], max_symbols_per_frame=3)[0]
        else:
            hyp = modified_beam_search(model, batch["src"], batch["src_lengths"], beam=beam, nbest=nbest)[0][0]
        assert tokenizer.decode(hyp.tokens) == hyps[utt]
        assert hyp.score == pytest.approx(nbests[utt][0][1], abs=1e-4)


def test_cli_greedy_with_max_symbols_per_frame(trained, tmp_path: Path):
    root, checkpoint = trained
    common = ["decode", "--checkpoint", str(checkpoint), "--data-dir", str(root / "dev"), "--device", "cpu"]
    assert main([*common, "--greedy", "--max-symbols-per-frame", "1", "--output-dir", str(tmp_path / "g1")]) == 0
    # with one label per frame, greedy and modified beam search share one topology: beam 1 is greedy
    model, config = load_model(checkpoint)
    dataset = make_dataset(config.data, root / "dev", with_targets=False)
    batch = collate([dataset[u] for u in dataset.ids])
    beam1 = modified_beam_search(model, batch["src"], batch["src_lengths"], beam=1)
    nbests = read_nbest(tmp_path / "g1" / "nbest.txt")
    for utt, [hyp] in zip(dataset.ids, beam1):
        assert nbests[utt][0][1] == pytest.approx(hyp.score, abs=1e-4)
    stats = json.loads((tmp_path / "g1" / "decode_stats.json").read_text())
    assert stats["beam"] == 1
