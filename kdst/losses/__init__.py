"""Distillation and sequence losses: PyTorch references, and fused Triton kernels on CUDA (kdst/losses/triton/)."""

from kdst.losses.rnnt import rnnt_kd_loss, rnnt_loss, rnnt_loss_and_kd, rnnt_loss_reference
from kdst.losses.word_kd import word_kd_loss

__all__ = ["rnnt_kd_loss", "rnnt_loss", "rnnt_loss_and_kd", "rnnt_loss_reference", "word_kd_loss"]
