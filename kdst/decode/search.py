"""Batched beam search and greedy search for the attention encoder-decoder.

All B utterances x K beams live in one tensor of N = B*K rows, stepped together
through the decoder's cached state.  At each step the 2K best of the K*V
extensions of each utterance are taken (fairseq's rule): an <eos> extension
among the first K of them becomes a finished hypothesis, and the best K other
extensions become the next live beams.  Blank (0) is never emitted; <sos> and
<eos> share one id, so that id only ever ends a hypothesis.  Log-probabilities
are float32 whatever the model's dtype.

The cached keys/values are reordered in place, and only the rows that change:
the best child of a beam takes over its parent's row (see ``_slots``), which
leaves most rows where they are.  The order of beams within an utterance
carries no meaning.

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

``espnet_rule``: ESPnet's ``BeamSearch`` instead (what an ESPnet teacher's own
inference does, for side-by-side checks): the K best of the K*V extensions are
kept, and an <eos> among them finishes its hypothesis *and takes its beam slot*
until the next step (fewer live beams); <eos> before the min length drops the
hypothesis instead of being forbidden; the max length is
``max(1, floor(ratio * n) + bias)``; and a hypothesis still live at the max length
ends with an <eos> that adds no score (an <eos> chosen at the last step stays in
the hypothesis as a token before it, as in ESPnet's output).  Ranking and the exact stopping rule are
unchanged: ``length_penalty`` 0 is ESPnet's raw score (``penalty: 0``), 1 its
``normalize_length``, and ESPnet keeps searching to the max length only to find
hypotheses that cannot enter the n-best.

``hf_rule``: Hugging Face ``generate(num_beams=K, num_return_sequences=N)`` instead, for an
``hf:`` model, which gives its rules (kdst.models.hf_bridge.GenerateRule).  The candidates
and the finishing of <eos> among the first K are the rule above; the log-probabilities go
through the model's logits processors instead of kdst's masks (blank is not banned unless
the generation config bans it); the max length counts the last token (``max_len_ratio 0,
max_len_bias M`` is generate's ``max_new_tokens=M``), and at it every one of the first K
candidates ends, with its token kept when it is not <eos>; an utterance stops by generate's
``early_stopping`` rule (its default, False: when the best live beam's score at the current
length does not beat the worst of the K finished), not the exact bound.

``ctc_weight`` w > 0: joint CTC/attention decoding (Watanabe et al. 2017; docs/DECODING.md) for
a model whose CTC branch predicts the output vocabulary.  A hypothesis scores
``(1 - w) * log P_att + w * log psi``, with psi its CTC prefix probability
(kdst.decode.ctc_prefix); an <eos> extension scores the CTC probability of the whole
hypothesis, so a finished one scores ``(1 - w) * log P_att(y) + w * log P_ctc(y)``: its
``logprob``, which ``score`` normalises by length as above.  CTC scores, per live beam, the
``max(2, int(ctc_pre_beam * beam))`` tokens the attention decoder ranks best (ESPnet's
pre-beam) and <eos> (not ESPnet's: without it a beam whose decoder ranks <eos> low could
never end, while CTC, which allows no more labels than frames, kills it), or every token with
``ctc_pre_beam = 0`` or ``w = 1`` (the decoder then only says which tokens are allowed, as
ESPnet's ``ctc_weight: 1.0`` does); the others are dropped.  The
rest of the search is unchanged: the 2K rule, the slots (the CTC state moves with its beam),
finished utterances leaving every tensor.  The stopping rule stays exact for the joint score:
an extension never raises psi (nor does <eos>: P_ctc(y) <= psi(y)), so every step adds a
non-positive joint score, like a log-probability; psi is clamped at its parent's against
rounding.  What it bounds is the joint score of every completion of a live beam that the
(pre-beam pruned) search could still produce, so stopping changes nothing that running to
the max length would give.  ``w = 0`` is the attention-only search above, the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kdst.data.tokenizer import BLANK_ID, SOS_EOS_ID
import kdst.decode.ctc_prefix as ctc_prefix  # the module, not the package: kdst.decode imports this file
from kdst.errors import KdstError
from kdst.models.encoders import lengths_to_mask

EOS_ID = SOS_EOS_ID
NEG_INF = float("-inf")


class SearchOptionError(KdstError, ValueError):
    """An option out of range: a user's mistake (one line from ``kdst decode``), and a ValueError to callers."""


