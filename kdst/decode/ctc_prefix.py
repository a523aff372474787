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

The prefix scores of every candidate are one sum over frames, no recursion: ``psi`` needs
only the prefix's own ``r`` (a logsumexp over frames for a few candidates per row, one
batched matrix product of probabilities for the whole vocabulary).  The recursion over
frames runs once per step, for the K prefixes the search keeps (``extend``), not for the
candidates it scores.

Rows are utterance-major, ``group`` (beams) per utterance, like the decoder's state.  Frames
past an utterance's end are certain blanks, which leaves ``r^n + r^b`` of a shorter utterance
unchanged up to the longest one's end, so a batch pads without changing a score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdst.data.tokenizer import BLANK_ID, SOS_EOS_ID

NEG_INF = float("-inf")
# exp() is ten times slower on inputs far below its range.  Scaled terms are clamped there: a
# term this far below the largest (whose exp is 1) cannot change the sum in the float type; a
# row without a finite term is -inf by its scale (-inf + anything finite).
FLOOR_32, FLOOR_64 = 87.0, 700.0


@dataclass(frozen=True)
class CTCPrefixState:
    """The prefixes of N = A * group rows."""

    table: torch.Tensor  # (A, V, T) CTC log-posteriors per utterance and token, padded with certain blanks
    lengths: torch.Tensor  # (A,) frames of each utterance
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
    # Token-major: the frames of one token are one contiguous row (gathering them is a row copy).
    return CTCPrefixState(log_probs.transpose(1, 2).contiguous(), lengths, r.repeat_interleave(group, dim=2),
                          log_probs.new_zeros(n), torch.full((n,), SOS_EOS_ID, dtype=torch.long,
                                                             device=log_probs.device), group, 0)


def _frames_of(table: torch.Tensor, tokens: torch.Tensor, group: int) -> torch.Tensor:
    """(N, P, T): the log-posteriors of each row's P ``tokens`` (N, P) at every frame of its utterance."""
    a, vocab, frames = table.shape
    utterance = torch.arange(a, device=tokens.device).repeat_interleave(group)
    rows = (utterance[:, None] * vocab + tokens).view(-1)
    return table.view(a * vocab, frames).index_select(0, rows).view(*tokens.shape, frames)


def prefix_scores(state: CTCPrefixState, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """(N, P): log psi of each row's prefix extended by each of its ``tokens`` (N, P), or by every
    token of the vocabulary (N, V) without them; <eos> gets the prefix's full probability, blank -inf."""
    t, (a, vocab, _), n = state.length, state.table.shape, state.r.shape[2]
    r_n, r_b = state.r[:, 0].t(), state.r[:, 1].t()  # (N, T)
    whole = torch.logaddexp(r_n, r_b)
    # phi_{f-1} for the frames f >= t where h (t + 1 labels) can end: 1 before frame 0, for the empty prefix only
    lead = whole.new_full((n, 1), 0.0 if t == 0 else NEG_INF)
    phi = torch.cat([lead, whole[:, :-1]], 1)[:, t:]
    if phi.shape[1] == 0:  # h has more labels than the utterance has frames
        psi = phi.new_full((n, vocab) if tokens is None else tokens.shape, NEG_INF)
    elif tokens is None:
        # psi = sum_f phi_{f-1} y_f^c for every token at once: one batched matrix product of
        # probabilities, in float64 with phi scaled by its maximum.  Past an utterance's end no label
        # has a frame (y = 0): phi is cut there, so that the clamped y cannot count.
        ends = state.lengths.repeat_interleave(state.group)[:, None]
        phi = phi.masked_fill(torch.arange(t, t + phi.shape[1], device=phi.device)[None, :] >= ends, NEG_INF)
        top = phi.max(1, keepdim=True).values
        weights = (phi - torch.where(torch.isfinite(top), top, 0.0)).double().clamp_(min=-FLOOR_64).exp_()
        y = state.table[:, :, t:].double().clamp_(min=-FLOOR_64).exp_()  # (A, V, T - t)
        psi = torch.bmm(weights.view(a, n // a, -1), y.transpose(1, 2)).view(n, vocab).log_().add_(top).float()
    else:  # a logsumexp over frames, in place (torch.logsumexp takes twice as long)
        terms = phi[:, None, :] + _frames_of(state.table, tokens, state.group)[..., t:]  # (N, P, T - t)
        peak = terms.amax(-1, keepdim=True)
        psi = terms.sub_(torch.where(torch.isfinite(peak), peak, 0.0)).clamp_(min=-FLOOR_32).exp_()
        psi = psi.sum(-1).log_().add_(peak[..., 0])
    if tokens is None:
        tokens = torch.arange(vocab, device=psi.device).expand(n, vocab)
    if t > 0:  # the token that repeats the last label needs a blank between: r^b only
        again = _frames_of(state.table, state.last[:, None], state.group)[:, 0, t:]
        repeat = torch.logsumexp(r_b[:, t - 1:-1] + again, -1)  # -inf without frames left
        psi = torch.where(tokens == state.last[:, None], repeat[:, None], psi)
    psi = torch.where(tokens == SOS_EOS_ID, whole[:, -1:], psi)
    return psi.masked_fill(tokens == BLANK_ID, NEG_INF)


def extend(state: CTCPrefixState, rows: torch.Tensor, tokens: torch.Tensor, psi: torch.Tensor,
           utterances: torch.Tensor | None = None) -> CTCPrefixState:
    """The state of the prefixes of ``rows`` (N', indices into the state's rows) each extended by its
    token (N',), whose prefix scores are ``psi`` (N').  ``utterances``: the utterances still searched,
    when some leave (``rows`` then holds only theirs, utterance-major, ``group`` each)."""
    table, lengths = state.table, state.lengths
    if utterances is not None:
        table, lengths = table.index_select(0, utterances), lengths.index_select(0, utterances)
    frames, t = state.r.shape[0], state.length
    emit = _frames_of(table, torch.stack([tokens, torch.full_like(tokens, BLANK_ID)], 1), state.group)
    emit = emit.permute(2, 1, 0).contiguous()  # (T, 2, N'): the label's and blank's log-posteriors
    r = state.r.index_select(2, rows)
    phi = torch.where(tokens == state.last.index_select(0, rows), r[:, 1], torch.logaddexp(r[:, 0], r[:, 1]))
    # One logaddexp per frame for both variables: r^n_f = (r^n_{f-1} + phi_{f-1}) y_f^c and
    # r^b_f = (r^n_{f-1} + r^b_{f-1}) y_f^blank; `into` holds phi beside the r^b being written.
    r_n = torch.full_like(phi, NEG_INF)
    into = torch.stack([phi, torch.full_like(phi, NEG_INF)], 1)  # (T, 2, N')
    if t == 0:
        r_n[0] = emit[0, 0]
    for f in range(max(t, 1), frames):
        step = torch.logaddexp(r_n[f - 1], into[f - 1]).add_(emit[f])
        r_n[f] = step[0]
        into[f, 1] = step[1]
    return CTCPrefixState(table, lengths, torch.stack([r_n, into[:, 1]], 1), psi, tokens, state.group, t + 1)


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
