"""Batched beam search and greedy search for the attention encoder-decoder.

All B utterances x K beams live in one tensor of N = B*K rows; the decoder's
cached state is reordered with ``index_select`` after each step.  At each step
the 2K best of the K*V extensions of each utterance are taken (fairseq's rule):
an <eos> extension among the first K of them becomes a finished hypothesis, and
the best K other extensions become the next live beams.  Blank (0) is never
emitted; <sos> and <eos> share one id, so that id only ever ends a hypothesis.

Finished hypotheses are scored ``logprob / len ** length_penalty`` (``len``
counts <eos>) and each utterance keeps its ``beam`` best in fixed-size tensors,
merged with one ``topk`` per step for all utterances at once.

Stopping, per utterance (exact, not a heuristic): a live hypothesis with raw
log-probability ``s <= 0`` can only lose probability, and no completion is
longer than ``max_len_u + 1`` (its token budget plus <eos>), so with
``length_penalty >= 0`` its best possible normalised score is
``s / (max_len_u + 1) ** length_penalty``.  The utterance is done when it holds
``beam`` finished hypotheses and this bound for its best live beam does not
beat the worst of them.  At the step where an utterance reaches its max length
only <eos> is allowed, so every live beam is finished by force (scored with its
<eos> log-probability) and no live beam is left, which ends it by the same rule.
Done utterances are retired at once: their rows leave every tensor and the
decoder state, so they cost nothing afterwards.

With ``length_penalty = 0`` and ``beam = 1`` this is exactly greedy search; with
a positive length penalty a single beam may keep going past an <eos> that a
longer hypothesis could still beat, so it can differ from greedy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kdst.data.tokenizer import BLANK_ID, SOS_EOS_ID
from kdst.models.decoder import DecoderState
from kdst.models.encoders import lengths_to_mask

EOS_ID = SOS_EOS_ID
NEG_INF = float("-inf")


@dataclass(frozen=True)
class SearchOptions:
    beam: int = 5
    nbest: int = 1  # hypotheses returned per utterance (<= beam)
    max_len_ratio: float = 1.0  # max tokens = ceil(ratio * encoder-output length) + bias, capped by max_len
    max_len_bias: int = 5
    min_len_ratio: float = 0.0  # <eos> forbidden before floor(ratio * encoder-output length) tokens
    max_len: int = 512
    length_penalty: float = 1.0  # score = logprob / len ** length_penalty (len counts <eos>); 0 = raw sum

    def __post_init__(self):
        if self.beam < 1 or not 1 <= self.nbest <= self.beam:
            raise ValueError(f"need beam >= 1 and 1 <= nbest <= beam, not beam={self.beam} nbest={self.nbest}")
        if self.length_penalty < 0:
            raise ValueError(f"length_penalty must be >= 0, not {self.length_penalty}")
        if self.max_len < 0 or self.max_len_ratio < 0 or self.min_len_ratio < 0:
            raise ValueError("max_len, max_len_ratio and min_len_ratio must be >= 0")


@dataclass(frozen=True)
class Hypothesis:
    tokens: tuple[int, ...]  # without <sos>/<eos>
    score: float  # the normalised score used for ranking
    logprob: float  # total log-probability, <eos> included


class _EvalMode:
    """Puts the model in eval mode for the search and restores its mode after."""

    def __init__(self, model):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def _encode(model, src, src_lengths, max_len_ratio, max_len_bias, max_len, min_len_ratio=0.0):
    """Encoder output, its mask, and per-utterance max / min output lengths (python ints)."""
    device = next(model.parameters()).device
    memory, memory_lengths = model.encode(src.to(device), src_lengths.to(device))
    mask = lengths_to_mask(memory_lengths, memory.shape[1])
    lengths = memory_lengths.tolist()
    max_lens = [max(0, min(math.ceil(max_len_ratio * n) + max_len_bias, max_len)) for n in lengths]
    min_lens = [min(math.floor(min_len_ratio * n), m) for n, m in zip(lengths, max_lens)]
    return memory, mask, max_lens, min_lens


def _allowed_logp(logp: torch.Tensor, t: int, max_lens: torch.Tensor, min_lens: torch.Tensor | None):
    """Mask (to -inf) blank always, <eos> before the min length, every other token at the max length."""
    vocab = torch.arange(logp.shape[1], device=logp.device)
    is_eos = vocab == EOS_ID
    allowed = ~is_eos & (vocab != BLANK_ID) & (t < max_lens)[:, None]
    allowed |= is_eos if min_lens is None else is_eos & (t >= min_lens)[:, None]
    return logp.masked_fill(~allowed, NEG_INF)


def _reorder(state, rows: torch.Tensor, block_rows: torch.Tensor | None):
    """State for the new beams ``rows``.  ``block_rows`` (any row of each kept utterance, K per utterance)
    is None when no utterance retired: the encoder-side tensors are the same for every beam of an
    utterance, so they only need selecting when utterances leave."""
    if type(state) is not DecoderState:
        return state.select(rows)
    pick = lambda kv, idx: (kv[0].index_select(0, idx), kv[1].index_select(0, idx))  # noqa: E731
    cross, mask = state.cross_kv, state.memory_mask
    if block_rows is not None:
        cross, mask = [pick(kv, block_rows) for kv in cross], mask.index_select(0, block_rows)
    return DecoderState([pick(kv, rows) for kv in state.self_kv], cross, mask, state.length)


def beam_search(model, src: torch.Tensor, src_lengths: torch.Tensor,
                options: SearchOptions = SearchOptions()) -> list[list[Hypothesis]]:
    """n-best hypotheses per utterance, best first (fewer than nbest only if no more can exist)."""
    with _EvalMode(model), torch.inference_mode():
        return _beam_search(model, src, src_lengths, options)


def _beam_search(model, src, src_lengths, opt: SearchOptions) -> list[list[Hypothesis]]:
    if src.shape[0] == 0:
        return []
    memory, mask, max_lens_list, min_lens_list = _encode(model, src, src_lengths, opt.max_len_ratio,
                                                         opt.max_len_bias, opt.max_len, opt.min_len_ratio)
    device, k, lp = memory.device, opt.beam, opt.length_penalty
    b = memory.shape[0]
    results: list[list[Hypothesis]] = [[] for _ in range(b)]
    cap = max(max_lens_list) + 1  # token columns; the last one is only written by dead beams
    beams = torch.arange(k, device=device)
    state = model.decoder.init_state(memory, mask).select(torch.arange(b, device=device).repeat_interleave(k))

    # Per active utterance (A of them; rows are utterance-major, N = A*K).
    utt_ids = torch.arange(b, device=device)
    max_lens = torch.tensor(max_lens_list, device=device)
    min_lens = torch.tensor(min_lens_list, device=device)
    bound_div = (max_lens.double() + 1).pow(lp).float()  # (max_len + 1) ** length_penalty
    scores = torch.full((b, k), NEG_INF, device=device)
    scores[:, 0] = 0.0  # only beam 0 is live at the first step
    seqs = torch.zeros(b * k, cap, dtype=torch.long, device=device)
    last = torch.full((b * k,), EOS_ID, dtype=torch.long, device=device)  # <sos>
    fin_norm = torch.full((b, k), NEG_INF, device=device)
    fin_raw = torch.full((b, k), NEG_INF, device=device)
    fin_len = torch.zeros(b, k, dtype=torch.long, device=device)
    fin_tok = torch.zeros(b, k, cap, dtype=torch.long, device=device)

    for t in range(cap):
        a = scores.shape[0]
        logits, state = model.decoder.step(last, state)
        logp = torch.log_softmax(logits.float(), dim=-1)
        vocab = logp.shape[1]
        logp = _allowed_logp(logp, t, max_lens.repeat_interleave(k), min_lens.repeat_interleave(k))
        cand = (scores.reshape(-1, 1) + logp).view(a, k * vocab)
        top, idx = cand.topk(min(2 * k, k * vocab), dim=1)  # (A, 2K), best first
        src_beam, tok = idx // vocab, idx % vocab
        is_eos = tok == EOS_ID

        # <eos> among the first K candidates: finished; merge with the kept ones (one topk for all).
        done_now = is_eos[:, :k] & torch.isfinite(top[:, :k])
        new_norm = torch.where(done_now, top[:, :k] / float((t + 1) ** lp), NEG_INF)
        new_tok = seqs.view(a, k, cap).gather(1, src_beam[:, :k, None].expand(a, k, cap))
        fin_norm, pick = torch.cat([fin_norm, new_norm], 1).topk(k, dim=1)
        fin_raw = torch.cat([fin_raw, top[:, :k]], 1).gather(1, pick)
        fin_len = torch.cat([fin_len, torch.full_like(fin_len, t)], 1).gather(1, pick)
        fin_tok = torch.cat([fin_tok, new_tok], 1).gather(1, pick[:, :, None].expand(a, k, cap))

        # The best K candidates that are not <eos> live on (stable sort keeps their rank order).
        live = torch.argsort(is_eos.to(torch.uint8), dim=1, stable=True)[:, :k]
        scores, tok, src_beam = top.gather(1, live), tok.gather(1, live), src_beam.gather(1, live)
        rows = (src_beam + torch.arange(a, device=device)[:, None] * k).view(-1)

        # Done: `beam` finished and the best live beam's bound cannot beat the worst of them.
        done = scores[:, 0] / bound_div <= fin_norm[:, -1]
        if bool(done.any()):
            _collect(results, utt_ids[done], fin_norm[done], fin_raw[done], fin_len[done], fin_tok[done],
                     opt.nbest)
            keep = ~done
            if not bool(keep.any()):
                break
            rows = rows.view(a, k)[keep].view(-1)
            block_rows = (torch.arange(a, device=device)[keep][:, None] * k + beams[None, :]).view(-1)
            utt_ids, max_lens, min_lens, bound_div = utt_ids[keep], max_lens[keep], min_lens[keep], bound_div[keep]
            scores, tok = scores[keep], tok[keep]
            fin_norm, fin_raw, fin_len, fin_tok = fin_norm[keep], fin_raw[keep], fin_len[keep], fin_tok[keep]
        else:
            block_rows = None
        state = _reorder(state, rows, block_rows)
        seqs = seqs.index_select(0, rows)
        seqs[:, t] = tok.reshape(-1)
        last = tok.reshape(-1)
    return results


def _collect(results, utt_ids, norm, raw, lengths, tokens, nbest):
    """Write the n-best of finished utterances (rows of the per-utterance tensors) into ``results``."""
    for u, ns, rs, ls, ts in zip(utt_ids.tolist(), norm[:, :nbest].tolist(), raw[:, :nbest].tolist(),
                                 lengths[:, :nbest].tolist(), tokens[:, :nbest].tolist()):
        results[u] = [Hypothesis(tuple(tk[:n]), s, r) for s, r, n, tk in zip(ns, rs, ls, ts) if s != NEG_INF]


def greedy_search(model, src: torch.Tensor, src_lengths: torch.Tensor, max_len_ratio: float = 1.0,
                  max_len_bias: int = 5, max_len: int = 512) -> list[Hypothesis]:
    """The most likely token at each step until <eos> (forced at the max length); score = logprob."""
    if src.shape[0] == 0:
        return []
    with _EvalMode(model), torch.inference_mode():
        memory, mask, max_lens_list, _ = _encode(model, src, src_lengths, max_len_ratio, max_len_bias, max_len)
        device, b = memory.device, memory.shape[0]
        results: list[Hypothesis | None] = [None] * b
        cap = max(max_lens_list) + 1
        state = model.decoder.init_state(memory, mask)
        utt_ids = torch.arange(b, device=device)
        max_lens = torch.tensor(max_lens_list, device=device)
        last = torch.full((b,), EOS_ID, dtype=torch.long, device=device)
        seqs = torch.zeros(b, cap, dtype=torch.long, device=device)
        total = torch.zeros(b, device=device)
        for t in range(cap):
            logits, state = model.decoder.step(last, state)
            logp = _allowed_logp(torch.log_softmax(logits.float(), dim=-1), t, max_lens, None)
            best, last = logp.max(dim=-1)
            total = total + best
            seqs[:, t] = last
            ended = last == EOS_ID
            if bool(ended.any()):
                for u, s, tk in zip(utt_ids[ended].tolist(), total[ended].tolist(), seqs[ended].tolist()):
                    results[u] = Hypothesis(tuple(tk[:t]), s, s)
                keep = ~ended
                if not bool(keep.any()):
                    break
                rows = keep.nonzero().squeeze(1)
                state = state.select(rows)
                utt_ids, max_lens, last, seqs, total = (x[rows] for x in (utt_ids, max_lens, last, seqs, total))
        return results  # type: ignore[return-value]