@dataclass(frozen=True)
class SearchOptions:
    """The search options; each field is the ``kdst decode`` option of the same name (``--max-len-ratio``)."""

    beam: int = 5
    nbest: int = 1  # hypotheses returned per utterance (<= beam)
    max_len_ratio: float = 1.0  # max tokens = ceil(ratio * encoder-output length) + bias, capped by max_len
    max_len_bias: int = 5
    min_len_ratio: float = 0.0  # <eos> forbidden before floor(ratio * encoder-output length) tokens
    max_len: int = 512
    length_penalty: float = 1.0  # score = logprob / len ** length_penalty (len counts <eos>); 0 = raw sum
    espnet_rule: bool = False  # ESPnet BeamSearch's pruning and length rules (module docstring)
    hf_rule: bool = False  # Hugging Face generate()'s rules, for hf: models (module docstring)
    ctc_weight: float = 0.0  # joint CTC/attention: (1 - w) * attention + w * CTC prefix score (docs/DECODING.md)
    ctc_pre_beam: float = 1.5  # CTC scores the max(2, int(this * beam)) best attention tokens of a beam; 0: all

    def __post_init__(self):
        if self.beam < 1:
            raise SearchOptionError(f"--beam must be >= 1, not {self.beam}")
        if not 1 <= self.nbest <= self.beam:
            raise SearchOptionError(f"--nbest must be between 1 and --beam ({self.beam}), not {self.nbest}")
        if self.hf_rule and (self.espnet_rule or self.min_len_ratio):
            raise SearchOptionError("--hf-rule follows generate(): not with --espnet-rule or --min-len-ratio "
                                    "(the model's generation config sets min_length)")
        # The stopping rule's bound holds for a non-negative penalty only (module docstring).
        for name in ("length_penalty", "max_len", "max_len_ratio", "min_len_ratio", "ctc_pre_beam"):
            if not getattr(self, name) >= 0:  # not >=: NaN fails too
                raise SearchOptionError(f"--{name.replace('_', '-')} must be >= 0, not {getattr(self, name)}")
        if not 0 <= self.ctc_weight <= 1:
            raise SearchOptionError(f"--ctc-weight must be between 0 and 1, not {self.ctc_weight}")


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


def _encode(model, src, src_lengths, max_len_ratio, max_len_bias, max_len, min_len_ratio=0.0, espnet_rule=False):
    """Encoder output, its mask, and per-utterance max / min output lengths (python ints)."""
    device = next(model.parameters()).device
    memory, memory_lengths = model.encode(src.to(device), src_lengths.to(device))
    mask = lengths_to_mask(memory_lengths, memory.shape[1])
    lengths = memory_lengths.tolist()
    if espnet_rule:  # ESPnet: maxlen = max(1, int(maxlenratio * T))
        max_lens = [max(1, min(math.floor(max_len_ratio * n) + max_len_bias, max_len)) for n in lengths]
    else:
        max_lens = [max(0, min(math.ceil(max_len_ratio * n) + max_len_bias, max_len)) for n in lengths]
    min_lens = [min(math.floor(min_len_ratio * n), m) for n, m in zip(lengths, max_lens)]
    return memory, mask, max_lens, min_lens


