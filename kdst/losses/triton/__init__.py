"""Fused Triton kernels for the KD losses; :mod:`kdst.losses` dispatches to them on CUDA.

Importing this package needs ``triton``.  The kernels also run on CPU tensors under
Triton's interpreter (``TRITON_INTERPRET=1`` set before the import), which is how the
tests check them on machines without a GPU.
"""
