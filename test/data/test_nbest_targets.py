"""kdst.data.nbest_targets: the three ways to train on N-best pseudo labels, and gold mixing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdst.data.dataset import Example, collate, make_batches
from kdst.config import NbestTargetsConfig, build
from kdst.data.nbest_targets import NbestTargets, load_nbest_targets, mix_gold
from kdst.errors import DataError, KdstError

NBEST = {
    "u1": [(0.6, "a b"), (0.3, "a c"), (0.1, "d")],
    "u2": [(0.8, "x"), (0.2, "x y z")],
}
GOLD = {"u1": "a b", "u2": "w"}
WORDS = {w: i + 3 for i, w in enumerate("a b c d w x y z".split())}


class WordTokenizer:
    tokens = ["<blank>", "<unk>", "<sos/eos>", *WORDS]

    def encode(self, text: str) -> list[int]:
        return [WORDS[w] for w in text.split()]


class Features:
    """A stand-in speech dataset: random features, gold targets."""

    def __init__(self):
        self.ids = sorted(NBEST)
        self.src_lengths = {"u1": 7, "u2": 5}

    def __getitem__(self, utt: str) -> Example:
        feats = np.full((self.src_lengths[utt], 4), float(len(utt)), dtype=np.float32)
        return Example(utt, feats, WordTokenizer().encode(GOLD[utt]))


def targets(mode: str, **kwargs) -> NbestTargets:
    return NbestTargets(Features(), NBEST, WordTokenizer(), mode=mode, **kwargs)


def test_expand_makes_every_hypothesis_an_example():
    data = targets("expand")
    assert len(data.ids) == 5
    got = sorted((data[k].tgt, data.src_lengths[k]) for k in data.ids)
    want = sorted((WordTokenizer().encode(t), Features().src_lengths[u]) for u, hyps in NBEST.items()
                  for _, t in hyps)
    assert got == want
    # the source of an expanded example is its utterance's
    key = next(k for k in data.ids if k.startswith("u2"))
    assert data[key].src.shape == (5, 4)
    assert sorted(sum(make_batches(data.src_lengths, 100), [])) == data.ids


def test_expand_with_gold_adds_the_reference_once():
    data = targets("expand", gold=GOLD, gold_weight=0.5)
    texts = {u: sorted(tuple(data[k].tgt) for k in data.ids if k.startswith(u)) for u in NBEST}
    assert len(texts["u1"]) == 3  # the reference "a b" is the 1-best already: merged, not doubled
    assert len(texts["u2"]) == 3 and (WORDS["w"],) in texts["u2"]


def test_weighted_examples_carry_every_hypothesis_with_weights_summing_to_one():
    data = targets("weighted")
    example = data["u1"]
    assert [w for w, _ in example.nbest] == [0.6, 0.3, 0.1]
    assert [ids for _, ids in example.nbest] == [WordTokenizer().encode(t) for _, t in NBEST["u1"]]
    batch = collate([data["u1"], data["u2"]])
    assert batch["tgt"].shape[0] == 5 and batch["src"].shape[0] == 2
    assert batch["tgt_utt"].tolist() == [0, 0, 0, 1, 1]
    per_utt = torch.zeros(2).index_add_(0, batch["tgt_utt"], batch["tgt_weight"])
    assert per_utt.tolist() == pytest.approx([1.0, 1.0])
    assert batch["tgt_lengths"].tolist() == [2, 2, 1, 1, 3]


def test_gold_weight_scales_the_teacher_and_gives_the_rest_to_the_reference():
    mixed = dict((t, w) for w, t in targets("weighted", gold=GOLD, gold_weight=0.3)["u2"].nbest
                 for t in [" ".join(str(i) for i in t)])
    assert mixed == pytest.approx({str(WORDS["x"]): 0.56, f"{WORDS['x']} {WORDS['y']} {WORDS['z']}": 0.14,
                                   str(WORDS["w"]): 0.3})
    # a reference equal to a hypothesis is merged with it
    assert dict((t, w) for w, t in mix_gold(NBEST["u1"], "a b", 0.5)) == pytest.approx(
        {"a b": 0.8, "a c": 0.15, "d": 0.05})


def test_sample_follows_the_posterior_and_is_reproducible():
    data = targets("sample", seed=7)
    counts = {t: 0 for _, t in NBEST["u1"]}
    epochs = 3000
    decode = {tuple(WordTokenizer().encode(t)): t for _, t in NBEST["u1"]}
    draws = []
    for epoch in range(1, epochs + 1):
        data.set_epoch(epoch)
        draws.append(decode[tuple(data["u1"].tgt)])
    for text in draws:
        counts[text] += 1
    for weight, text in NBEST["u1"]:
        # binomial standard deviation at 3000 draws is <= 0.009: 4 sigma
        assert counts[text] / epochs == pytest.approx(weight, abs=0.036)
    # the same (seed, epoch) draws the same in another process or a resumed run; another seed differs
    again = targets("sample", seed=7)
    other = targets("sample", seed=8)
    same, different = [], []
    for epoch in range(1, 41):
        again.set_epoch(epoch)
        other.set_epoch(epoch)
        same.append(decode[tuple(again["u1"].tgt)])
        different.append(decode[tuple(other["u1"].tgt)])
    assert same == draws[:40]
    assert different != draws[:40]


def test_missing_pseudo_labels_and_bad_options_are_errors(tmp_path):
    with pytest.raises(DataError, match="1 training utterance"):
        NbestTargets(Features(), {"u1": NBEST["u1"]}, WordTokenizer(), mode="weighted")
    with pytest.raises(KdstError, match="mode"):
        targets("all")
    with pytest.raises(KdstError, match="gold_weight"):
        targets("weighted", gold=GOLD, gold_weight=1.0)
    with pytest.raises(KdstError, match="not found"):
        load_nbest_targets(Features(), NbestTargetsConfig("nope.txt"), tmp_path, WordTokenizer())
    with pytest.raises(KdstError, match=r"data.nbest_targets.weights: unknown key \(did you mean"):
        build(NbestTargetsConfig, {"file": "x", "weights": 1}, "data.nbest_targets")


def test_load_from_a_data_dir_with_gold(tmp_path):
    (tmp_path / "pseudo_nbest3.txt").write_text(
        "".join(f"{u}-{r} {w} {t}\n" for u, hyps in NBEST.items() for r, (w, t) in enumerate(hyps, 1)))
    (tmp_path / "text").write_text("".join(f"{u} {t}\n" for u, t in GOLD.items()))
    data = load_nbest_targets(Features(), NbestTargetsConfig("pseudo_nbest3.txt", mode="weighted", gold_weight=0.2),
                              tmp_path, WordTokenizer())
    assert sum(w for w, _ in data["u2"].nbest) == pytest.approx(1.0)
    assert (0.2, [WORDS["w"]]) in data["u2"].nbest