def _mask_lengths(logp: torch.Tensor, t: int, min_rows: torch.Tensor, max_rows: torch.Tensor,
                  min_max: int, max_min: int, espnet_rule: bool = False) -> None:
    """In place: blank never; <eos> not before the min length; nothing but <eos> at the max length.
    ``min_max`` / ``max_min`` (smallest max / largest min length of the rows) skip work when no row needs it.
    ``espnet_rule``: <eos> is not masked before the min length (the search drops such endings), and the
    <eos> forced at the max length costs nothing."""
    logp[:, BLANK_ID] = NEG_INF
    if t < max_min and not espnet_rule:
        logp[:, EOS_ID].masked_fill_(t < min_rows, NEG_INF)
    if t >= min_max:
        at_max = t >= max_rows
        eos = torch.where(at_max, 0.0, logp[:, EOS_ID]) if espnet_rule else logp[:, EOS_ID].clone()
        logp.masked_fill_(at_max[:, None], NEG_INF)
        logp[:, EOS_ID] = eos


def _slots(parent: torch.Tensor, earlier: torch.Tensor) -> torch.Tensor:
    """Where each new beam (A, K, in rank order) goes among its utterance's K rows: the best child of a
    beam takes its parent's row, whose cached keys/values then need no copying; the other children
    fill the rows left free, in order.  A permutation of 0..K-1 per utterance."""
    k = parent.shape[1]
    same = parent[:, :, None] == parent[:, None, :]
    first = ~(same & earlier).any(2)  # no better sibling
    claimed = ((parent[:, :, None] == torch.arange(k, device=parent.device)) & first[:, :, None]).any(1)
    free = torch.argsort(claimed.to(torch.uint8), dim=1, stable=True)  # free rows first, in order
    rank = (torch.cumsum(~first, dim=1) - 1).clamp(min=0)
    return torch.where(first, parent, free.gather(1, rank))


def beam_search(model, src: torch.Tensor, src_lengths: torch.Tensor,
                options: SearchOptions = SearchOptions()) -> list[list[Hypothesis]]:
    """n-best hypotheses per utterance, best first (fewer than nbest only if no more can exist)."""
    if src.shape[0] == 0:
        return []
    with _EvalMode(model), torch.inference_mode():
        return _beam_search(model, src, src_lengths, options)


