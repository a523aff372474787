"""Beam search against an exhaustive oracle, batched against one utterance at a time, greedy against beam 1;
joint CTC/attention search against the same oracles with CTC probabilities from torch's CTC loss."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from kdst.decode import Hypothesis, SearchOptions, beam_search, ctc_prefix, greedy_search
from kdst.decode.search import SearchOptionError
from kdst.models import build_model
from kdst.models.encoders import lengths_to_mask

EOS = 2


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def mt_model(vocab: int = 6, seed: int = 0, scale: float = 5.0, eos_bias: float = 0.0):
    torch.manual_seed(seed)
    model = build_model({"input": "text", "src_vocab_size": 20, "vocab_size": vocab, "d_model": 16,
                         "encoder": {"layers": 1, "heads": 2, "ff_dim": 32},
                         "decoder": {"layers": 2, "heads": 2, "ff_dim": 32}})
    with torch.no_grad():
        model.decoder.output.weight.mul_(scale)  # peaky, non-uniform distributions
        model.decoder.output.bias[EOS] += eos_bias
    return model.eval()


def speech_model(encoder: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model({"input": "speech", "vocab_size": 10, "d_model": 16,
                         "encoder": {"type": encoder, "layers": 1, "heads": 2, "ff_dim": 32, "kernel_size": 7,
                                     "subsampling_channels": 8},
                         "decoder": {"layers": 2, "heads": 2, "ff_dim": 32}})
    with torch.no_grad():
        model.decoder.output.weight.mul_(4.0)
    return model.eval()


def text_batch(lengths, vocab: int = 20, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    src = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        src[i, :n] = torch.randint(3, vocab, (n,), generator=g)
    return src, torch.tensor(lengths)


def rescore(model, src, src_lengths, sequences, eos: bool = True):
    """Teacher-forced log-probability (with <eos> unless not ``eos``) of each token sequence, for utterance 0
    of the batch."""
    with torch.inference_mode():
        memory, memory_lengths = model.encode(src, src_lengths)
        n, width = len(sequences), max(len(s) for s in sequences) + 1
        inputs = torch.zeros(n, width, dtype=torch.long)
        targets = torch.zeros(n, width, dtype=torch.long)
        for i, s in enumerate(sequences):
            inputs[i, :len(s) + 1] = torch.tensor((EOS, *s))
            targets[i, :len(s) + 1] = torch.tensor((*s, EOS))
        mask = lengths_to_mask(memory_lengths, memory.shape[1])
        logits = model.decoder(inputs, memory.expand(n, -1, -1), mask.expand(n, -1))
        logp = logits.float().log_softmax(-1).gather(2, targets[:, :, None])[:, :, 0]
        real = torch.arange(width)[None, :] < torch.tensor([len(s) + eos for s in sequences])[:, None]
        return (logp * real).sum(1).tolist()


def same(a: list[Hypothesis], b: list[Hypothesis], tol: float = 1e-5):
    assert [h.tokens for h in a] == [h.tokens for h in b]
    for x, y in zip(a, b):
        assert x.score == pytest.approx(y.score, abs=tol) and x.logprob == pytest.approx(y.logprob, abs=tol)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 0.6])
@pytest.mark.parametrize("min_len_ratio", [0.0, 0.7])
def test_exhaustive_oracle(length_penalty, min_len_ratio):
    model = mt_model()
    src, src_lengths = text_batch([3])
    max_len, min_len = 4, math.floor(min_len_ratio * 3)  # max_len caps ceil(3 * 1.0) + 5
    tokens = [1, 3, 4, 5]  # every id but blank and <sos/eos>
    seqs = [s for n in range(max_len + 1) for s in itertools.product(tokens, repeat=n)]
    prefixes = len(seqs)  # 341: a beam this wide prunes nothing
    complete = [s for s in seqs if len(s) >= min_len]
    logprobs = rescore(model, src, src_lengths, complete)
    oracle = sorted(((lp / (len(s) + 1) ** length_penalty, lp, s) for s, lp in zip(complete, logprobs)),
                    reverse=True)[:10]
    options = SearchOptions(beam=prefixes, nbest=10, max_len=max_len, min_len_ratio=min_len_ratio,
                            length_penalty=length_penalty)
    (hyps,) = beam_search(model, src, src_lengths, options)
    same(hyps, [Hypothesis(s, score, lp) for score, lp, s in oracle])
    # The oracle is not trivial: the best hypotheses have different lengths.
    assert len({len(h.tokens) for h in hyps}) > 1


def reference_beam_search(model, src, src_lengths, beam, nbest, length_penalty, max_len, min_len):
    """Plain beam search for one utterance: lists, no cache, no early stop (runs to the max length).

    Same rule as the search: of the 2*beam best extensions, an <eos> among the first `beam` finishes a
    hypothesis and the `beam` best others live on.  The exact stopping bound must not change the result.
    """
    with torch.inference_mode():
        memory, memory_lengths = model.encode(src, src_lengths)
        mask = lengths_to_mask(memory_lengths, memory.shape[1])
        live, finished = [((), 0.0)], []
        for t in range(max_len + 1):
            cands = []
            inputs = torch.tensor([(EOS, *seq) for seq, _ in live])  # every live beam has t tokens
            logits = model.decoder(inputs, memory.expand(len(live), -1, -1), mask.expand(len(live), -1))[:, -1]
            for (seq, score), logp in zip(live, logits.float().log_softmax(-1).tolist()):
                for v, lp in enumerate(logp):
                    if v == 0 or (v == EOS and t < min_len) or (v != EOS and t == max_len):
                        continue
                    cands.append((score + lp, seq, v))
            cands = sorted(cands, key=lambda c: c[0], reverse=True)[:2 * beam]
            finished += [(s / (t + 1) ** length_penalty, s, q) for r, (s, q, v) in enumerate(cands)
                         if v == EOS and r < beam]
            live = [(q + (v,), s) for s, q, v in cands if v != EOS][:beam]
        return [Hypothesis(q, n, s) for n, s, q in sorted(finished, key=lambda f: f[0], reverse=True)[:nbest]]


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_equals_reference_without_early_stopping(length_penalty):
    model = mt_model(vocab=12, scale=2.0)
    src, src_lengths = text_batch([2, 5, 3, 7])
    options = SearchOptions(beam=3, nbest=3, length_penalty=length_penalty, min_len_ratio=0.4)
    results = beam_search(model, src, src_lengths, options)
    for i, hyps in enumerate(results):
        n = int(src_lengths[i])
        ref = reference_beam_search(model, src[i:i + 1, :n], src_lengths[i:i + 1], 3, 3, length_penalty,
                                    n + 5, math.floor(0.4 * n))
        same(hyps, ref)


def check_batched(model, src, src_lengths, options):
    batched = beam_search(model, src, src_lengths, options)
    assert len(batched) == src.shape[0]
    for i in range(src.shape[0]):
        n = int(src_lengths[i])
        (single,) = beam_search(model, src[i:i + 1, :n], src_lengths[i:i + 1], options)
        assert len(single) == options.nbest
        same(batched[i], single)
    return batched


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_batched_equals_one_at_a_time_mt(length_penalty):
    model = mt_model(vocab=12, scale=3.0)
    src, src_lengths = text_batch([3, 9, 1, 6, 12, 4])
    options = SearchOptions(beam=4, nbest=3, length_penalty=length_penalty, min_len_ratio=0.3)
    hyps = check_batched(model, src, src_lengths, options)
    assert len({len(h[0].tokens) for h in hyps}) > 1  # utterances end at different steps


@pytest.mark.parametrize("encoder", ["transformer", "conformer"])
def test_batched_equals_one_at_a_time_speech(encoder):
    model = speech_model(encoder)
    lengths = [40, 23, 61, 35, 17, 50]
    src = torch.randn(len(lengths), max(lengths), 80, generator=torch.Generator().manual_seed(3))
    for i, n in enumerate(lengths):
        src[i, n:] = 0.0
    check_batched(model, src, torch.tensor(lengths), SearchOptions(beam=3, nbest=2))


def test_greedy_equals_beam_one():
    model = mt_model(vocab=12, scale=3.0)
    src, src_lengths = text_batch([3, 9, 1, 6, 12, 4])
    greedy = greedy_search(model, src, src_lengths)
    beam = beam_search(model, src, src_lengths, SearchOptions(beam=1, length_penalty=0.0))
    same(greedy, [h[0] for h in beam])
    for i, g in enumerate(greedy):  # batched greedy equals greedy alone too
        same([g], greedy_search(model, src[i:i + 1, :int(src_lengths[i])], src_lengths[i:i + 1]))


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_scores_equal_teacher_forced_rescoring(length_penalty):
    model = mt_model(vocab=12, scale=3.0)
    src, src_lengths = text_batch([5, 8])
    results = beam_search(model, src, src_lengths, SearchOptions(beam=5, nbest=5, length_penalty=length_penalty))
    for i, hyps in enumerate(results):
        assert len(hyps) == 5
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        assert len({h.tokens for h in hyps}) == 5
        n = int(src_lengths[i])
        logprobs = rescore(model, src[i:i + 1, :n], src_lengths[i:i + 1], [h.tokens for h in hyps])
        for h, lp in zip(hyps, logprobs):
            assert h.logprob == pytest.approx(lp, abs=1e-5)
            assert h.score == pytest.approx(lp / (len(h.tokens) + 1) ** length_penalty, abs=1e-5)
            assert 0 not in h.tokens and EOS not in h.tokens


def test_length_limits():
    lengths = [2, 7, 4]
    src, src_lengths = text_batch(lengths)
    # <eos> very likely: every hypothesis stops as soon as the minimum length allows.
    eager = mt_model(vocab=12, eos_bias=30.0)
    options = SearchOptions(beam=3, nbest=3, min_len_ratio=0.5)
    for n, hyps in zip(lengths, beam_search(eager, src, src_lengths, options)):
        assert min(len(h.tokens) for h in hyps) == math.floor(0.5 * n)
    # <eos> very unlikely: hypotheses run to the max length, and no further.
    reluctant = mt_model(vocab=12, eos_bias=-30.0)
    options = SearchOptions(beam=3, nbest=3, max_len_ratio=1.5, max_len_bias=2, max_len=9)
    for n, hyps in zip(lengths, beam_search(reluctant, src, src_lengths, options)):
        assert {len(h.tokens) for h in hyps} == {min(math.ceil(1.5 * n) + 2, 9)}
    for n, h in zip(lengths, greedy_search(reluctant, src, src_lengths, max_len_ratio=1.0, max_len_bias=1)):
        assert len(h.tokens) == n + 1


def test_finished_utterances_leave_the_batch():
    model = mt_model(vocab=12, eos_bias=-30.0)  # every utterance runs to its own max length
    src, src_lengths = text_batch([1, 10, 2])
    rows = []
    step = model.decoder.step

    def counting_step(tokens, state):
        rows.append(tokens.shape[0])
        return step(tokens, state)

    model.decoder.step = counting_step
    beam_search(model, src, src_lengths, SearchOptions(beam=4, max_len_bias=0))
    # max lengths 1, 10, 2: three utterances for 2 steps, two for 1, then one until step 11.
    assert rows == [12, 12, 8] + [4] * 8


def test_nbest_and_empty_batch():
    model = mt_model(vocab=12, scale=3.0)
    src, src_lengths = text_batch([4, 6])
    one = beam_search(model, src, src_lengths, SearchOptions(beam=4, nbest=1))
    four = beam_search(model, src, src_lengths, SearchOptions(beam=4, nbest=4))
    assert [len(h) for h in four] == [4, 4]
    assert [h[0] for h in one] == [h[0] for h in four]
    assert beam_search(model, src[:0], src_lengths[:0]) == []
    with pytest.raises(ValueError):
        SearchOptions(beam=2, nbest=3)


# --- joint CTC/attention decoding ------------------------------------------------------------

def ctc_mt_model(vocab: int = 6, seed: int = 0, scale: float = 5.0, eos_bias: float = 0.0):
    """mt_model with a CTC branch on the output vocabulary, as peaky as the decoder."""
    torch.manual_seed(seed)
    model = build_model({"input": "text", "src_vocab_size": 20, "vocab_size": vocab, "d_model": 16,
                         "ctc_weight": 0.3, "encoder": {"layers": 1, "heads": 2, "ff_dim": 32},
                         "decoder": {"layers": 2, "heads": 2, "ff_dim": 32}})
    with torch.no_grad():
        model.decoder.output.weight.mul_(scale)
        model.decoder.output.bias[EOS] += eos_bias
        model.ctc.weight.mul_(scale)
    return model.eval()


def ctc_speech_model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model({"input": "speech", "vocab_size": 10, "d_model": 16, "ctc_weight": 0.3,
                         "encoder": {"type": "conformer", "layers": 1, "heads": 2, "ff_dim": 32, "kernel_size": 7,
                                     "subsampling_channels": 8},
                         "decoder": {"layers": 2, "heads": 2, "ff_dim": 32}})
    with torch.no_grad():
        model.decoder.output.weight.mul_(4.0)
        model.ctc.weight.mul_(6.0)
    return model.eval()


def speech_batch(lengths, seed: int = 3):
    src = torch.randn(len(lengths), max(lengths), 80, generator=torch.Generator().manual_seed(seed))
    for i, n in enumerate(lengths):
        src[i, n:] = 0.0
    return src, torch.tensor(lengths)


def ctc_logprobs(model, src, src_lengths, sequences):
    """log P_ctc of each whole token sequence for utterance 0 of the batch, by torch's CTC loss."""
    with torch.inference_mode():
        memory, memory_lengths = model.encode(src, src_lengths)
        log_probs = model.ctc(memory).float().log_softmax(-1)[0, :int(memory_lengths[0])]
    frames = log_probs.shape[0]
    return [-F.ctc_loss(log_probs[:, None], torch.tensor([s or [0]]), torch.tensor([frames]), torch.tensor([len(s)]),
                        reduction="sum").item() for s in sequences]


