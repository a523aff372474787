"""A chunk-wise causal Conformer encoder: the streaming student's transcriber.

After the 4x subsampling the frames are cut into chunks of ``chunk_size``; a frame
attends to the frames of its own chunk and of ``left_chunks`` chunks before it (all
of them when negative), and the depthwise convolution is padded on the left only.
So the output of chunk k never depends on a later chunk, and running the whole
utterance at once with this mask gives exactly what a chunk-by-chunk streaming run
with caches would give.

Right context: the subsampling convolutions are not padded, so subsampled frame j
reads input frames 4j .. 4j+6.  The outputs of chunks 0..k therefore depend on the
first ``visible_input_frames(k, chunk_size)`` = 4 (k+1) chunk_size + 3 input frames:
the chunk's own 4 * chunk_size frames plus 3 frames (30 ms) of lookahead.

The convolution module normalises with LayerNorm, not torchaudio's BatchNorm, whose
batch statistics would mix frames across time, padding and utterances in training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdst.models.attention import SinusoidalPositions
from kdst.models.encoders import Conv2dSubsampling, lengths_to_mask

SUBSAMPLING = 4
RIGHT_CONTEXT_FRAMES = 3  # input frames read past a chunk's end by the last subsampled frame


def visible_input_frames(chunk: int, chunk_size: int) -> int:
    """How many input frames the encoder outputs of chunks 0..``chunk`` depend on."""
    return SUBSAMPLING * (chunk + 1) * chunk_size + RIGHT_CONTEXT_FRAMES


def chunk_attention_mask(lengths: torch.Tensor, max_len: int, chunk_size: int, left_chunks: int) -> torch.Tensor:
    """(B, 1, T, T) bool, True where query frame t may attend key frame s."""
    chunk = torch.arange(max_len, device=lengths.device) // chunk_size
    diff = chunk[:, None] - chunk[None, :]  # query chunk - key chunk
    window = diff >= 0
    if left_chunks >= 0:
        window &= diff <= left_chunks
    mask = window[None] & lengths_to_mask(lengths, max_len)[:, None, :]
    # A padded query may see no real key; letting every frame see itself keeps its softmax finite
    # (a NaN there would reach real frames through 0 * NaN in the next layer's attention).
    return (mask | torch.eye(max_len, dtype=torch.bool, device=lengths.device))[:, None]


class _FeedForward(nn.Sequential):
    def __init__(self, d_model: int, ff_dim: int, dropout: float):
        super().__init__(nn.LayerNorm(d_model), nn.Linear(d_model, ff_dim), nn.SiLU(), nn.Dropout(dropout),
                         nn.Linear(ff_dim, d_model), nn.Dropout(dropout))


class _SelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.norm = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return F.dropout(self.out(h.transpose(1, 2).reshape(b, t, d)), self.dropout, self.training)


class _CausalConvolution(nn.Module):
    def __init__(self, d_model: int, kernel_size: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel_size, groups=d_model)
        self.depthwise_norm = nn.LayerNorm(d_model)
        self.pointwise_out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Left padding only: a real frame reads itself and earlier frames, never the padding after it.
        h = F.glu(self.pointwise_in(self.norm(x)), dim=-1).transpose(1, 2)
        h = self.depthwise(F.pad(h, (self.depthwise.kernel_size[0] - 1, 0))).transpose(1, 2)
        return self.dropout(self.pointwise_out(F.silu(self.depthwise_norm(h))))


class _ConformerLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, ff_dim: int, kernel_size: int, dropout: float):
        super().__init__()
        self.ffn1 = _FeedForward(d_model, ff_dim, dropout)
        self.attention = _SelfAttention(d_model, heads, dropout)
        self.convolution = _CausalConvolution(d_model, kernel_size, dropout)
        self.ffn2 = _FeedForward(d_model, ff_dim, dropout)
        self.final_norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ffn1(x)
        x = x + self.attention(x, mask)
        x = x + self.convolution(x)
        return self.final_norm(x + 0.5 * self.ffn2(x))


class StreamingConformerEncoder(nn.Module):
    def __init__(self, input_dim: int = 80, d_model: int = 256, layers: int = 12, heads: int = 4,
                 ff_dim: int = 1024, kernel_size: int = 15, dropout: float = 0.1,
                 subsampling_channels: int | None = None, chunk_size: int = 16, left_chunks: int = -1):
        super().__init__()
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, not {chunk_size}")
        self.chunk_size, self.left_chunks = chunk_size, left_chunks
        self.subsampling = Conv2dSubsampling(input_dim, d_model, channels=subsampling_channels or d_model)
        self.positions = SinusoidalPositions(d_model)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(_ConformerLayer(d_model, heads, ff_dim, kernel_size, dropout)
                                    for _ in range(layers))

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.subsampling(feats, lengths)
        x = self.dropout(self.positions(x))
        mask = chunk_attention_mask(lengths, x.shape[1], self.chunk_size, self.left_chunks)
        for layer in self.layers:
            x = layer(x, mask)
        return x, lengths