def _beam_search(model, src, src_lengths, opt: SearchOptions) -> list[list[Hypothesis]]:
    memory, mask, max_lens, min_lens = _encode(model, src, src_lengths, opt.max_len_ratio, opt.max_len_bias,
                                               opt.max_len, opt.min_len_ratio, opt.espnet_rule)
    device, k, lp, b = memory.device, opt.beam, opt.length_penalty, memory.shape[0]
    rule = _generate_rule(model) if opt.hf_rule else None
    if rule is not None:  # generate() takes at least one step; its max length counts the last token
        max_lens = [max(1, m) for m in max_lens]
    ctc = _ctc_state(model, memory, mask, k) if opt.ctc_weight > 0 else None
    results: list[list[Hypothesis]] = [[] for _ in range(b)]
    cap = max(max_lens) + 1  # token columns; the last one is only written by dead beams
    earlier = torch.ones(k, k, dtype=torch.bool, device=device).tril(-1)  # [j, i]: i ranks before j
    state = model.decoder.init_state(memory, mask, group=k, capacity=cap)

    # Per active utterance: A of them, rows utterance-major (N = A*K).  Python lists mirror the lengths.
    utt = dict(ids=torch.arange(b, device=device), max_rows=torch.tensor(max_lens, device=device),
               min_rows=torch.tensor(min_lens, device=device),
               bound_div=(torch.tensor(max_lens, device=device, dtype=torch.float64) + 1).pow(lp).float(),
               scores=torch.full((b, k), NEG_INF, device=device),  # raw log-prob of the live beams
               fin_norm=torch.full((b, k), NEG_INF, device=device),  # finished: best first
               fin_raw=torch.full((b, k), NEG_INF, device=device),
               fin_len=torch.zeros(b, k, dtype=torch.long, device=device),
               fin_tok=torch.zeros(b, k, cap, dtype=torch.long, device=device))
    utt["scores"][:, 0] = 0.0  # only beam 0 is live at the first step
    if ctc is not None:  # the two parts of the joint score, per live beam
        utt["att"], utt["psi"] = utt["scores"].clone(), ctc.psi.view(b, k)
    max_rows, min_rows = utt["max_rows"].repeat_interleave(k), utt["min_rows"].repeat_interleave(k)
    seqs = torch.zeros(b * k, cap, dtype=torch.long, device=device)
    last = torch.full((b * k,), EOS_ID, dtype=torch.long, device=device)  # <sos>

    for t in range(cap):
        a = len(max_lens)
        logits, state = model.decoder.step(last, state)
        logp = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
        vocab = logp.shape[1]
        if rule is None:
            _mask_lengths(logp, t, min_rows, max_rows, min(max_lens), max(min_lens), opt.espnet_rule)
        else:  # generate()'s logits processors instead
            rule.process(logp, t, t == max_rows - 1)
        if ctc is None:
            cand = logp.add_(utt["scores"].view(-1, 1)).view(a, k * vocab)
            top, idx = cand.topk(min(2 * k, k * vocab), dim=1)  # (A, 2K), best first
            parent, tok = idx.div(vocab, rounding_mode="floor"), idx.remainder(vocab)
        else:
            top, parent, tok, att, psi = _joint_candidates(logp, utt["att"], ctc, t >= max_rows, opt)
        is_eos = tok == EOS_ID

        # <eos> among the first K candidates: finished; merged with the kept ones by one topk for all.
        ended = is_eos[:, :k] & (top[:, :k] > NEG_INF)
        if opt.espnet_rule:  # an ending before the min length is dropped, not finished
            # ESPnet appends the forced <eos> to everything still running after the last step, so an
            # <eos> chosen at that step is kept as a token (and counted in the length), not an ending.
            last_step = (t == utt["max_rows"] - 1)[:, None]
            ended &= (t >= utt["min_rows"][:, None]) & ~last_step
        if rule is not None:  # at its max length generate() ends each of the first K, <eos> or not
            ended = ended | ((t == utt["max_rows"] - 1)[:, None] & (top[:, :k] > NEG_INF))
        if bool(ended.any()):
            new_norm = torch.where(ended, top[:, :k] / float((t + 1) ** lp), NEG_INF)
            new_tok = seqs.view(a, k, cap).gather(1, parent[:, :k, None].expand(a, k, cap))
            new_len = torch.full_like(utt["fin_len"], t)
            if rule is not None:  # a hypothesis cut at the max length keeps its last token
                new_tok[:, :, t] = tok[:, :k]
                new_len += ~is_eos[:, :k]
            utt["fin_norm"], pick = torch.cat([utt["fin_norm"], new_norm], 1).topk(k, dim=1)
            utt["fin_raw"] = torch.cat([utt["fin_raw"], top[:, :k]], 1).gather(1, pick)
            utt["fin_len"] = torch.cat([utt["fin_len"], new_len], 1).gather(1, pick)
            utt["fin_tok"] = torch.cat([utt["fin_tok"], new_tok], 1).gather(1, pick[:, :, None].expand(a, k, cap))

        # The best K candidates that are not <eos> live on, each placed by _slots.  ESPnet's rule: the
        # best K candidates, an <eos> among them leaving its slot dead (-inf) for this step.
        if opt.espnet_rule:
            scores, tok, parent = top[:, :k].masked_fill(is_eos[:, :k] & ~last_step, NEG_INF), tok[:, :k], parent[:, :k]
            if ctc is not None:
                att, psi = att[:, :k], psi[:, :k]
        else:
            live = torch.argsort(is_eos.to(torch.uint8), dim=1, stable=True)[:, :k]
            scores, tok, parent = top.gather(1, live), tok.gather(1, live), parent.gather(1, live)
            if ctc is not None:
                att, psi = att.gather(1, live), psi.gather(1, live)
        slot = _slots(parent, earlier)
        scores, tok, parent = (torch.empty_like(x).scatter_(1, slot, x) for x in (scores, tok, parent))
        utt["scores"] = scores
        if ctc is not None:  # a dead beam (-inf) must stay dead whatever its parts say
            att, psi = (torch.empty_like(x).scatter_(1, slot, x) for x in (att, psi))
            utt["att"], utt["psi"] = att.masked_fill(scores == NEG_INF, NEG_INF), psi

        # Done: `beam` finished and the best live beam's bound cannot beat the worst of them.
        if rule is None:
            done = scores.max(dim=1).values / utt["bound_div"] <= utt["fin_norm"][:, -1]
        else:  # generate()'s early stopping; nothing goes on past the max length
            done = rule.done(scores.max(dim=1).values, utt["fin_norm"][:, -1], t, utt["max_rows"], lp)
            done |= t >= utt["max_rows"] - 1
        rows = (parent + torch.arange(a, device=device)[:, None] * k).view(-1)
        keep = None
        if bool(done.any()):
            _collect(results, {n: x[done] for n, x in utt.items()}, opt.nbest)
            keep = (~done).nonzero().squeeze(1)
            kept = keep.tolist()
            if not kept:
                break
            utt = {n: x[keep] for n, x in utt.items()}
            max_lens, min_lens = [max_lens[i] for i in kept], [min_lens[i] for i in kept]
            max_rows, min_rows = utt["max_rows"].repeat_interleave(k), utt["min_rows"].repeat_interleave(k)
            rows, tok = rows.view(a, k)[keep].view(-1), tok[keep]
            state = state.select(rows, keep)
            seqs = seqs.index_select(0, rows)
        else:
            state.reorder_(rows)
            seqs = seqs.index_select(0, rows)
        if ctc is not None:
            ctc = ctc_prefix.extend(ctc, rows, tok.reshape(-1), utt["psi"].reshape(-1), keep)
        last = tok.reshape(-1)
        seqs[:, t] = last
    return results


