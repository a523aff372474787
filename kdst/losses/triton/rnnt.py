"""Fused RNN-T loss and RNN-T KD: one pass over the V logits per lattice node, twice.

Same math and contracts as :mod:`kdst.losses.rnnt` (see its module docstring).

Forward, two kernels:

1. ``_lattice_stats_kernel``, one program per node (t, u): a single pass over the
   student's (and the teacher's) V logits gives the student's log-sum-exp and from it
   the two log-probabilities the transducer recursion needs, phi = log p(blank) and
   psi = log p(y_{u+1}); with a teacher, also the log-sum-exps at the temperature, the
   collapsed {label, blank, rest} terms (rest as its own running log-sum-exp, so it
   stays exact when label and blank hold nearly all the mass) and, in full mode, the
   KL itself (an online sum of p_T (z_T - z_S) / T, rescaled as the running maximum
   moves).  Padding nodes are not read.  The per-utterance KD losses are then a
   (B, T, U+1) sum in torch, weighted by the node weights where there are some.
2. ``_alpha_beta_kernel``, one program per utterance: the forward and backward
   variables row by row.  Within a row t the label edges make alpha a first-order
   recurrence in u, alpha(t, u) = a(u) ⊕ psi(t, u-1) ⊗ alpha(t, u-1) in the log
   semiring, which an associative scan solves in log(U) steps; beta is the same scan
   run backwards.

Backward, ``_lattice_grad_kernel``, one program per node: the edge posteriors from
alpha, beta and log P(y | x), and one more pass over the V logits that writes the
whole gradient, RNN-T and KD terms together, in the student's dtype; padding nodes
get zeros.  The KD term's upstream gradient comes per node (the utterance's times the
node's weight), so weighted and uniform node sums are one kernel.

``fused_lattice_occupancy`` runs the first two kernels alone on one model's logits:
the node occupancy exp(alpha + beta - log P(y | x)).  So RNN-T loss + KD read the student logits twice, the teacher once
(twice in full mode), and write one gradient; no (B, T, U+1, V) float32 tensor
exists at any point.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kdst.losses.triton.common import block_size, finish_lse, online_update, store_zero_row, warps_for

MAX_BLOCK_V = 2048
# Elements per thread: the stats pass keeps up to ten float32 accumulators per element.
STATS_PER_THREAD, GRAD_PER_THREAD = 4, 8
# Log-probability of an impossible lattice cell.  Finite so that sums of two stay finite
# and logaddexp of two impossible cells is no NaN.
NEG = tl.constexpr(-1e30)

KD_NONE, KD_FULL, KD_COLLAPSED = 0, 1, 2
KD_MODES = {None: KD_NONE, "full": KD_FULL, "collapsed": KD_COLLAPSED}


@triton.jit
def _log_semiring_combine(a_left, b_left, a_right, b_right):
    """Compose x -> a ⊕ b ⊗ x maps (left applied first) in the log semiring."""
    c = b_right + a_left
    high = tl.maximum(a_right, c)
    low = tl.minimum(a_right, c)
    return high + tl.log(1.0 + tl.exp(low - high)), b_left + b_right


@triton.jit
def _node_position(node, T, U1, t_len_ptr, u_len_ptr):
    u = node % U1
    bt = node // U1
    t = bt % T
    b = bt // T
    frames = tl.load(t_len_ptr + b).to(tl.int64)
    labels = tl.load(u_len_ptr + b).to(tl.int64)
    return b, t, u, frames, labels


@triton.jit
def _lattice_stats_kernel(s_ptr, z_ptr, y_ptr, t_len_ptr, u_len_ptr,
                          phi_ptr, psi_ptr, lse_ptr, lse_s_ptr, lse_t_ptr, shift_ptr, kl_ptr,
                          T, U1, V, s_sb, s_st, s_su, z_sb, z_st, z_su, y_sb, blank, inv_t,
                          WITH_RNNT: tl.constexpr, KD: tl.constexpr, SAME_T: tl.constexpr,
                          BLOCK_V: tl.constexpr):
    node = tl.program_id(0).to(tl.int64)
    b, t, u, frames, labels = _node_position(node, T, U1, t_len_ptr, u_len_ptr)
    if (t < frames) & (u <= labels):
        has_label = u < labels
        # At u = U_b there is no label: blank stands in, and every "label" term is dropped.
        y = tl.load(y_ptr + b * y_sb + u, mask=has_label, other=blank).to(tl.int64)
        s_row = s_ptr + b * s_sb + t * s_st + u * s_su
        z_row = z_ptr + b * z_sb + t * z_st + u * z_su
        cols = tl.arange(0, BLOCK_V)
        m1 = tl.full([BLOCK_V], float("-inf"), tl.float32)
        l1 = tl.zeros([BLOCK_V], tl.float32)
        m_s = tl.full([BLOCK_V], float("-inf"), tl.float32)
        l_s = tl.zeros([BLOCK_V], tl.float32)
        m_t = tl.full([BLOCK_V], float("-inf"), tl.float32)
        l_t = tl.zeros([BLOCK_V], tl.float32)
        m_rs = tl.full([BLOCK_V], float("-inf"), tl.float32)  # student "rest" class
        l_rs = tl.zeros([BLOCK_V], tl.float32)
        m_rt = tl.full([BLOCK_V], float("-inf"), tl.float32)  # teacher "rest" class
        l_rt = tl.zeros([BLOCK_V], tl.float32)
        cross = tl.zeros([BLOCK_V], tl.float32)  # sum exp(zt - m_t) (zt - zs), per lane
        for start in range(0, V, BLOCK_V):
            index = start + cols
            inside = index < V
            s = tl.load(s_row + index, mask=inside, other=float("-inf")).to(tl.float32)
            if WITH_RNNT:
                m1, l1 = online_update(s, m1, l1)
            if KD != 0:
                a = s * inv_t
                zt = tl.load(z_row + index, mask=inside, other=float("-inf")).to(tl.float32) * inv_t
                if (not SAME_T) or (not WITH_RNNT):  # else the temperature-1 sums serve
                    m_s, l_s = online_update(a, m_s, l_s)
                if KD == 1:
                    m_new = tl.maximum(m_t, zt)
                    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                    term = tl.where(zt > float("-inf"), tl.exp(zt - m_safe) * (zt - a), 0.0)
                    cross = cross * tl.exp(m_t - m_safe) + term
                    l_t = l_t * tl.exp(m_t - m_safe) + tl.exp(zt - m_safe)
                    m_t = m_new
                else:
                    m_t, l_t = online_update(zt, m_t, l_t)
                    rest = (index != blank) & (index != y)
                    m_rs, l_rs = online_update(tl.where(rest, a, float("-inf")), m_rs, l_rs)
                    m_rt, l_rt = online_update(tl.where(rest, zt, float("-inf")), m_rt, l_rt)
        out = b * T * U1 + t * U1 + u
        if WITH_RNNT:
            lse1 = finish_lse(m1, l1)
            tl.store(lse_ptr + out, lse1)
            tl.store(phi_ptr + out, tl.load(s_row + blank).to(tl.float32) - lse1)
            psi = tl.where(has_label, tl.load(s_row + y).to(tl.float32) - lse1, 0.0)
            tl.store(psi_ptr + out, psi)
        if KD != 0:
            if SAME_T and WITH_RNNT:
                lse_s = finish_lse(m1, l1)
            else:
                lse_s = finish_lse(m_s, l_s)
            lse_t = finish_lse(m_t, l_t)
            tl.store(lse_s_ptr + out, lse_s)
            tl.store(lse_t_ptr + out, lse_t)
            if KD == 1:
                m = tl.max(m_t, axis=0)
                m_safe = tl.where(m == float("-inf"), 0.0, m)
                expected = tl.sum(cross * tl.exp(m_t - m_safe), axis=0) / tl.sum(l_t * tl.exp(m_t - m_safe), axis=0)
                tl.store(kl_ptr + out, expected - lse_t + lse_s)
            else:
                # log q over (label, blank, rest) for student and teacher.
                s_label = tl.where(has_label, tl.load(s_row + y).to(tl.float32) * inv_t - lse_s, float("-inf"))
                t_label = tl.where(has_label, tl.load(z_row + y).to(tl.float32) * inv_t - lse_t, float("-inf"))
                s_blank = tl.load(s_row + blank).to(tl.float32) * inv_t - lse_s
                t_blank = tl.load(z_row + blank).to(tl.float32) * inv_t - lse_t
                s_rest = finish_lse(m_rs, l_rs) - lse_s
                t_rest = finish_lse(m_rt, l_rt) - lse_t
                kl = tl.where(t_label > float("-inf"), tl.exp(t_label) * (t_label - s_label), 0.0)
                kl += tl.where(t_blank > float("-inf"), tl.exp(t_blank) * (t_blank - s_blank), 0.0)
                kl += tl.where(t_rest > float("-inf"), tl.exp(t_rest) * (t_rest - s_rest), 0.0)
                tl.store(kl_ptr + out, kl)
                # log q_T(c) - log q_S(c), -inf where q_T(c) = 0: the backward's per-class factor.
                tl.store(shift_ptr + 3 * out, tl.where(t_label > float("-inf"), t_label - s_label, float("-inf")))
                tl.store(shift_ptr + 3 * out + 1, tl.where(t_blank > float("-inf"), t_blank - s_blank, float("-inf")))
                tl.store(shift_ptr + 3 * out + 2, tl.where(t_rest > float("-inf"), t_rest - s_rest, float("-inf")))


@triton.jit
def _alpha_beta_kernel(phi_ptr, psi_ptr, alpha_ptr, beta_ptr, log_like_ptr, t_len_ptr, u_len_ptr,
                       T, U1, BLOCK_U: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    frames = tl.load(t_len_ptr + b).to(tl.int64)
    labels = tl.load(u_len_ptr + b).to(tl.int64)
    us = tl.arange(0, BLOCK_U)
    on_row = us <= labels
    base = b * T * U1
    # Row t: alpha(t, u) = [alpha(t-1, u) + phi(t-1, u)] ⊕ psi(t, u-1) ⊗ alpha(t, u-1).
    enter = tl.where(us == 0, 0.0, NEG)
    alpha = tl.zeros([BLOCK_U], tl.float32)
    for t in range(0, frames):
        if t > 0:
            phi_prev = tl.load(phi_ptr + base + (t - 1) * U1 + us, mask=on_row, other=NEG)
            enter = tl.where(on_row, alpha + phi_prev, NEG)
        step = tl.load(psi_ptr + base + t * U1 + us - 1, mask=on_row & (us >= 1), other=NEG)
        alpha, _ = tl.associative_scan((enter, step), 0, _log_semiring_combine)
        tl.store(alpha_ptr + base + t * U1 + us, alpha, mask=on_row)
    last_phi = tl.load(phi_ptr + base + (frames - 1) * U1 + labels)
    tl.store(log_like_ptr + b, tl.sum(tl.where(us == labels, alpha, 0.0), axis=0) + last_phi)
    # beta(t, u) = [phi(t, u) + beta(t+1, u)] ⊕ psi(t, u) ⊗ beta(t, u+1), with beta(T_b, U_b) = 0.
    beta = tl.where(us == labels, 0.0, NEG)
    for i in range(0, frames):
        t = frames - 1 - i
        phi = tl.load(phi_ptr + base + t * U1 + us, mask=on_row, other=NEG)
        enter = tl.where(on_row, phi + beta, NEG)
        step = tl.load(psi_ptr + base + t * U1 + us, mask=us < labels, other=NEG)
        beta, _ = tl.associative_scan((enter, step), 0, _log_semiring_combine, reverse=True)
        tl.store(beta_ptr + base + t * U1 + us, beta, mask=on_row)


@triton.jit
def _lattice_grad_kernel(s_ptr, z_ptr, y_ptr, t_len_ptr, u_len_ptr, grad_ptr,
                         phi_ptr, psi_ptr, lse_ptr, alpha_ptr, beta_ptr, log_like_ptr, g_nll_ptr,
                         lse_s_ptr, lse_t_ptr, shift_ptr, g_kd_ptr,
                         T, U1, V, s_sb, s_st, s_su, z_sb, z_st, z_su, g_sb, g_st, g_su, y_sb, blank, inv_t,
                         WITH_RNNT: tl.constexpr, KD: tl.constexpr, BLOCK_V: tl.constexpr):
    node = tl.program_id(0).to(tl.int64)
    b, t, u, frames, labels = _node_position(node, T, U1, t_len_ptr, u_len_ptr)
    cols = tl.arange(0, BLOCK_V)
    g_row = grad_ptr + b * g_sb + t * g_st + u * g_su
    if (t < frames) & (u <= labels):
        has_label = u < labels
        y = tl.load(y_ptr + b * y_sb + u, mask=has_label, other=blank).to(tl.int64)
        s_row = s_ptr + b * s_sb + t * s_st + u * s_su
        z_row = z_ptr + b * z_sb + t * z_st + u * z_su
        here = b * T * U1 + t * U1 + u
        g_phi = 0.0
        g_psi = 0.0
        lse1 = 0.0
        if WITH_RNNT:
            # d(-log P)/d phi and d psi: minus the posteriors of the blank and label edges.
            lse1 = tl.load(lse_ptr + here)
            log_like = tl.load(log_like_ptr + b)
            g_nll = tl.load(g_nll_ptr + b)
            alpha = tl.load(alpha_ptr + here)
            below = tl.load(beta_ptr + here + U1, mask=t + 1 < frames, other=NEG)
            below = tl.where((t + 1 == frames) & (u == labels), 0.0, below)
            right = tl.load(beta_ptr + here + 1, mask=has_label, other=NEG)
            g_phi = -g_nll * tl.exp(alpha + tl.load(phi_ptr + here) + below - log_like)
            g_psi = tl.where(has_label, -g_nll * tl.exp(alpha + tl.load(psi_ptr + here) + right - log_like), 0.0)
        lse_s = 0.0
        lse_t = 0.0
        g_kd = 0.0
        shift_label = 0.0
        shift_blank = 0.0
        shift_rest = 0.0
        if KD != 0:
            lse_s = tl.load(lse_s_ptr + here)
            lse_t = tl.load(lse_t_ptr + here)
            g_kd = tl.load(g_kd_ptr + here) * inv_t  # per node: the utterance's gradient x the node weight
            if KD == 2:
                shift_label = tl.load(shift_ptr + 3 * here)
                shift_blank = tl.load(shift_ptr + 3 * here + 1)
                shift_rest = tl.load(shift_ptr + 3 * here + 2)
        for start in range(0, V, BLOCK_V):
            index = start + cols
            inside = index < V
            s = tl.load(s_row + index, mask=inside, other=float("-inf")).to(tl.float32)
            grad = tl.zeros([BLOCK_V], tl.float32)
            if WITH_RNNT:
                # d/dz of g_phi log p(blank) + g_psi log p(y): onehot terms minus p (g_phi + g_psi).
                grad = -tl.exp(s - lse1) * (g_phi + g_psi)
                grad += tl.where(index == blank, g_phi, 0.0)
                grad += tl.where(has_label & (index == y), g_psi, 0.0)
            if KD != 0:
                log_ps = s * inv_t - lse_s
                if KD == 1:
                    zt = tl.load(z_row + index, mask=inside, other=float("-inf")).to(tl.float32) * inv_t
                    p_t = tl.exp(zt - lse_t)
                    grad += g_kd * (tl.exp(log_ps) - tl.where(p_t > 0, p_t, 0.0))
                else:
                    shift = tl.where(index == blank, shift_blank,
                                     tl.where(has_label & (index == y), shift_label, shift_rest))
                    grad += g_kd * (tl.exp(log_ps) - tl.exp(log_ps + shift))
            tl.store(g_row + index, grad.to(grad_ptr.dtype.element_ty), mask=inside)
    else:
        store_zero_row(g_row, V, BLOCK_V)


def lattice_block(vocab: int) -> int:
    """The vocabulary block with the least padding among 512..MAX_BLOCK_V (ties: the larger)."""
    best = min(range(9, 12), key=lambda p: (-(-vocab // (1 << p)) * (1 << p), -p))
    return min(block_size(vocab, 1 << best, smallest=16), MAX_BLOCK_V)


def _last_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


class _FusedLattice(torch.autograd.Function):
    """(nll (B,), kd (B,)) float32 from one stats pass; one gradient pass in backward."""

    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor | None, targets: torch.Tensor,
                t_len: torch.Tensor, u_len: torch.Tensor, with_rnnt: bool, kd: int, temperature: float,
                blank: int, block_v: int | None, node_weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        student = _last_contiguous(student)
        teacher = _last_contiguous(teacher) if teacher is not None else student  # a dummy pointer without KD
        # U = 0 still needs a valid pointer; the kernels read a row with stride(1) == 1.
        targets = targets.contiguous() if targets.shape[1] else targets.new_zeros((targets.shape[0], 1))
        bsz, frames, u1, vocab = student.shape
        f32 = dict(dtype=torch.float32, device=student.device)
        nodes = (bsz, frames, u1)
        phi, psi, lse = (torch.zeros(nodes, **f32) for _ in range(3)) if with_rnnt else (student.new_zeros(0),) * 3
        if kd:
            lse_s, lse_t, kl = (torch.zeros(nodes, **f32) for _ in range(3))
            shift = torch.zeros(nodes + (3,), **f32) if kd == KD_COLLAPSED else lse_s
        else:
            lse_s = lse_t = kl = shift = torch.zeros(0, **f32)
        block = block_v or lattice_block(vocab)
        grid = (bsz * frames * u1,)
        inv_t = 1.0 / temperature
        if grid[0]:
            _lattice_stats_kernel[grid](
                student, teacher, targets, t_len, u_len, phi, psi, lse, lse_s, lse_t, shift, kl,
                frames, u1, vocab, *student.stride()[:3], *teacher.stride()[:3], targets.stride(0), blank, inv_t,
                WITH_RNNT=with_rnnt, KD=kd, SAME_T=temperature == 1.0, BLOCK_V=block,
                num_warps=warps_for(block, STATS_PER_THREAD))
        nll = torch.zeros(bsz, **f32)
        alpha = beta = nll
        if with_rnnt and bsz:
            alpha, beta = torch.zeros(nodes, **f32), torch.zeros(nodes, **f32)
            log_like = torch.zeros(bsz, **f32)
            _alpha_beta_kernel[(bsz,)](phi, psi, alpha, beta, log_like, t_len, u_len, frames, u1,
                                       BLOCK_U=block_size(u1, 1 << 16, smallest=2))
            nll = -log_like
        if kd and node_weights is not None:
            # Padded entries of the weights are never read (kl is 0 there, but a weight may be NaN).
            node_weights = torch.where(_valid_nodes(t_len, u_len, frames, u1), node_weights.float(), 0.0)
            kl = kl * node_weights
        kd_loss = kl.sum(dim=(1, 2)) if kd else torch.zeros(bsz, **f32)
        ctx.save_for_backward(student, teacher if kd == KD_FULL else None, targets, t_len, u_len, phi, psi, lse,
                              alpha, beta, nll, lse_s, lse_t, shift, node_weights if kd else None)
        ctx.options = (with_rnnt, kd, inv_t, blank, block)
        return nll, kd_loss

    @staticmethod
    def backward(ctx, g_nll: torch.Tensor | None, g_kd: torch.Tensor | None):
        (student, teacher, targets, t_len, u_len, phi, psi, lse, alpha, beta, nll, lse_s, lse_t, shift,
         node_weights) = ctx.saved_tensors
        with_rnnt, kd, inv_t, blank, block = ctx.options
        if not ctx.needs_input_grad[0]:
            return (None,) * 11
        bsz, frames, u1, vocab = student.shape
        zeros = torch.zeros(bsz, dtype=torch.float32, device=student.device)
        g_nll = zeros if g_nll is None else g_nll.float().contiguous()
        g_kd = zeros if g_kd is None else g_kd.float()
        g_kd = g_kd[:, None, None] * node_weights if node_weights is not None else g_kd[:, None, None]
        g_kd = g_kd.expand(bsz, frames, u1).contiguous()
        teacher = teacher if teacher is not None else student
        grad = torch.empty_like(student)
        grid = (bsz * frames * u1,)
        if grid[0]:
            _lattice_grad_kernel[grid](
                student, teacher, targets, t_len, u_len, grad, phi, psi, lse, alpha, beta, -nll, g_nll,
                lse_s, lse_t, shift, g_kd, frames, u1, vocab, *student.stride()[:3], *teacher.stride()[:3],
                *grad.stride()[:3], targets.stride(0), blank, inv_t,
                WITH_RNNT=with_rnnt, KD=kd, BLOCK_V=block, num_warps=warps_for(block, GRAD_PER_THREAD))
        return (grad,) + (None,) * 10


def _valid_nodes(t_len: torch.Tensor, u_len: torch.Tensor, frames: int, u1: int) -> torch.Tensor:
    t_ok = torch.arange(frames, device=t_len.device)[None, :, None] < t_len[:, None, None]
    return t_ok & (torch.arange(u1, device=t_len.device)[None, None, :] <= u_len[:, None, None])


def fused_lattice_losses(student: torch.Tensor, teacher: torch.Tensor | None, targets: torch.Tensor,
                         logit_lengths: torch.Tensor, target_lengths: torch.Tensor, *, with_rnnt: bool,
                         kd_mode: str | None, temperature: float = 1.0, blank: int = 0,
                         block_v: int | None = None,
                         node_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-utterance (RNN-T loss, KD loss), float32 (B,) each; inputs already validated.

    ``with_rnnt=False`` skips the recursion (its output is then zeros), ``kd_mode=None``
    the teacher (zeros).  ``node_weights`` (B, T, U+1), constants, weigh each node's KL
    (None: 1 each).  ``block_v`` forces the vocabulary block (a power of two), so
    tests can run the multi-block loops on tiny vocabularies.
    """
    device = student.device
    t_len = logit_lengths.to(device=device, dtype=torch.int32).contiguous()
    u_len = target_lengths.to(device=device, dtype=torch.int32).contiguous()
    teacher = teacher.detach() if teacher is not None else None
    weights = node_weights.detach().to(device) if node_weights is not None else None
    return _FusedLattice.apply(student, teacher, targets.to(device), t_len, u_len, with_rnnt, KD_MODES[kd_mode],
                               float(temperature), int(blank), block_v, weights)


