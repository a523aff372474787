"""Helpers shared by the Triton loss kernels: block sizes and the online log-sum-exp."""

from __future__ import annotations

import triton
import triton.language as tl


def block_size(length: int, largest: int, smallest: int = 16) -> int:
    """The power-of-two block that covers ``length`` in one step, capped at ``largest``."""
    return max(smallest, min(largest, triton.next_power_of_2(max(length, 1))))


def warps_for(block: int, per_thread: int) -> int:
    """num_warps giving each thread about ``per_thread`` elements of a ``block``-wide row (4..16).

    The kernels keep several float32 accumulators per element: with too few threads they
    take ~250 registers on sm_90, which leaves one block per SM and the loads unhidden;
    with these choices ptxas reports 25-95 registers and no spills (test/losses/triton_compile_check.py).
    """
    return max(4, min(16, block // (32 * per_thread)))


@triton.jit
def online_update(x, m_lane, l_lane):
    """Fold one block into per-lane running (max, sum of exp(x - max)); -inf lanes stay (−inf, 0)."""
    m_new = tl.maximum(m_lane, x)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    l_lane = l_lane * tl.exp(m_lane - m_safe) + tl.exp(x - m_safe)
    return m_new, l_lane


@triton.jit
def finish_lse(m_lane, l_lane):
    """Per-lane (max, sum) -> the row's log-sum-exp (-inf for an all -inf row)."""
    m = tl.max(m_lane, axis=0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    total = tl.sum(l_lane * tl.exp(m_lane - m_safe), axis=0)
    return m_safe + tl.log(total)


@triton.jit
def store_zero_row(row_ptr, V, BLOCK_V: tl.constexpr):
    """Zeros in the V entries at ``row_ptr`` (its own dtype): the gradient of a row that does not count."""
    cols = tl.arange(0, BLOCK_V)
    for start in range(0, V, BLOCK_V):
        tl.store(row_ptr + start + cols, tl.zeros([BLOCK_V], tl.float32).to(row_ptr.dtype.element_ty),
                 mask=start + cols < V)