def _ctc_state(model, memory: torch.Tensor, mask: torch.Tensor, group: int) -> ctc_prefix.CTCPrefixState:
    """The empty prefix of every utterance, from the model's CTC branch over the encoder output."""
    head = getattr(model, "ctc", None)
    if head is None:
        raise SearchOptionError("--ctc-weight > 0 needs a model with a CTC branch (trained with model.ctc_weight > 0)")
    log_probs = head(memory).float().log_softmax(-1)
    if log_probs.shape[-1] != model.vocab_size:
        raise SearchOptionError(f"--ctc-weight > 0: the model's CTC branch has {log_probs.shape[-1]} outputs, "
                                f"its decoder {model.vocab_size}: CTC is not over the output vocabulary")
    return ctc_prefix.initial_state(log_probs, mask.sum(1), group)


def _joint_candidates(logp: torch.Tensor, att_scores: torch.Tensor, ctc: ctc_prefix.CTCPrefixState,
                      at_max: torch.Tensor, opt: SearchOptions):
    """The 2K best joint-scored extensions of each utterance (module docstring): their joint score,
    parent beam and token, (A, 2K) each, best first, and the attention and CTC parts of the score."""
    (n, vocab), (a, k), w = logp.shape, att_scores.shape, opt.ctc_weight
    width = vocab if opt.ctc_pre_beam == 0 or w == 1 else min(vocab, max(2, int(opt.ctc_pre_beam * k)))
    if width < vocab:  # the decoder's best, and <eos>, whose CTC score costs nothing: a beam can always end
        ranked = logp.clone()
        ranked[:, EOS_ID] = math.inf
        width = min(vocab, width + 1)
        tokens = ranked.topk(width, dim=1).indices
    else:
        tokens = torch.arange(vocab, device=logp.device).expand(n, vocab)
    att = logp.gather(1, tokens).add_(att_scores.view(-1, 1))
    psi = torch.minimum(ctc_prefix.prefix_scores(ctc, tokens if width < vocab else None), ctc.psi[:, None])
    if opt.espnet_rule:  # the <eos> forced at the max length costs nothing, its CTC part included
        psi = torch.where((tokens == EOS_ID) & at_max[:, None], ctc.psi[:, None], psi)
    # w = 1: 0 * -inf would be NaN, and the decoder's -inf (blank, length limits, dead beams) must hold.
    joint = psi.masked_fill(att == NEG_INF, NEG_INF) if w == 1 else att * (1 - w) + psi * w
    top, idx = joint.view(a, k * width).topk(min(2 * k, k * width), dim=1)
    parent = idx.div(width, rounding_mode="floor")
    tok, att, psi = (x.reshape(a, k * width).gather(1, idx) for x in (tokens, att, psi))
    return top, parent, tok, att, psi


