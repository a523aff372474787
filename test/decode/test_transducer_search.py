"""Transducer search: batched against one utterance at a time, beam 1 against greedy, an exhaustive oracle."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from kdst.decode import Hypothesis
from kdst.decode.transducer_search import greedy_search, modified_beam_search
from kdst.models import build_model

LENGTHS = [43, 23, 61, 35, 19, 50]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def model_for(encoder: str, predictor: str, vocab: int = 8, blank_bias: float = 2.0, seed: int = 0):
    torch.manual_seed(seed)
    encoder_cfg = {"type": encoder, "d_model": 16, "layers": 1, "heads": 2, "ff_dim": 32, "kernel_size": 3,
                   "subsampling_channels": 4}
    if encoder == "streaming_conformer":
        encoder_cfg.update(chunk_size=2, left_chunks=1)
    predictor_cfg = {"type": predictor, "dim": 16, **({"layers": 2} if predictor == "lstm" else {})}
    model = build_model({"type": "transducer", "input_dim": 20, "vocab_size": vocab, "encoder": encoder_cfg,
                         "predictor": predictor_cfg, "joiner": {"dim": 16}})
    with torch.no_grad():
        # At its initialisation one label wins nearly everywhere: larger joiner weights let the frame and the
        # label history decide, and a blank bias mixes blanks with runs of labels on a frame.
        torch.manual_seed(seed + 5)
        model.joiner.encoder_proj.weight.normal_(0.0, 0.5)
        model.joiner.predictor_proj.weight.normal_(0.0, 10.0 if predictor == "lstm" else 1.0)  # small LSTM outputs
        model.joiner.output.weight.normal_(0.0, 0.5)
        model.joiner.output.bias.zero_()[0] = blank_bias
    return model.eval()


def features(lengths, seed: int = 3):
    src = torch.randn(len(lengths), max(lengths), 20, generator=torch.Generator().manual_seed(seed))
    for i, n in enumerate(lengths):
        src[i, n:] = 0.0
    return src, torch.tensor(lengths)


def same(a: list[Hypothesis], b: list[Hypothesis], tol: float = 1e-5):
    assert [h.tokens for h in a] == [h.tokens for h in b]
    for x, y in zip(a, b):
        assert x.score == pytest.approx(y.score, abs=tol) and x.logprob == pytest.approx(y.logprob, abs=tol)


def lattice(model, src, src_lengths, tokens) -> torch.Tensor:
    """log p(. | t, u) (T', U+1, V) for one utterance and label sequence, through the training path."""
    batch = {"src": src, "src_lengths": src_lengths, "tgt": torch.tensor([tokens], dtype=torch.long).view(1, -1),
             "tgt_lengths": torch.tensor([len(tokens)])}
    with torch.no_grad():
        logits, logit_lengths, _, _ = model.joint_logits(batch)
    return logits[0, :int(logit_lengths[0])].float().log_softmax(-1)


def alone(search, src, src_lengths, i, **kw):
    n = int(src_lengths[i])
    return search(src[i:i + 1, :n], src_lengths[i:i + 1], **kw)[0]


MODELS = {"streaming-stateless": dict(encoder="streaming_conformer", predictor="stateless"),
          "conformer-lstm": dict(encoder="conformer", predictor="lstm", blank_bias=1.0, seed=1)}


@pytest.mark.parametrize("kind", MODELS)
def test_greedy_batched_equals_alone_and_rescores(kind):
    model = model_for(**MODELS[kind])
    src, src_lengths = features(LENGTHS)
    hyps = greedy_search(model, src, src_lengths, max_symbols_per_frame=3)
    emitted = [len(h.tokens) for h in hyps]
    frames = sum(((n - 1) // 2 - 1) // 2 for n in LENGTHS)
    assert 0 < sum(emitted) < 3 * frames  # not every frame is capped at 3 labels
    assert any(n > len(h.tokens) for n, h in zip(emitted, greedy_search(model, src, src_lengths, 1)))  # some are
    for i, h in enumerate(hyps):
        same([h], [alone(lambda *a: greedy_search(model, *a, max_symbols_per_frame=3), src, src_lengths, i)])
        # Walk the greedy rule over the lattice of the labels found: same decisions, same score.
        logp = lattice(model, src[i:i + 1], src_lengths[i:i + 1], h.tokens)
        u, score = 0, 0.0
        for t in range(logp.shape[0]):
            for _ in range(3):
                v = int(logp[t, u].argmax())
                score += float(logp[t, u, v])
                if v == 0:
                    break
                assert v == h.tokens[u]
                u += 1
        assert u == len(h.tokens) and h.score == pytest.approx(score, abs=1e-4)


@pytest.mark.parametrize("kind", MODELS)
def test_beam_search_batched_equals_alone(kind):
    model = model_for(**MODELS[kind])
    src, src_lengths = features(LENGTHS)
    results = modified_beam_search(model, src, src_lengths, beam=4, nbest=4)
    for i, hyps in enumerate(results):
        assert len(hyps) == 4 and len({h.tokens for h in hyps}) == 4
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        assert all(h.score == h.logprob for h in hyps)
        same(hyps, alone(lambda *a: modified_beam_search(model, *a, beam=4, nbest=4), src, src_lengths, i))
    assert len({len(h[0].tokens) for h in results}) > 1


@pytest.mark.parametrize("kind", MODELS)
def test_beam_one_is_greedy_with_one_symbol_per_frame(kind):
    model = model_for(**MODELS[kind])
    src, src_lengths = features(LENGTHS)
    greedy = greedy_search(model, src, src_lengths, max_symbols_per_frame=1)
    beam = modified_beam_search(model, src, src_lengths, beam=1)
    same(greedy, [h[0] for h in beam])


@pytest.mark.parametrize("predictor", ["stateless", "lstm"])
def test_exhaustive_oracle(predictor):
    """Labels {1, 2}, 4 frames: 31 label sequences fit, so a beam of 31 prunes nothing and every score must
    be the exact log of the sum over the sequence's alignments (one symbol per frame)."""
    model = model_for("streaming_conformer", predictor, vocab=3, blank_bias=0.5, seed=1)
    src, src_lengths = features([19])  # 4 frames after subsampling
    frames = lattice(model, src, src_lengths, ()).shape[0]
    assert frames == 4
    oracle = []
    for n in range(frames + 1):
        for seq in itertools.product((1, 2), repeat=n):
            logp = lattice(model, src, src_lengths, seq)
            paths = []
            for emit_at in itertools.combinations(range(frames), n):
                u, total = 0, 0.0
                for t in range(frames):
                    v = seq[u] if t in emit_at else 0
                    total += float(logp[t, u, v])
                    u += v != 0
                paths.append(total)
            oracle.append((math.log(sum(math.exp(p) for p in paths)), seq))
    oracle.sort(reverse=True)
    assert len(oracle) == 31
    (hyps,) = modified_beam_search(model, src, src_lengths, beam=31, nbest=31)
    same(hyps, [Hypothesis(seq, s, s) for s, seq in oracle])
    assert len({len(h.tokens) for h in hyps[:5]}) > 1  # not trivial: the best have different lengths
    # A narrow beam prunes alignments: its scores are partial sums, never above the exact ones.
    exact = {seq: s for s, seq in oracle}
    (narrow,) = modified_beam_search(model, src, src_lengths, beam=3, nbest=3)
    assert len(narrow) == 3 and all(h.score <= exact[h.tokens] + 1e-5 for h in narrow)
