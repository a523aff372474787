"""Fused word-level KD: one Triton program per token, the gradient written during the forward.

Same math and contract as :func:`kdst.losses.word_kd.word_kd_loss` (see its module
docstring).  Per row the kernel makes two passes over the V logits:

1. an online softmax: per-lane running maxima and sums for the student (and, in full
   mode, the teacher), reduced to a log-sum-exp at the end;
2. with the log-sum-exps known, the KL terms and the gradient ``(p_S - p_T) / T``,
   written in the student's dtype.

In top-k mode the teacher is the k stored logits, read once; the student still gets
its log-sum-exp over the whole vocabulary.  The gradient row is first written as
``p_S / T`` and then corrected at the k stored indices.  A row may hold an id more than
once (a sampled cache pads its empty slots with id 0): every slot of an id writes the
same value, ``p_S - (the teacher mass of all its slots)``, so which store lands last
does not matter, and the result is the reference's (whose gather adds the slots up).

With ``rest_log_mass`` (top-k plus the rest) the distributions have k + 1 classes: the
k entries, with the teacher's true probabilities ``(1 - q_r) softmax(t)``, and a rest
class holding the teacher's remaining mass ``q_r`` and the student's ``p_S(rest) =
sum of p_S outside the k ids``, a log-sum-exp over the non-stored columns kept in the
first pass beside the full one (membership: one comparison per stored id and column).
The gradient outside the k ids is ``p_S(i) - q_r p_S(i) / p_S(rest)``, computed as
``p_S(i) - q_r exp(s_i - lse_rest)``, which stays finite when ``p_S(rest)`` underflows.

Nothing of size (N, V) is allocated besides the gradient itself; the backward only
scales it by the incoming per-row gradient, in place.  Masked rows are never read:
they get a loss of 0 and a zero gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kdst.losses.triton.common import block_size, finish_lse, online_update, store_zero_row, warps_for

# Upper bound on BLOCK_V: two float32 accumulators per lane and per distribution
# must stay in registers.
MAX_BLOCK_V = 2048
ELEMENTS_PER_THREAD = 8


@triton.jit
def _word_kd_full_kernel(student_ptr, teacher_ptr, grad_ptr, loss_ptr, mask_ptr,
                         V, stride_s, stride_t, stride_g, inv_t,
                         HAS_MASK: tl.constexpr, WRITE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_V)
    keep = True
    if HAS_MASK:
        keep = tl.load(mask_ptr + row) != 0
    if keep:
        s_row = student_ptr + row * stride_s
        t_row = teacher_ptr + row * stride_t
        m_s = tl.full([BLOCK_V], float("-inf"), tl.float32)
        l_s = tl.zeros([BLOCK_V], tl.float32)
        m_t = tl.full([BLOCK_V], float("-inf"), tl.float32)
        l_t = tl.zeros([BLOCK_V], tl.float32)
        for start in range(0, V, BLOCK_V):
            inside = start + cols < V
            s = tl.load(s_row + start + cols, mask=inside, other=float("-inf")).to(tl.float32) * inv_t
            t = tl.load(t_row + start + cols, mask=inside, other=float("-inf")).to(tl.float32) * inv_t
            m_s, l_s = online_update(s, m_s, l_s)
            m_t, l_t = online_update(t, m_t, l_t)
        lse_s = finish_lse(m_s, l_s)
        lse_t = finish_lse(m_t, l_t)
        # An all -inf (or NaN) teacher row has no distribution: it adds 0 and, as in the
        # reference, d/dz of -sum p_T log p_S = p_S * sum(p_T) - p_T is then 0.
        teacher_mass = tl.where((lse_t > float("-inf")) & (lse_t < float("inf")), 1.0, 0.0)
        kl = tl.zeros([BLOCK_V], tl.float32)
        for start in range(0, V, BLOCK_V):
            inside = start + cols < V
            s = tl.load(s_row + start + cols, mask=inside, other=float("-inf")).to(tl.float32) * inv_t
            t = tl.load(t_row + start + cols, mask=inside, other=float("-inf")).to(tl.float32) * inv_t
            log_pt = t - lse_t
            p_t = tl.exp(log_pt)
            present = p_t > 0  # also False for NaN: p_T = 0 adds exactly 0
            log_ps = s - lse_s
            kl += tl.where(present, p_t * (log_pt - log_ps), 0.0)
            if WRITE_GRAD:
                grad = (tl.exp(log_ps) * teacher_mass - tl.where(present, p_t, 0.0)) * inv_t
                tl.store(grad_ptr + row * stride_g + start + cols, grad.to(grad_ptr.dtype.element_ty),
                         mask=inside)
        tl.store(loss_ptr + row, tl.sum(kl, axis=0))
    else:
        tl.store(loss_ptr + row, 0.0)
        if WRITE_GRAD:
            store_zero_row(grad_ptr + row * stride_g, V, BLOCK_V)


@triton.jit
def _word_kd_topk_kernel(student_ptr, index_ptr, topk_ptr, rest_ptr, grad_ptr, loss_ptr, mask_ptr,
                         V, K, stride_s, stride_i, stride_k, stride_g, inv_t,
                         HAS_MASK: tl.constexpr, HAS_REST: tl.constexpr, WRITE_GRAD: tl.constexpr,
                         BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_V)
    keep = True
    if HAS_MASK:
        keep = tl.load(mask_ptr + row) != 0
    if keep:
        s_row = student_ptr + row * stride_s
        i_row = index_ptr + row * stride_i
        m_s = tl.full([BLOCK_V], float("-inf"), tl.float32)
        l_s = tl.zeros([BLOCK_V], tl.float32)
        m_r = tl.full([BLOCK_V], float("-inf"), tl.float32)  # the student outside the k ids (HAS_REST)
        l_r = tl.zeros([BLOCK_V], tl.float32)
        for start in range(0, V, BLOCK_V):
            s = tl.load(s_row + start + cols, mask=start + cols < V, other=float("-inf")).to(tl.float32) * inv_t
            m_s, l_s = online_update(s, m_s, l_s)
            if HAS_REST:
                stored = cols < 0
                for j in range(0, K):
                    stored = stored | (start + cols == tl.load(i_row + j))
                m_r, l_r = online_update(tl.where(stored, float("-inf"), s), m_r, l_r)
        lse_s = finish_lse(m_s, l_s)

        # The teacher: the softmax of its k stored logits (renormalised over them) ...
        ks = tl.arange(0, BLOCK_K)
        in_k = ks < K
        index = tl.load(i_row + ks, mask=in_k, other=0).to(tl.int64)
        t = tl.load(topk_ptr + row * stride_k + ks, mask=in_k, other=float("-inf")).to(tl.float32) * inv_t
        t_max = tl.max(t, axis=0)
        t_shift = tl.where(t_max == float("-inf"), 0.0, t_max)
        lse_t = t_shift + tl.log(tl.sum(tl.exp(t - t_shift), axis=0))
        t_finite = (lse_t > float("-inf")) & (lse_t < float("inf"))
        log_pt = t - lse_t
        log_ps_k = tl.load(s_row + index, mask=in_k, other=0.0).to(tl.float32) * inv_t - lse_s
        if HAS_REST:
            # ... times the mass the top k hold, with the rest as one more class.
            log_q_r = tl.load(rest_ptr + row).to(tl.float32)
            q_r = tl.exp(log_q_r)
            log_pt += tl.log(1.0 - q_r)
            lse_r = finish_lse(m_r, l_r)
            has_rest = q_r > 0
            rest_kl = tl.where(has_rest, q_r * (log_q_r - (lse_r - lse_s)), 0.0)
            teacher_mass = tl.where(t_finite, 1.0 - q_r, 0.0) + tl.where(has_rest, q_r, 0.0)
        else:
            rest_kl = 0.0
            teacher_mass = tl.where(t_finite, 1.0, 0.0)
        p_t = tl.exp(log_pt)
        present = in_k & (p_t > 0)
        kl = tl.sum(tl.where(present, p_t * (log_pt - log_ps_k), 0.0), axis=0) + rest_kl
        tl.store(loss_ptr + row, kl)

        if WRITE_GRAD:
            g_row = grad_ptr + row * stride_g
            for start in range(0, V, BLOCK_V):
                inside = start + cols < V
                s = tl.load(s_row + start + cols, mask=inside, other=float("-inf")).to(tl.float32) * inv_t
                grad = tl.exp(s - lse_s) * teacher_mass
                if HAS_REST:  # the stored columns get overwritten below
                    grad -= tl.where(has_rest, q_r * tl.exp(s - lse_r), 0.0)
                tl.store(g_row + start + cols, (grad * inv_t).to(grad_ptr.dtype.element_ty), mask=inside)
            # The row above must be in memory before the k entries are overwritten.
            tl.debug_barrier()
            # The teacher mass at each slot's id, summed over all slots holding that id: slots that
            # repeat an id then store the same value.
            p_here = tl.where(present, p_t, 0.0)
            same_id = (index[:, None] == index[None, :]) & in_k[None, :]
            p_at_id = tl.sum(tl.where(same_id, p_here[None, :], 0.0), axis=1)
            grad_k = (tl.exp(log_ps_k) * teacher_mass - p_at_id) * inv_t
            tl.store(g_row + index, grad_k.to(grad_ptr.dtype.element_ty), mask=in_k)
    else:
        tl.store(loss_ptr + row, 0.0)
        if WRITE_GRAD:
            store_zero_row(grad_ptr + row * stride_g, V, BLOCK_V)


def _rows_last_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


class _WordKD(torch.autograd.Function):
    """(N,) per-token KL; the (N, V) student gradient is made in the forward and scaled in backward."""

    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor | None, topk_indices: torch.Tensor | None,
                topk_logits: torch.Tensor | None, rest_log_mass: torch.Tensor | None, temperature: float,
                mask: torch.Tensor | None, block_v: int | None) -> torch.Tensor:
        student = _rows_last_contiguous(student)
        n, v = student.shape
        want_grad = ctx.needs_input_grad[0]
        loss = torch.empty(n, dtype=torch.float32, device=student.device)
        # A dummy pointer when there is no gradient: the kernel never touches it.
        grad = torch.empty_like(student) if want_grad else loss
        mask_arg = mask.view(torch.uint8) if mask is not None else loss
        block = block_v or block_size(v, MAX_BLOCK_V)
        grid = (n,)
        if n:
            if teacher is not None:
                teacher = _rows_last_contiguous(teacher)
                _word_kd_full_kernel[grid](
                    student, teacher, grad, loss, mask_arg, v, student.stride(0), teacher.stride(0),
                    grad.stride(0) if want_grad else 0, 1.0 / temperature,
                    HAS_MASK=mask is not None, WRITE_GRAD=want_grad, BLOCK_V=block,
                    num_warps=warps_for(block, ELEMENTS_PER_THREAD))
            else:
                index, topk = _rows_last_contiguous(topk_indices), _rows_last_contiguous(topk_logits)
                k = index.shape[1]
                rest = rest_log_mass.float().contiguous() if rest_log_mass is not None else loss
                _word_kd_topk_kernel[grid](
                    student, index, topk, rest, grad, loss, mask_arg, v, k, student.stride(0), index.stride(0),
                    topk.stride(0), grad.stride(0) if want_grad else 0, 1.0 / temperature,
                    HAS_MASK=mask is not None, HAS_REST=rest_log_mass is not None, WRITE_GRAD=want_grad, BLOCK_V=block,
                    BLOCK_K=triton.next_power_of_2(k), num_warps=warps_for(block, ELEMENTS_PER_THREAD))
        ctx.save_for_backward(grad if want_grad else None)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        (grad,) = ctx.saved_tensors
        if grad is None:
            return (None,) * 8
        # In place: the only (N, V) buffer stays the one made in the forward.  The product
        # is computed in float32 and rounded once to the student's dtype.  A second backward
        # (retain_graph) is refused by autograd, which sees the saved tensor modified.
        grad.mul_(grad_loss.to(torch.float32)[:, None])
        return (grad,) + (None,) * 7


def word_kd_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                      topk_indices: torch.Tensor | None, topk_logits: torch.Tensor | None,
                      temperature: float, mask: torch.Tensor | None, *, rest_log_mass: torch.Tensor | None = None,
                      block_v: int | None = None) -> torch.Tensor:
    """(N,) float32 per-token KL from the Triton kernel; inputs already validated by word_kd_loss.

    ``block_v`` forces the vocabulary block (a power of two); tests use small ones so
    that the multi-block loops run on tiny vocabularies.
    """
    if teacher_logits is not None:
        teacher_logits = teacher_logits.detach()
    else:
        topk_logits = topk_logits.detach()
    if rest_log_mass is not None:
        rest_log_mass = rest_log_mass.detach()
    return _WordKD.apply(student_logits, teacher_logits, topk_indices, topk_logits, rest_log_mass,
                         float(temperature), mask, block_v)
