"""Greedy and modified beam search for the transducer, batched over utterances.

Utterances are sorted by encoder length, longest first, so at frame t the ones
still running are a prefix of the rows: finished ones are retired by slicing,
and cost nothing afterwards.  Log-probabilities are float32 whatever the model's
dtype.  The encoder runs once per batch; the predictor runs only for rows that
emit a label.

Scores are the sum of the log-probabilities of the decisions taken, one per
frame and label: a blank moves to the next frame, a label stays on the frame
(greedy, up to ``max_symbols_per_frame`` labels) or moves on too (modified beam
search, one label per frame, as in icefall).  When greedy hits its cap it moves
on without a blank, so with a cap of 1 both searches share one topology and
beam 1 is greedy.

Modified beam search keeps ``beam`` hypotheses per utterance (B x beam rows).
Each frame, every hypothesis is extended by blank and by every label; two
extensions with the same label sequence (y + v from one hypothesis and the blank
extension of the hypothesis y + v) are merged by log-adding their scores before
the ``beam`` best are taken, so the kept hypotheses are always distinct label
sequences and a hypothesis's score is the log-probability of all the alignments
of its labels that the search explored.  With a beam as wide as the number of
label sequences nothing is pruned and the scores are the exact sums.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdst.data.tokenizer import BLANK_ID
from kdst.decode.search import Hypothesis, _EvalMode

NEG_INF = float("-inf")


def _encode_sorted(model, src: torch.Tensor, src_lengths: torch.Tensor):
    """Projected encoder output sorted by length (longest first), its lengths (python ints), the order."""
    device = next(model.parameters()).device
    enc, lengths = model.encode(src.to(device), src_lengths.to(device))
    order = torch.argsort(lengths, descending=True, stable=True)
    return model.project_encoder(enc[order]), lengths[order].tolist(), order.tolist()


def _running(lengths: list[int], t: int, a: int) -> int:
    """How many of the first ``a`` (longest first) utterances still have frame t."""
    while a and lengths[a - 1] <= t:
        a -= 1
    return a


def greedy_search(model, src: torch.Tensor, src_lengths: torch.Tensor,
                  max_symbols_per_frame: int = 3) -> list[Hypothesis]:
    """The most likely symbol at each step; at most ``max_symbols_per_frame`` labels per frame."""
    if max_symbols_per_frame < 1:
        raise ValueError(f"max_symbols_per_frame must be >= 1, not {max_symbols_per_frame}")
    if src.shape[0] == 0:
        return []
    with _EvalMode(model), torch.inference_mode():
        enc, lengths, order = _encode_sorted(model, src, src_lengths)
        b, device = len(lengths), enc.device
        state = model.init_predictor_state(b, device)
        pred, state = model.predictor_step(torch.full((b,), BLANK_ID, dtype=torch.long, device=device), state)
        scores = torch.zeros(b, device=device)
        tokens: list[list[int]] = [[] for _ in range(b)]
        a = b
        for t in range(lengths[0]):
            a = _running(lengths, t, a)
            rows = torch.arange(a, device=device)
            for _ in range(max_symbols_per_frame):
                logp = torch.log_softmax(model.join(enc[rows, t], pred[rows]), dim=-1, dtype=torch.float32)
                best_logp, best = logp.max(dim=-1)
                scores.index_add_(0, rows, best_logp)
                emit = best != BLANK_ID
                rows, best = rows[emit], best[emit]
                if not rows.numel():
                    break
                for r, v in zip(rows.tolist(), best.tolist()):
                    tokens[r].append(v)
                out, new = model.predictor_step(best, model.select_state(state, rows))
                pred[rows] = out
                for s, n in zip(state, new):
                    s[rows] = n
        results: list[Hypothesis | None] = [None] * b
        for i, (u, s) in enumerate(zip(order, scores.tolist())):
            results[u] = Hypothesis(tuple(tokens[i]), s, s)
        return results  # type: ignore[return-value]


def _merge(cand: torch.Tensor, seqs: torch.Tensor, seq_len: torch.Tensor, alive: torch.Tensor) -> None:
    """In place on ``cand`` (A, K, V), the scores of every extension of the K hypotheses of A utterances:
    where hypothesis j's labels are hypothesis i's plus v, adds (i, v) into (j, blank) and drops (i, v).

    ``seqs`` (A, K, W) labels, 0 past ``seq_len`` (A, K); ``alive`` (A, K) marks real hypotheses.  Live
    hypotheses are distinct sequences, so each j matches at most one i, and each (i, v) at most one j."""
    a, k, v = cand.shape
    end = (seq_len - 1).clamp(min=0)[..., None]
    last = seqs.gather(2, end)[..., 0] if seqs.shape[2] else seq_len.new_zeros(a, k)  # (A, K)
    trunc = seqs.scatter(2, end, 0) if seqs.shape[2] else seqs
    match = ((trunc[:, :, None] == seqs[:, None, :]).all(-1)  # [a, j, i]
             & (seq_len[:, :, None] == seq_len[:, None, :] + 1) & alive[:, :, None] & alive[:, None, :])
    extension = cand.gather(2, last[:, None, :].expand(a, k, k)).transpose(1, 2)  # [a, j, i] = cand[a, i, last_j]
    merged = torch.where(match, extension, NEG_INF).logsumexp(-1)
    cand[:, :, BLANK_ID] = torch.logaddexp(cand[:, :, BLANK_ID], merged)
    drop = torch.bmm(match.transpose(1, 2).float(), F.one_hot(last, v).float()) > 0  # [a, i, v]
    cand.masked_fill_(drop, NEG_INF)


def modified_beam_search(model, src: torch.Tensor, src_lengths: torch.Tensor, beam: int = 4,
                         max_symbols_per_frame: int = 1, nbest: int = 1) -> list[list[Hypothesis]]:
    """n-best hypotheses per utterance, best first (fewer than nbest only if no more exist)."""
    if max_symbols_per_frame != 1:
        raise ValueError("modified beam search emits at most one label per frame: max_symbols_per_frame=1")
    if beam < 1 or not 1 <= nbest <= beam:
        raise ValueError(f"need beam >= 1 and 1 <= nbest <= beam, not beam={beam} nbest={nbest}")
    if src.shape[0] == 0:
        return []
    with _EvalMode(model), torch.inference_mode():
        enc, lengths, order = _encode_sorted(model, src, src_lengths)
        b, k, device = len(lengths), beam, enc.device
        state = model.init_predictor_state(b * k, device)
        pred, state = model.predictor_step(torch.full((b * k,), BLANK_ID, dtype=torch.long, device=device), state)
        scores = torch.full((b, k), NEG_INF, device=device)
        scores[:, 0] = 0.0  # one empty hypothesis to start from
        seqs = torch.zeros(b * k, max(lengths), dtype=torch.long, device=device)
        seq_len = torch.zeros(b * k, dtype=torch.long, device=device)
        results: list[list[Hypothesis]] = [[] for _ in range(b)]
        a = b
        for t in range(max(lengths) + 1):
            running = _running(lengths, t, a)
            if running < a:  # utterances a' in [running, a) have no frame t: done
                _collect(results, order[running:a], scores[running:a], seqs[running * k:a * k],
                         seq_len[running * k:a * k], nbest)
                a, n = running, running * k
                if not a:
                    break
                scores, seqs, seq_len, pred = scores[:a], seqs[:n], seq_len[:n], pred[:n]
                state = tuple(s[:n] for s in state)
            logits = model.join(enc[:a, t][:, None], pred.view(a, k, -1))
            cand = torch.log_softmax(logits, dim=-1, dtype=torch.float32).add_(scores[:, :, None])
            vocab = cand.shape[2]
            _merge(cand, seqs.view(a, k, -1)[:, :, :t], seq_len.view(a, k), scores > NEG_INF)
            scores, idx = cand.view(a, k * vocab).topk(k, dim=1)  # best first
            tok = idx.remainder(vocab).view(-1)
            rows = (idx.div(vocab, rounding_mode="floor") + torch.arange(a, device=device)[:, None] * k).view(-1)
            seqs, seq_len, pred = seqs[rows], seq_len[rows], pred[rows]
            state = model.select_state(state, rows)
            emit = ((tok != BLANK_ID) & (scores.view(-1) > NEG_INF)).nonzero().squeeze(1)
            if emit.numel():
                seqs[emit, seq_len[emit]] = tok[emit]
                seq_len[emit] += 1
                out, new = model.predictor_step(tok[emit], model.select_state(state, emit))
                pred[emit] = out
                for s, n in zip(state, new):
                    s[emit] = n
        return results


def _collect(results, utts: list[int], scores: torch.Tensor, seqs: torch.Tensor, seq_len: torch.Tensor,
             nbest: int) -> None:
    """The n-best of finished utterances; their beams are already best first (topk order)."""
    k = scores.shape[1]
    for i, (u, row_scores) in enumerate(zip(utts, scores.tolist())):
        hyps = []
        for j, s in enumerate(row_scores[:nbest]):
            if s == NEG_INF:
                break
            r = i * k + j
            labels = tuple(seqs[r, :int(seq_len[r])].tolist())
            hyps.append(Hypothesis(labels, s, s))
        results[u] = hyps