@pytest.mark.parametrize("ctc_weight", [0.3, 1.0])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_joint_exhaustive_oracle(ctc_weight, length_penalty):
    """Every sequence up to the max length scored (1 - w) log P_att + w log P_ctc by teacher forcing
    and torch's CTC loss: a beam as wide as the prefixes (full vocabulary) returns their n-best."""
    model = ctc_mt_model()
    src, src_lengths = text_batch([5])  # 5 CTC frames for at most 4 tokens
    max_len, tokens = 4, [1, 3, 4, 5]
    seqs = [s for n in range(max_len + 1) for s in itertools.product(tokens, repeat=n)]
    joint = [(1 - ctc_weight) * a + ctc_weight * c
             for a, c in zip(rescore(model, src, src_lengths, seqs), ctc_logprobs(model, src, src_lengths, seqs))]
    oracle = sorted(((j / (len(s) + 1) ** length_penalty, j, s) for s, j in zip(seqs, joint)), reverse=True)[:10]
    options = SearchOptions(beam=len(seqs), nbest=10, max_len=max_len, length_penalty=length_penalty,
                            ctc_weight=ctc_weight, ctc_pre_beam=0)
    (hyps,) = beam_search(model, src, src_lengths, options)
    same(hyps, [Hypothesis(s, score, j) for score, j, s in oracle], tol=1e-4)
    attention_only = beam_search(model, src, src_lengths, replace(options, ctc_weight=0.0))[0]
    assert [h.tokens for h in hyps] != [h.tokens for h in attention_only]  # CTC changed the ranking


