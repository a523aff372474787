"""Encoders: speech (Conv2d subsampling x4, then Conformer or Transformer blocks) and text (MT)."""

from __future__ import annotations

import torch
from torch import nn
from torchaudio.models import Conformer

from kdst.config import SpeechEncoderConfig
from kdst.models.attention import SinusoidalPositions


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True at real positions."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class Conv2dSubsampling(nn.Module):
    """Two 3x3 stride-2 convolutions: 4x fewer frames, as in ESPnet and icefall."""

    def __init__(self, input_dim: int, d_model: int, channels: int = 256):
        super().__init__()
        self.input_dim = input_dim
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
            x = _conformer_blocks(self.blocks, x, ~lengths_to_mask(lengths, x.shape[1]))
        else:
            x = self.blocks(x, src_key_padding_mask=~lengths_to_mask(lengths, x.shape[1]))
        return x, lengths


def speech_encoder(config: SpeechEncoderConfig, input_dim: int, d_model: int) -> SpeechEncoder:
    """The speech encoder a ``model.encoder`` section (conformer or transformer) describes."""
    return SpeechEncoder(input_dim, d_model, type=config.type, layers=config.layers, heads=config.heads,
                         ff_dim=config.ff_dim, kernel_size=config.kernel_size, dropout=config.dropout,
                         subsampling_channels=config.subsampling_channels)


def _conformer_blocks(conformer: Conformer, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    """torchaudio's Conformer layers on ``x`` (B, T, D), ``padding`` (B, T) True at padded frames.

    torchaudio masks the padding in self-attention only: its depthwise convolution reads
    the padded frames (non-zero after the feed-forward and pointwise layers), so an
    utterance's output near its end would depend on what else is in the batch.  Here the
    padded frames are zeroed right before each depthwise convolution, which then sees
    exactly the zero padding it sees for the utterance alone (as ESPnet and WeNet do).
    Same modules and parameter names as torchaudio's ``Conformer.forward``.
    """
    x = x.transpose(0, 1)  # (T, B, D), torchaudio's layout
    for layer in conformer.conformer_layers:
        x = x + 0.5 * layer.ffn1(x)
        if layer.convolution_first:
            x = x + _masked_convolution(layer.conv_module, x, padding)
        h = layer.self_attn_layer_norm(x)
        h, _ = layer.self_attn(query=h, key=h, value=h, key_padding_mask=padding, need_weights=False)
        x = x + layer.self_attn_dropout(h)
        if not layer.convolution_first:
            x = x + _masked_convolution(layer.conv_module, x, padding)
        x = layer.final_layer_norm(x + 0.5 * layer.ffn2(x))
    return x.transpose(0, 1)


def _masked_convolution(module, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    """torchaudio's ``_ConvolutionModule`` on ``x`` (T, B, D), padded frames zeroed before the depthwise conv."""
    pointwise, glu, depthwise, *rest = module.sequential
    h = glu(pointwise(module.layer_norm(x).permute(1, 2, 0)))  # (B, C, T)
    h = depthwise(h.masked_fill(padding[:, None, :], 0.0))
    for m in rest:
        h = m(h)
    return h.permute(2, 0, 1)


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
