"""SpecAugment (Park et al. 2019): frequency and time masks, per utterance, on a padded batch."""

from __future__ import annotations

import torch
import torchaudio.functional as AF

from kdst.config import SpecAugmentConfig


def spec_augment(feats: torch.Tensor, lengths: torch.Tensor, options: SpecAugmentConfig) -> torch.Tensor:
    """Masked copy of (B, T, F) features; masks are drawn per utterance with torch's RNG."""
    x = feats.transpose(1, 2)  # (B, F, T): mask_along_axis_iid masks the last two axes
    for _ in range(options.freq_masks):
        x = AF.mask_along_axis_iid(x.unsqueeze(1), options.freq_width, 0.0, axis=2).squeeze(1)
    shortest = int(lengths.min())
    width = min(options.time_width, max(int(options.time_ratio * shortest), 1))
    for _ in range(options.time_masks):
        x = AF.mask_along_axis_iid(x.unsqueeze(1), width, 0.0, axis=3).squeeze(1)
    return x.transpose(1, 2)
