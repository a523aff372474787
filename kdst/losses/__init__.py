"""Distillation and sequence losses: PyTorch references (Triton kernels later under kdst/losses/triton/)."""

from kdst.losses.word_kd import word_kd_loss

__all__ = ["word_kd_loss"]
