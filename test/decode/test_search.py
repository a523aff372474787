"""Beam search against an exhaustive oracle, batched against one utterance at a time, greedy against beam 1."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from kdst.decode import Hypothesis, SearchOptions, beam_search, greedy_search
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


def rescore(model, src, src_lengths, sequences):
    """Teacher-forced log-probability (with <eos>) of each token sequence, for utterance 0 of the batch."""
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
        real = torch.arange(width)[None, :] <= torch.tensor([len(s) for s in sequences])[:, None]
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