def test_ctc_weight_zero_leaves_the_search_as_it_was():
    """w = 0 never runs the CTC branch and returns exactly (==) what the model without one returns."""
    model = ctc_mt_model(vocab=12, scale=3.0)
    src, src_lengths = text_batch([3, 9, 1, 6, 12, 4])
    options = SearchOptions(beam=4, nbest=3, min_len_ratio=0.3)
    head, model.ctc = model.ctc, None
    without = beam_search(model, src, src_lengths, options)
    model.ctc = FailingHead()
    assert beam_search(model, src, src_lengths, replace(options, ctc_weight=0.0)) == without
    model.ctc = head
    assert beam_search(model, src, src_lengths, replace(options, ctc_weight=0.3)) != without


class FailingHead(torch.nn.Module):
    def forward(self, x):
        raise AssertionError("the CTC branch ran")


@pytest.mark.parametrize("ctc_weight, pre_beam, espnet_rule", [(0.3, 1.5, False), (0.5, 0.0, False),
                                                               (1.0, 1.5, False), (0.3, 1.5, True)])
def test_joint_batched_equals_one_at_a_time(ctc_weight, pre_beam, espnet_rule):
    options = SearchOptions(beam=3, nbest=2, ctc_weight=ctc_weight, ctc_pre_beam=pre_beam, espnet_rule=espnet_rule)
    check_batched(ctc_speech_model(), *speech_batch([40, 23, 61, 35, 17, 50]), options)
    model = ctc_mt_model(vocab=12, scale=3.0)
    hyps = check_batched(model, *text_batch([3, 9, 1, 6, 12, 4]), replace(options, beam=4, nbest=3))
    assert len({len(h[0].tokens) for h in hyps}) > 1  # utterances end at different steps


