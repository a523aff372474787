"""Transformer decoder (pre-norm) with cached incremental decoding for search."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kdst.models.attention import MultiHeadAttention, SinusoidalPositions


@dataclass
class DecoderState:
    """What incremental decoding keeps between steps, batch-first everywhere.

    ``self_kv[i]``: keys/values of layer i's self-attention over the tokens so far;
    ``cross_kv[i]``: keys/values of the encoder output, computed once;
    ``memory_mask``: (N, 1, 1, S), True where the encoder output is real.
    """

    self_kv: list[tuple[torch.Tensor, torch.Tensor]]
    cross_kv: list[tuple[torch.Tensor, torch.Tensor]]
    memory_mask: torch.Tensor
    length: int  # tokens consumed so far

    def select(self, index: torch.Tensor) -> "DecoderState":
        """Rows ``index`` of the batch: reorders beams, or expands an utterance into K beams."""
        pick = lambda kv: (kv[0].index_select(0, index), kv[1].index_select(0, index))  # noqa: E731
        return DecoderState([pick(kv) for kv in self.self_kv], [pick(kv) for kv in self.cross_kv],
                            self.memory_mask.index_select(0, index), self.length)


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

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, U, V) for input tokens (B, U) that start with <sos>.

        Padding at the end of ``tokens`` needs no mask: causal attention never
        lets a real position see it, and its outputs are ignored by the loss.
        """
        x = self.dropout(self.positions(self.embed(tokens)))
        mask = memory_mask[:, None, None, :]
        for layer in self.layers:
            h = layer.self_norm(x)
            x = layer(x, layer.self_attn.project_kv(h), True, layer.cross_attn.project_kv(memory), mask)
        return self.output(self.norm(x))

    def init_state(self, memory: torch.Tensor, memory_mask: torch.Tensor) -> DecoderState:
        n, d = memory.shape[0], memory.shape[-1]
        heads = self.layers[0].self_attn.heads
        empty = memory.new_zeros(n, heads, 0, d // heads)
        return DecoderState(self_kv=[(empty, empty) for _ in self.layers],
                            cross_kv=[layer.cross_attn.project_kv(memory) for layer in self.layers],
                            memory_mask=memory_mask[:, None, None, :], length=0)

    def step(self, tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """Logits (N, V) for the next token after ``tokens`` (N,), the newest token of each row."""
        x = self.positions(self.embed(tokens[:, None]), offset=state.length)
        new_self_kv = []
        for layer, (past_k, past_v), cross_kv in zip(self.layers, state.self_kv, state.cross_kv):
            k, v = layer.self_attn.project_kv(layer.self_norm(x))
            kv = (torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2))
            new_self_kv.append(kv)
            x = layer(x, kv, False, cross_kv, state.memory_mask)  # one query sees every past key
        logits = self.output(self.norm(x[:, 0]))
        return logits, DecoderState(new_self_kv, state.cross_kv, state.memory_mask, state.length + 1)
