"""Encoders: speech (Conv2d subsampling x4, then Conformer or Transformer blocks) and text (MT)."""

from __future__ import annotations

import torch
from torch import nn
from torchaudio.models import Conformer

from kdst.models.attention import SinusoidalPositions


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True at real positions."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class Conv2dSubsampling(nn.Module):
    """Two 3x3 stride-2 convolutions: 4x fewer frames, as in ESPnet and icefall."""

    def __init__(self, input_dim: int, d_model: int, channels: int = 256):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, channels, 3, 2), nn.ReLU(), nn.Conv2d(channels, channels, 3, 2), nn.ReLU())
        freq = ((input_dim - 1) // 2 - 1) // 2
        self.proj = nn.Linear(channels * freq, d_model)

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        return ((lengths - 1) // 2 - 1) // 2

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(feats.unsqueeze(1))  # (B, C, T', F')
        b, c, t, f = x.shape
        return self.proj(x.transpose(1, 2).reshape(b, t, c * f)), self.output_lengths(lengths).clamp(min=1)


def _transformer_blocks(d_model: int, heads: int, ff_dim: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(d_model, heads, ff_dim, dropout, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)


class SpeechEncoder(nn.Module):
    def __init__(self, input_dim: int = 80, d_model: int = 256, type: str = "conformer", layers: int = 12,
                 heads: int = 4, ff_dim: int = 1024, kernel_size: int = 31, dropout: float = 0.1,
                 subsampling_channels: int | None = None):
        super().__init__()
        # The second 3x3 convolution costs channels^2 per output position: on a CPU it can
        # outweigh the whole encoder, so small models take fewer channels than d_model.
        self.subsampling = Conv2dSubsampling(input_dim, d_model, channels=subsampling_channels or d_model)
        self.positions = SinusoidalPositions(d_model)
        self.dropout = nn.Dropout(dropout)
        self.type = type
        if type == "conformer":
            self.blocks = Conformer(input_dim=d_model, num_heads=heads, ffn_dim=ff_dim, num_layers=layers,
                                    depthwise_conv_kernel_size=kernel_size, dropout=dropout)
        elif type == "transformer":
            self.blocks = _transformer_blocks(d_model, heads, ff_dim, layers, dropout)
        else:
            raise ValueError(f"unknown speech encoder type '{type}' (conformer, transformer)")

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.subsampling(feats, lengths)
        x = self.dropout(self.positions(x))
        if self.type == "conformer":
            x, _ = self.blocks(x, lengths)
        else:
            x = self.blocks(x, src_key_padding_mask=~lengths_to_mask(lengths, x.shape[1]))
        return x, lengths


class TextEncoder(nn.Module):
    def __init__(self, vocab_size: int, d_model: int = 256, layers: int = 6, heads: int = 4, ff_dim: int = 1024,
                 dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=0)
        self.positions = SinusoidalPositions(d_model)
        self.dropout = nn.Dropout(dropout)
        self.blocks = _transformer_blocks(d_model, heads, ff_dim, layers, dropout)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.dropout(self.positions(self.embed(tokens)))
        return self.blocks(x, src_key_padding_mask=~lengths_to_mask(lengths, x.shape[1])), lengths