def fused_lattice_occupancy(logits: torch.Tensor, targets: torch.Tensor, logit_lengths: torch.Tensor,
                            target_lengths: torch.Tensor, *, blank: int = 0,
                            block_v: int | None = None) -> torch.Tensor:
    """(B, T, U+1) float32 node occupancy exp(alpha + beta - log P(y | x)), 0 on padded nodes;
    inputs already validated (kdst.losses.rnnt.lattice_occupancy)."""
    logits = _last_contiguous(logits.detach())
    device = logits.device
    t_len = logit_lengths.to(device=device, dtype=torch.int32).contiguous()
    u_len = target_lengths.to(device=device, dtype=torch.int32).contiguous()
    targets = targets.to(device)
    targets = targets.contiguous() if targets.shape[1] else targets.new_zeros((targets.shape[0], 1))
    bsz, frames, u1, vocab = logits.shape
    f32 = dict(dtype=torch.float32, device=device)
    nodes = (bsz, frames, u1)
    if not bsz * frames * u1:
        return torch.zeros(nodes, **f32)
    phi, psi, lse, alpha, beta = (torch.zeros(nodes, **f32) for _ in range(5))
    unused = torch.zeros(0, **f32)
    block = block_v or lattice_block(vocab)
    _lattice_stats_kernel[(bsz * frames * u1,)](
        logits, logits, targets, t_len, u_len, phi, psi, lse, unused, unused, unused, unused,
        frames, u1, vocab, *logits.stride()[:3], *logits.stride()[:3], targets.stride(0), blank, 1.0,
        WITH_RNNT=True, KD=KD_NONE, SAME_T=True, BLOCK_V=block, num_warps=warps_for(block, STATS_PER_THREAD))
    log_like = torch.zeros(bsz, **f32)
    _alpha_beta_kernel[(bsz,)](phi, psi, alpha, beta, log_like, t_len, u_len, frames, u1,
                               BLOCK_U=block_size(u1, 1 << 16, smallest=2))
    occupancy = (alpha + beta - log_like[:, None, None]).exp()
    return torch.where(_valid_nodes(t_len, u_len, frames, u1), occupancy, 0.0)
