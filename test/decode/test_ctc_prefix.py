"""The CTC prefix scorer against the sum over every alignment (enumerated) and against torch's CTC loss."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from kdst.decode.ctc_prefix import extend, initial_state, prefix_logprob, prefix_scores

EOS = 2
LABELS = (1, 3, 4)  # every id but blank (0) and <sos/eos> (2), which CTC still assigns probability to

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def posteriors(frames: int, vocab: int = 5, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(frames, vocab, generator=g)).log_softmax(-1)


def collapse(path) -> tuple[int, ...]:
    out, previous = [], None
    for c in path:
        if c != previous and c != 0:
            out.append(c)
        previous = c
    return tuple(out)


def labelling_probabilities(log_probs: torch.Tensor) -> dict[tuple[int, ...], float]:
    """P(labelling) for every labelling: the sum over all V^T alignments, enumerated."""
    frames, vocab = log_probs.shape
    lp = log_probs.double().tolist()
    probs: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(vocab), repeat=frames):
        s = collapse(path)
        probs[s] = probs.get(s, 0.0) + math.exp(sum(lp[t][c] for t, c in enumerate(path)))
    return probs


@pytest.mark.parametrize("frames, labels", [(1, LABELS), (2, LABELS), (3, LABELS), (4, LABELS), (5, (1, 3))])
def test_prefix_probability_equals_enumeration(frames, labels):
    log_probs = posteriors(frames, vocab=max(labels) + 1, seed=frames)
    probs = labelling_probabilities(log_probs)
    assert sum(probs.values()) == pytest.approx(1.0)
    for n in range(frames + 2):  # prefixes longer than the frames have probability 0
        for prefix in itertools.product(labels, repeat=n):
            oracle = sum(p for s, p in probs.items() if s[:n] == prefix)
            assert math.exp(prefix_logprob(log_probs, list(prefix))) == pytest.approx(oracle, abs=1e-6)
            # <eos>: the labelling itself, no continuation
            whole = math.exp(prefix_logprob(log_probs, [*prefix, EOS]))
            assert whole == pytest.approx(probs.get(prefix, 0.0), abs=1e-6)


def test_full_probability_equals_ctc_loss():
    frames, vocab = 30, 12
    log_probs = posteriors(frames, vocab=vocab, seed=7, scale=1.0)
    g = torch.Generator().manual_seed(8)
    labels = [c for c in range(1, vocab) if c != EOS]
    for n in [0, 1, 2, 5, 9, 15]:
        seq = [labels[int(i)] for i in torch.randint(len(labels), (n,), generator=g)]
        if n == 9:
            seq[3] = seq[4]  # a repeat needs a blank between its two labels
        expected = -F.ctc_loss(log_probs[:, None].double(), torch.tensor([seq], dtype=torch.long),
                               torch.tensor([frames]), torch.tensor([n]), reduction="sum").item()
        assert prefix_logprob(log_probs, [*seq, EOS]) == pytest.approx(expected, abs=1e-4)


def test_batch_of_beams_equals_one_prefix_at_a_time():
    """Three utterances of different lengths, two beams each, whose rows move (swapped, copied) and
    whose middle utterance leaves: every row scores every token as its own prefix alone would."""
    lengths, vocab = [4, 7, 2], 6
    log_probs = torch.full((3, 7, vocab), float("nan"))  # frames past an utterance's end must not count
    for u, n in enumerate(lengths):
        log_probs[u, :n] = posteriors(n, vocab=vocab, seed=10 + u)
    state = initial_state(log_probs, torch.tensor(lengths), group=2)
    prefixes = [[] for _ in range(6)]
    steps = [  # rows (parents, in the old numbering), tokens, utterances kept
        ([0, 1, 2, 3, 4, 5], [1, 3, 4, 4, 3, 1], None),
        ([1, 0, 3, 3, 4, 5], [3, 3, 4, 1, 3, 3], None),  # utterance 1: both beams continue row 3
        ([0, 1, 5, 4], [4, 5, 1, 3], torch.tensor([0, 2])),
    ]
    for rows, tokens, kept in steps:
        rows, tokens = torch.tensor(rows), torch.tensor(tokens)
        psi = prefix_scores(state, torch.arange(vocab).expand(state.r.shape[2], vocab))[rows, tokens]
        state = extend(state, rows, tokens, psi, kept)
        prefixes = [prefixes[r] + [c] for r, c in zip(rows.tolist(), tokens.tolist())]
        utts = [u for u in (range(3) if kept is None else kept.tolist()) for _ in range(2)]
        scores = prefix_scores(state)  # every token (a matrix product), and as candidates (a logsumexp)
        torch.testing.assert_close(scores, prefix_scores(state, torch.arange(vocab).expand(len(rows), vocab)))
        for row, (prefix, u) in enumerate(zip(prefixes, utts)):
            alone = log_probs[u, :lengths[u]]
            assert state.psi[row].item() == pytest.approx(prefix_logprob(alone, prefix), abs=1e-5)
            for c in range(1, vocab):
                expected = prefix_logprob(alone, [*prefix, c])
                if expected == float("-inf"):
                    assert scores[row, c].item() == float("-inf")
                else:
                    assert scores[row, c].item() == pytest.approx(expected, abs=1e-5), (row, prefix, c)
            assert scores[row, 0].item() == float("-inf")  # blank is never a label
    assert state.r.shape[2] == 4 and state.table.shape[0] == 2 and state.length == 3


def test_peaky_posteriors_keep_their_small_probabilities():
    """A confident model: log-posteriors down to several hundred nats, far below where exp() of a
    float32 underflows; every prefix's log-probability still matches the enumeration's, in log space,
    whether scored among a few candidates or with the whole vocabulary."""
    frames, vocab = 4, 5
    log_probs = posteriors(frames, vocab=vocab, seed=3, scale=150.0)
    assert log_probs.min() < -300
    lp = log_probs.double().tolist()
    paths: dict[tuple[int, ...], list[float]] = {}
    for path in itertools.product(range(vocab), repeat=frames):
        paths.setdefault(collapse(path), []).append(sum(lp[t][c] for t, c in enumerate(path)))

    def log_sum(values):  # -inf for none: (1, 1, 1) needs 5 frames
        top = max(values, default=-math.inf)
        return top + math.log(sum(math.exp(v - top) for v in values)) if values else top

    for n in range(1, frames + 1):
        for prefix in itertools.product(LABELS, repeat=n):
            expected = log_sum([v for s, vs in paths.items() if s[:n] == prefix for v in vs])
            got = prefix_logprob(log_probs, list(prefix))
            assert got == expected if expected == -math.inf else got == pytest.approx(expected, abs=1e-3, rel=1e-5)
            if prefix in paths:
                assert prefix_logprob(log_probs, [*prefix, EOS]) == pytest.approx(log_sum(paths[prefix]), rel=1e-5)
    state = extend(initial_state(log_probs[None], torch.tensor([frames])), torch.tensor([0]), torch.tensor([3]),
                   torch.tensor([prefix_logprob(log_probs, [3])]))
    every = prefix_scores(state)
    assert torch.isfinite(every[0, 1:]).all()
    torch.testing.assert_close(every, prefix_scores(state, torch.arange(vocab)[None]), rtol=1e-5, atol=1e-3)