@pytest.mark.parametrize("ctc_weight", [0.3, 0.7])
def test_joint_scores_equal_rescoring(ctc_weight):
    """Pruned by the pre-beam, batched, beams moving between rows: each returned hypothesis still
    scores its own attention and CTC log-probabilities."""
    model = ctc_speech_model(seed=1)
    src, src_lengths = speech_batch([44, 60, 29], seed=5)
    options = SearchOptions(beam=4, nbest=4, ctc_weight=ctc_weight, length_penalty=0.5)
    for i, hyps in enumerate(beam_search(model, src, src_lengths, options)):
        n = int(src_lengths[i])
        one = (src[i:i + 1, :n], src_lengths[i:i + 1])
        seqs = [h.tokens for h in hyps]
        assert len(set(seqs)) == 4 and [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for h, a, c in zip(hyps, rescore(model, *one, seqs), ctc_logprobs(model, *one, seqs)):
            assert h.logprob == pytest.approx((1 - ctc_weight) * a + ctc_weight * c, abs=1e-4)
            assert h.score == pytest.approx(h.logprob / (len(h.tokens) + 1) ** 0.5, abs=1e-5)


class FixedCTC(torch.nn.Module):
    """A crafted CTC branch: the same posteriors for every utterance, whatever the encoder says."""

    def __init__(self, probs: list[list[float]]):
        super().__init__()
        self.logits = torch.tensor(probs).log()

    def forward(self, memory):
        return self.logits[None, :memory.shape[1]].expand(memory.shape[0], -1, -1)


def test_ctc_weight_one_is_ctc_prefix_search():
    """w = 1 on crafted posteriors where the best labelling (3 5) is neither the best path's (3) nor the
    attention decoder's choice: the search returns the CTC labellings in order of probability."""
    vocab = 6  # 0 blank, 1, 2 <eos>, 3, 4, 5
    #         blank  1     eos   3     4     5
    probs = [[0.30, 0.01, 0.01, 0.48, 0.10, 0.10],
             [0.50, 0.01, 0.01, 0.08, 0.05, 0.35],
             [0.55, 0.01, 0.01, 0.03, 0.05, 0.35]]
    model = ctc_mt_model(vocab=vocab, seed=2)
    model.ctc = FixedCTC(probs)
    src, src_lengths = text_batch([3])
    log_probs = torch.tensor(probs).log()
    labellings = {}
    for path in itertools.product(range(vocab), repeat=3):
        s = tuple(c for j, c in enumerate(path) if c != 0 and (j == 0 or c != path[j - 1]))
        labellings[s] = labellings.get(s, 0.0) + math.exp(sum(log_probs[j, c].item() for j, c in enumerate(path)))
    ranked = sorted((s for s in labellings if EOS not in s), key=labellings.get, reverse=True)  # <eos> only ends
    best_path = tuple(c for c in torch.tensor(probs).argmax(1).tolist() if c != 0)
    assert ranked[0] == (3, 5) and best_path == (3,)
    (attention,) = beam_search(model, src, src_lengths, SearchOptions(beam=4, length_penalty=0.0))
    assert attention[0].tokens != (3, 5)
    (hyps,) = beam_search(model, src, src_lengths, SearchOptions(beam=4, nbest=4, length_penalty=0.0, ctc_weight=1.0))
    assert [h.tokens for h in hyps] == ranked[:4]
    for h in hyps:
        assert math.exp(h.logprob) == pytest.approx(labellings[h.tokens], rel=1e-4)


def test_joint_espnet_rule():
    """ESPnet's rule with CTC: the <eos> forced at the max length adds no score, neither part; an <eos>
    that takes a beam's slot leaves it dead (no hypothesis goes on after an <eos>)."""
    src, src_lengths = text_batch([3, 9, 1, 6, 12, 4])
    options = SearchOptions(beam=4, nbest=4, ctc_weight=0.5, espnet_rule=True, max_len_ratio=0.8, max_len_bias=0,
                            length_penalty=0.0)
    reluctant = ctc_mt_model(vocab=12, scale=3.0, eos_bias=-30.0)  # every hypothesis reaches the max length
    for i, hyps in enumerate(beam_search(reluctant, src, src_lengths, options)):
        n = int(src_lengths[i])
        one = (src[i:i + 1, :n], src_lengths[i:i + 1])
        with torch.inference_mode():
            log_probs = reluctant.ctc(reluctant.encode(*one)[0]).float().log_softmax(-1)[0]
        for h, a in zip(hyps, rescore(reluctant, *one, [h.tokens for h in hyps], eos=False)):
            assert len(h.tokens) == max(1, math.floor(0.8 * n))
            assert h.logprob == pytest.approx(0.5 * a + 0.5 * ctc_prefix.prefix_logprob(log_probs, list(h.tokens)),
                                              abs=1e-4)
    eager = ctc_mt_model(vocab=12, scale=3.0, eos_bias=2.0)  # <eos> often among the K best
    results = beam_search(eager, src, src_lengths, options)
    assert all(EOS not in h.tokens[:-1] for hyps in results for h in hyps)
    assert any(h.tokens[-1:] == (EOS,) for hyps in results for h in hyps)  # chosen at the last step: kept


def test_ctc_state_leaves_with_finished_utterances(monkeypatch):
    model = ctc_mt_model(vocab=12, eos_bias=-30.0)  # run until CTC allows no more tokens (one per frame)
    src, src_lengths = text_batch([1, 6, 3])
    rows = []
    extend = ctc_prefix.extend

    def counting_extend(state, *args):
        new = extend(state, *args)
        rows.append((new.r.shape[2], new.table.shape[0]))
        return new

    monkeypatch.setattr(ctc_prefix, "extend", counting_extend)
    hyps = beam_search(model, src, src_lengths, SearchOptions(beam=2, ctc_weight=0.5, ctc_pre_beam=0))
    assert [len(h[0].tokens) for h in hyps] == [1, 6, 3]
    # finished after the <eos> of steps 1, 3 and 6: three utterances for 2 steps, two for 2 more, then one
    assert rows == [(6, 3)] * 1 + [(4, 2)] * 2 + [(2, 1)] * 3


def test_joint_options_and_models():
    src, src_lengths = text_batch([3])
    with pytest.raises(SearchOptionError, match="--ctc-weight must be between 0 and 1"):
        SearchOptions(ctc_weight=1.5)
    with pytest.raises(SearchOptionError, match="--ctc-pre-beam must be >= 0"):
        SearchOptions(ctc_pre_beam=-1.0)
    with pytest.raises(SearchOptionError, match="needs a model with a CTC branch"):
        beam_search(mt_model(), src, src_lengths, SearchOptions(ctc_weight=0.3))
    model = ctc_mt_model()
    model.ctc = torch.nn.Linear(16, 9)  # ST: CTC over the transcript's vocabulary
    with pytest.raises(SearchOptionError, match="9 outputs, its decoder 6"):
        beam_search(model, src, src_lengths, SearchOptions(ctc_weight=0.3))
