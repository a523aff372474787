"""Multi-head attention with the key/value caching that incremental decoding needs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by {heads} heads")
        self.heads = heads
        self.query = nn.Linear(d_model, d_model)
        self.key_value = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def project_kv(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``source`` (N, S, D) as (N, H, S, D/H) each."""
        k, v = self.key_value(source).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        n, s, d = x.shape
        return x.view(n, s, self.heads, d // self.heads).transpose(1, 2)

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None = None, causal: bool = False, explicit: bool = False) -> torch.Tensor:
        """Queries from ``x`` (N, L, D) over keys/values; ``mask`` (N, 1, L or 1, S) True = may attend.

        ``explicit``: plain matmul + softmax instead of ``scaled_dot_product_attention``, for the
        few queries per row of a search step, where the fused CPU kernel's fixed cost dominates
        (1.5-3x slower at beam-search shapes); no dropout, no causal mask."""
        q = self._split(self.query(x))
        if explicit:
            scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            out = torch.matmul(torch.softmax(scores, dim=-1), v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                                 dropout_p=self.dropout if self.training else 0.0)
        n, h, length, dh = out.shape
        return self.out(out.transpose(1, 2).reshape(n, length, h * dh))


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal position encodings (Vaswani et al.), added after scaling the input."""

    def __init__(self, d_model: int, max_len: int = 10000):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        inv_freq = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        table = torch.zeros(max_len, d_model)
        table[:, 0::2] = torch.sin(position * inv_freq)
        table[:, 1::2] = torch.cos(position * inv_freq)
        self.register_buffer("table", table, persistent=False)
        self.scale = math.sqrt(d_model)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        if offset + x.shape[1] > self.table.shape[0]:
            raise ValueError(f"sequence of {offset + x.shape[1]} positions is longer than {self.table.shape[0]}")
        return x * self.scale + self.table[offset:offset + x.shape[1]]
