"""Transformer decoder (pre-norm) with cached incremental decoding for search."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kdst.models.attention import MultiHeadAttention, SinusoidalPositions


@dataclass
class DecoderState:
    """What incremental decoding keeps between steps, batch-first everywhere.

    The N rows are A utterances x ``group`` rows each (beams), utterance-major.  The
    encoder side is stored once per utterance: every beam of an utterance attends to
    the same encoder output, so beams are folded into the query dimension of the
    cross-attention instead of copying its keys/values K times.

    ``self_k[i]``/``self_v[i]``: layer i's self-attention keys/values, (N, H, capacity, D/H),
    of which the first ``length`` positions are filled (preallocated: a step writes one
    column instead of copying the whole cache);
    ``cross_kv[i]``: layer i's keys/values of the encoder output, (A, H, S, D/H), the keys
    stored transposed in memory (a (A, H, D/H, S) tensor, viewed) so that a step's
    query-key product reads them without a copy;
    ``memory_mask``: (A, 1, 1, S), True where the encoder output is real.
    """

    self_k: list[torch.Tensor]
    self_v: list[torch.Tensor]
    cross_kv: list[tuple[torch.Tensor, torch.Tensor]]
    memory_mask: torch.Tensor
    group: int
    length: int  # tokens consumed so far

    def reorder_(self, rows: torch.Tensor, moved: torch.Tensor | None = None) -> None:
        """In place, row i takes the history of row ``rows[i]`` (beams of the same utterance).
        ``moved``: the rows where ``rows[i] != i``, if known; the others are left alone."""
        if moved is None:
            moved = (rows != torch.arange(rows.numel(), device=rows.device)).nonzero().squeeze(1)
        if not moved.numel():
            return
        src = rows.index_select(0, moved)
        for cache in (*self.self_k, *self.self_v):
            filled = cache[:, :, :self.length]
            filled.index_copy_(0, moved, filled.index_select(0, src))

    def select(self, rows: torch.Tensor, utterances: torch.Tensor | None = None) -> "DecoderState":
        """A new state of rows ``rows`` whose encoder side is that of ``utterances`` (A' of them,
        ``rows`` then holds A' x group entries, utterance-major).  With one row per utterance
        ``utterances`` defaults to ``rows``: any reordering or subset of the batch."""
        if utterances is None:
            if self.group != 1:
                raise ValueError("select() on a state with several rows per utterance needs the utterances")
            utterances = rows
        if rows.numel() != utterances.numel() * self.group:
            raise ValueError(f"{rows.numel()} rows for {utterances.numel()} utterances x {self.group}")
        def pick(cache):  # only the filled positions are copied
            out = cache.new_empty(rows.numel(), *cache.shape[1:])
            torch.index_select(cache[:, :, :self.length], 0, rows, out=out[:, :, :self.length])
            return out

        cross = [(k.transpose(2, 3).index_select(0, utterances).transpose(2, 3), v.index_select(0, utterances))
                 for k, v in self.cross_kv]
        return DecoderState([pick(k) for k in self.self_k], [pick(v) for v in self.self_v], cross,
                            self.memory_mask.index_select(0, utterances), self.group, self.length)

    def _grow(self) -> None:
        """Doubles the capacity of the self-attention caches (only when a caller outruns its estimate)."""
        grow = lambda x: torch.cat([x, torch.empty_like(x)], dim=2)  # noqa: E731
        self.self_k, self.self_v = [grow(k) for k in self.self_k], [grow(v) for v in self.self_v]


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.self_norm = nn.LayerNorm(d_model)
        self.self_attn = MultiHeadAttention(d_model, heads, dropout)
        self.cross_norm = nn.LayerNorm(d_model)
        self.cross_attn = MultiHeadAttention(d_model, heads, dropout)
        self.ff_norm = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, ff_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff_dim, d_model))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, self_kv: tuple[torch.Tensor, torch.Tensor], causal: bool,
                cross_kv: tuple[torch.Tensor, torch.Tensor], memory_mask: torch.Tensor) -> torch.Tensor:
        h = self.self_norm(x)
        x = x + self.dropout(self.self_attn.attend(h, *self_kv, causal=causal))
        x = x + self.dropout(self.cross_attn.attend(self.cross_norm(x), *cross_kv, mask=memory_mask))
        return x + self.dropout(self.ff(self.ff_norm(x)))


class TransformerDecoder(nn.Module):
    def __init__(self, vocab_size: int, d_model: int = 256, layers: int = 6, heads: int = 4,
                 ff_dim: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.positions = SinusoidalPositions(d_model)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(DecoderLayer(d_model, heads, ff_dim, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.output = nn.Linear(d_model, vocab_size)

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor,
                memory_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits (B, U, V) for input tokens (B, U) that start with <sos>.

        Padding at the end of ``tokens`` needs no mask: causal attention never
        lets a real position see it, and its outputs are ignored by the loss.
        ``memory_rows`` (B,), optional, names the row of ``memory`` each token row
        reads (several targets per utterance): the encoder keys/values are then
        projected once per utterance, not once per target.
        """
        x = self.dropout(self.positions(self.embed(tokens)))
        mask = memory_mask[:, None, None, :]
        if memory_rows is not None:
            mask = mask[memory_rows]
        for layer in self.layers:
            h = layer.self_norm(x)
            cross_kv = layer.cross_attn.project_kv(memory)
            if memory_rows is not None:
                cross_kv = (cross_kv[0][memory_rows], cross_kv[1][memory_rows])
            x = layer(x, layer.self_attn.project_kv(h), True, cross_kv, mask)
        return self.output(self.norm(x))

    def init_state(self, memory: torch.Tensor, memory_mask: torch.Tensor, group: int = 1,
                   capacity: int = 64) -> DecoderState:
        """State before the first step for ``group`` rows (beams) per utterance of ``memory`` (A, S, D),
        with room for ``capacity`` tokens (it grows if a caller goes further)."""
        n, d = memory.shape[0] * group, memory.shape[-1]
        heads = self.layers[0].self_attn.heads
        cache = lambda: memory.new_empty(n, heads, max(1, capacity), d // heads)  # noqa: E731  (read only once written)
        cross_kv = []
        for layer in self.layers:
            k, v = layer.cross_attn.project_kv(memory)
            cross_kv.append((k.transpose(2, 3).contiguous().transpose(2, 3), v.contiguous()))
        return DecoderState(self_k=[cache() for _ in self.layers], self_v=[cache() for _ in self.layers],
                            cross_kv=cross_kv,
                            memory_mask=memory_mask[:, None, None, :], group=group, length=0)

    def step(self, tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """Logits (N, V) for the next token after ``tokens`` (N,), the newest token of each row.
        The state is updated in place (and returned).  For search: no dropout, whatever the mode."""
        if state.length == state.self_k[0].shape[2]:
            state._grow()
        n, t = tokens.shape[0], state.length
        x = self.positions(self.embed(tokens[:, None]), offset=t)
        for layer, cache_k, cache_v, cross_kv in zip(self.layers, state.self_k, state.self_v, state.cross_kv):
            h = layer.self_norm(x)
            k, v = layer.self_attn.project_kv(h)
            cache_k[:, :, t:t + 1] = k
            cache_v[:, :, t:t + 1] = v
            x = x + layer.self_attn.attend(h, cache_k[:, :, :t + 1], cache_v[:, :, :t + 1], explicit=True)
            # The beams of an utterance are one query sequence over its encoder output.
            h = layer.cross_norm(x).view(n // state.group, state.group, -1)
            x = x + layer.cross_attn.attend(h, *cross_kv, mask=state.memory_mask, explicit=True).view(n, 1, -1)
            x = x + layer.ff(layer.ff_norm(x))
        state.length = t + 1
        return self.output(self.norm(x[:, 0])), state
