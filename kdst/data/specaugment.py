"""SpecAugment (Park et al. 2019): frequency and time masks, per utterance, on a padded batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio.functional as AF


@dataclass(frozen=True)
class SpecAugmentOptions:
    freq_masks: int = 2
    freq_width: int = 27      # F: widest frequency mask, in bins
    time_masks: int = 2
    time_width: int = 40      # T: widest time mask, in frames
    time_ratio: float = 0.2   # p: no time mask covers more than this share of an utterance


def spec_augment(feats: torch.Tensor, lengths: torch.Tensor, options: SpecAugmentOptions) -> torch.Tensor:
    """Masked copy of (B, T, F) features; masks are drawn per utterance with torch's RNG."""
    x = feats.transpose(1, 2)  # (B, F, T): mask_along_axis_iid masks the last two axes
    for _ in range(options.freq_masks):
        x = AF.mask_along_axis_iid(x.unsqueeze(1), options.freq_width, 0.0, axis=2).squeeze(1)
    shortest = int(lengths.min())
    width = min(options.time_width, max(int(options.time_ratio * shortest), 1))
    for _ in range(options.time_masks):
        x = AF.mask_along_axis_iid(x.unsqueeze(1), width, 0.0, axis=3).squeeze(1)
    return x.transpose(1, 2)
