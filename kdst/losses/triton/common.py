"""Small helpers shared by the Triton loss kernels."""

from __future__ import annotations

import triton


def block_size(length: int, largest: int, smallest: int = 16) -> int:
    """The power-of-two block that covers ``length`` in one step, capped at ``largest``."""
    return max(smallest, min(largest, triton.next_power_of_2(max(length, 1))))