def _generate_rule(model):
    """An hf: model's generate() rules (kdst.models.hf_bridge.GenerateRule), for --hf-rule."""
    rule = getattr(model, "generate_rule", None)
    if rule is None:
        raise SearchOptionError("--hf-rule is for Hugging Face models (hf:PATH)")
    return rule()


def _collect(results, utt: dict, nbest: int) -> None:
    """Write the n-best of done utterances (their rows of the per-utterance tensors) into ``results``."""
    for u, ns, rs, ls, ts in zip(utt["ids"].tolist(), utt["fin_norm"][:, :nbest].tolist(),
                                 utt["fin_raw"][:, :nbest].tolist(), utt["fin_len"][:, :nbest].tolist(),
                                 utt["fin_tok"][:, :nbest].tolist()):
        results[u] = [Hypothesis(tuple(tk[:n]), s, r) for s, r, n, tk in zip(ns, rs, ls, ts) if s != NEG_INF]


def greedy_search(model, src: torch.Tensor, src_lengths: torch.Tensor, max_len_ratio: float = 1.0,
                  max_len_bias: int = 5, max_len: int = 512) -> list[Hypothesis]:
    """The most likely token at each step until <eos> (forced at the max length); score = logprob."""
    if src.shape[0] == 0:
        return []
    with _EvalMode(model), torch.inference_mode():
        memory, mask, max_lens, _ = _encode(model, src, src_lengths, max_len_ratio, max_len_bias, max_len)
        device, b = memory.device, memory.shape[0]
        results: list[Hypothesis | None] = [None] * b
        cap = max(max_lens) + 1
        state = model.decoder.init_state(memory, mask, capacity=cap)
        utt_ids = torch.arange(b, device=device)
        max_rows = torch.tensor(max_lens, device=device)
        last = torch.full((b,), EOS_ID, dtype=torch.long, device=device)
        seqs = torch.zeros(b, cap, dtype=torch.long, device=device)
        total = torch.zeros(b, device=device)
        for t in range(cap):
            logits, state = model.decoder.step(last, state)
            logp = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
            _mask_lengths(logp, t, None, max_rows, min(max_lens), 0)
            best, last = logp.max(dim=-1)
            total = total + best
            seqs[:, t] = last
            ended = last == EOS_ID
            if bool(ended.any()):
                for u, s, tk in zip(utt_ids[ended].tolist(), total[ended].tolist(), seqs[ended].tolist()):
                    results[u] = Hypothesis(tuple(tk[:t]), s, s)
                kept = (~ended).nonzero().squeeze(1)
                if not kept.numel():
                    break
                state = state.select(kept)
                max_lens = [max_lens[i] for i in kept.tolist()]
                utt_ids, max_rows, last, seqs, total = (x[kept] for x in (utt_ids, max_rows, last, seqs, total))
        return results  # type: ignore[return-value]
