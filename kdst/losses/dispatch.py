"""Whether a loss runs its fused Triton kernel or its PyTorch reference.

The kernels run on CUDA tensors in float32, bfloat16 or float16; float64 (used by
gradient checks) and every other device take the reference.  ``KDST_TRITON=0``
turns the kernels off, e.g. to compare against the reference on a GPU.
"""

from __future__ import annotations

import functools
import os

import torch

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@functools.cache
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when every float tensor given is a CUDA tensor of a kernel dtype and Triton is usable."""
    if os.environ.get("KDST_TRITON", "1") == "0":
        return False
    floats = [t for t in tensors if t is not None and t.is_floating_point()]
    if not floats or not all(t.is_cuda and t.dtype in KERNEL_DTYPES for t in floats):
        return False
    return _triton_importable()
