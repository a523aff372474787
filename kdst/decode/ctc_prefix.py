"""CTC prefix scores for joint CTC/attention beam search (Watanabe et al. 2017, Algorithm 2).

For the CTC posteriors ``y`` of one utterance (T frames) and a label prefix ``g``, the
forward variables ``r_f^n(g)`` and ``r_f^b(g)`` are the probabilities that frames 0..f
collapse to ``g`` with frame f a label (n) or a blank (b).  The prefix probability of
``h = g + c``,

    psi(h) = sum, over every label sequence s that starts with h, of P_ctc(s | x),

is ``sum_f phi_{f-1} * y_f^c`` with ``phi_{f-1} = r_{f-1}^b(g) + r_{f-1}^n(g)``, the ``r^n`` term
left out when ``c`` repeats the last label of ``g`` (a blank must separate them); at f = 0 only
the empty prefix contributes (``phi_{-1} = 1``).  It never exceeds ``psi(g)``.  The end of the
sentence gets ``P_ctc(g) = r_{T-1}^n(g) + r_{T-1}^b(g)``, the probability of ``g`` as a whole.
All of it is in log space.

The prefix scores of every candidate are one ``logsumexp`` over frames, no recursion:
``psi`` needs only the prefix's own ``r``.  The recursion over frames runs once per step, for
the K prefixes the search keeps (``extend``), not for the candidates it scores.

Rows are utterance-major, ``group`` (beams) per utterance, like the decoder's state.  Frames
past an utterance's end are certain blanks, which leaves ``r^n + r^b`` of a shorter utterance
unchanged up to the longest one's end, so a batch pads without changing a score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdst.data.tokenizer import BLANK_ID, SOS_EOS_ID

NEG_INF = float("-inf")


@dataclass(frozen=True)
class CTCPrefixState:
    """The prefixes of N = A * group rows."""

    log_probs: torch.Tensor  # (A, T, V) CTC log-posteriors per utterance, padded with certain blanks
    r: torch.Tensor  # (T, 2, N): log r^n, log r^b of each row's prefix
    psi: torch.Tensor  # (N,) log prefix probability of each row's prefix (0 for the empty one)
    last: torch.Tensor  # (N,) last label of each prefix (<sos> for the empty one)
    group: int
    length: int  # labels in every prefix


def initial_state(log_probs: torch.Tensor, lengths: torch.Tensor, group: int = 1) -> CTCPrefixState:
    """The empty prefix, ``group`` rows per utterance of ``log_probs`` (A, T, V) with ``lengths`` (A,) frames."""
    a, frames, _ = log_probs.shape
    past_end = torch.arange(frames, device=log_probs.device)[None, :] >= lengths[:, None]
    log_probs = log_probs.masked_fill(past_end[:, :, None], NEG_INF)
    log_probs[:, :, BLANK_ID].masked_fill_(past_end, 0.0)
    r = torch.full((frames, 2, a), NEG_INF, device=log_probs.device)
    r[:, 1] = log_probs[:, :, BLANK_ID].cumsum(1).t()  # only blanks so far
    n = a * group
    return CTCPrefixState(log_probs, r.repeat_interleave(group, dim=2), log_probs.new_zeros(n),
                          torch.full((n,), SOS_EOS_ID, dtype=torch.long, device=log_probs.device), group, 0)


def _frames_of(log_probs: torch.Tensor, tokens: torch.Tensor, group: int) -> torch.Tensor:
    """(T, N, P): the log-posterior of each row's P ``tokens`` (N, P) at every frame of its utterance."""
    a, frames, _ = log_probs.shape
    n, p = tokens.shape
    x = log_probs.gather(2, tokens.reshape(a, 1, group * p).expand(a, frames, group * p))
    return x.view(a, frames, group, p).permute(1, 0, 2, 3).reshape(frames, n, p)


def prefix_scores(state: CTCPrefixState, tokens: torch.Tensor) -> torch.Tensor:
    """(N, P): log psi of each row's prefix extended by each of its ``tokens`` (N, P); <eos> gets
    the prefix's full probability, blank -inf."""
    frames, t = state.r.shape[0], state.length
    x = _frames_of(state.log_probs, tokens, state.group)
    r_n, r_b = state.r[:, 0], state.r[:, 1]
    whole = torch.logaddexp(r_n, r_b)  # (T, N)
    phi = torch.where(tokens == state.last[:, None], r_b[:, :, None], whole[:, :, None])
    if t == 0:
        terms = torch.cat([x[:1], phi[:-1] + x[1:]])
    else:  # h needs t + 1 frames: its first frame is t at the earliest
        terms = phi[t - 1:-1] + x[t:]
    psi = torch.logsumexp(terms, 0) if terms.shape[0] else torch.full(tokens.shape, NEG_INF, device=x.device)
    psi = torch.where(tokens == SOS_EOS_ID, whole[-1][:, None], psi)
    return psi.masked_fill(tokens == BLANK_ID, NEG_INF)


def extend(state: CTCPrefixState, rows: torch.Tensor, tokens: torch.Tensor, psi: torch.Tensor,
           utterances: torch.Tensor | None = None) -> CTCPrefixState:
    """The state of the prefixes of ``rows`` (N', indices into the state's rows) each extended by its
    token (N',), whose prefix scores are ``psi`` (N').  ``utterances``: the utterances still searched,
    when some leave (``rows`` then holds only theirs, utterance-major, ``group`` each)."""
    log_probs = state.log_probs if utterances is None else state.log_probs.index_select(0, utterances)
    frames, t = state.r.shape[0], state.length
    x = _frames_of(log_probs, tokens[:, None], state.group)[:, :, 0]  # (T, N')
    blank = log_probs[:, :, BLANK_ID].t().repeat_interleave(state.group, dim=1)
    r = state.r.index_select(2, rows)
    phi = torch.where(tokens == state.last.index_select(0, rows), r[:, 1], torch.logaddexp(r[:, 0], r[:, 1]))
    # One logaddexp per frame for both variables: r^n_f = (r^n_{f-1} + phi_{f-1}) y_f^c and
    # r^b_f = (r^n_{f-1} + r^b_{f-1}) y_f^blank; `into` holds phi beside the r^b being written.
    r_n = torch.full_like(x, NEG_INF)
    into = torch.stack([phi, torch.full_like(x, NEG_INF)], 1)  # (T, 2, N')
    emit = torch.stack([x, blank], 1)
    if t == 0:
        r_n[0] = x[0]
    for f in range(max(t, 1), frames):
        step = torch.logaddexp(r_n[f - 1], into[f - 1]).add_(emit[f])
        r_n[f] = step[0]
        into[f, 1] = step[1]
    return CTCPrefixState(log_probs, torch.stack([r_n, into[:, 1]], 1), psi, tokens, state.group, t + 1)


def prefix_logprob(log_probs: torch.Tensor, labels: list[int]) -> float:
    """log psi of ``labels`` for one utterance's (T, V) log-posteriors (full probability if it ends
    with <eos>): the scorer one label at a time, for checks."""
    state = initial_state(log_probs[None], torch.tensor([log_probs.shape[0]], device=log_probs.device))
    for c in labels:
        tokens = torch.tensor([[c]], device=log_probs.device)
        psi = prefix_scores(state, tokens)[:, 0]
        if c == SOS_EOS_ID:
            return float(psi)
        state = extend(state, torch.zeros(1, dtype=torch.long, device=log_probs.device), tokens[0], psi)
    return float(state.psi[0])
