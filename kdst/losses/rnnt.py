"""RNN-T loss and RNN-T knowledge distillation over the (T, U+1) output lattice.

Notation.  Utterance ``b`` has ``T_b`` encoder frames and ``U_b`` target labels
``y_1 .. y_{U_b}``; the joiner gives logits ``z[b, t, u]`` (V entries) at every
lattice node ``(t, u)``, ``0 <= t < T_b``, ``0 <= u <= U_b``.  Nodes outside
that rectangle are padding: they add nothing and get a zero gradient.

RNN-T loss (Graves 2012).  With ``log p = log_softmax(z[b, t, u])``::

    phi(t, u) = log p[blank]                 blank: (t, u) -> (t + 1, u)
    psi(t, u) = log p[y_{u+1}],  u < U_b     label: (t, u) -> (t, u + 1)

    alpha(0, 0) = 0
    alpha(t, u) = logaddexp(alpha(t - 1, u) + phi(t - 1, u),  alpha(t, u - 1) + psi(t, u - 1))
    loss_b      = -(alpha(T_b - 1, U_b) + phi(T_b - 1, U_b))

i.e. ``-log P(y | x)`` summed over every monotonic alignment, each of which ends
with a blank emitted at ``(T_b - 1, U_b)``.  ``T_b >= 1`` is required (with no
frame there is no alignment); ``U_b = 0`` is allowed (the all-blank path).

RNN-T KD.  At every valid node, ``p_S = softmax(z_S / T)`` and
``p_T = softmax(z_T / T)`` at temperature ``T``::

    full:       kl(t, u) = sum_v p_T(v) (log p_T(v) - log p_S(v))
    collapsed:  kl(t, u) = sum_c q_T(c) (log q_T(c) - log q_S(c))
                c in {y_{u+1}, blank, rest} for u < U_b,  {blank, rest} for u = U_b,
                q(y_{u+1}) = p(y_{u+1}),  q(blank) = p(blank),  q(rest) = 1 - q(y_{u+1}) - q(blank)
    loss_b    = sum over the valid nodes (t, u) of w(t, u) kl(t, u)

with node weights ``w = 1`` (the uniform sum of the papers) unless ``node_weights`` are given:
constants (no gradient), e.g. the teacher's alignment occupancy below.

The collapsed form is Panchapagesan et al. (2021), "Efficient knowledge
distillation for RNN-Transducer models".  ``log q(rest)`` is a log-sum-exp
over the remaining classes (never ``log(1 - ...)``), so it stays exact when
the label and blank hold nearly all of the mass.  Classes with ``q_T = 0``
contribute exactly 0.  No ``T**2`` factor is applied; callers that want the
usual gradient-scale correction multiply by it themselves.  The gradient with
respect to the student logits of one node is ``(p_S - p_T) / T`` (full) and
``(p_S(v) / T) (1 - q_T(c(v)) / q_S(c(v)))`` with ``c(v)`` the class of ``v``
(collapsed); only the student receives a gradient.

Reductions (both losses): "none" gives the (B,) per-utterance losses, "sum"
their sum, "mean" their mean over the batch (not over nodes or labels).

Node occupancy.  ``lattice_occupancy`` gives, for one model's logits and the
targets, the posterior probability that an alignment passes through node (t, u)::

    gamma(t, u) = alpha(t, u) beta(t, u) / P(y | x)

with beta(t, u) the probability of finishing from (t, u), the emission at (t, u)
included.  Every alignment leaves each node it visits by exactly one edge (blank,
label, or the final blank), so gamma is also the posterior of the node's blank edge
plus that of its label edge, and sum_{t,u} gamma(t, u) = T_b + U_b (the nodes of one
alignment).  ``rnnt_kd_loss(..., node_weights=lattice_occupancy(teacher_logits, ...))``
weighs each node's KL by how likely the teacher's alignments pass there.

Normalisers.  A training loss divides the batch's KD sum by one of (``kd_normalizer``)::

    nodes       sum_b sum_{t,u} w(t, u): the lattice nodes, sum_b T_b (U_b + 1) for w = 1
    tokens      sum_b U_b, the target tokens (the RNN-T term's own normaliser)
    utterances  B

Memory.  The references never hold a (B, T, U+1, V) float32 intermediate:
they walk the valid nodes one utterance and at most ``_CHUNK_ELEMENTS``
logits at a time (padding is never even read).  ``rnnt_kd_loss`` computes its
gradient in that same pass and keeps it, in the student's dtype, until
backward (as torchaudio's RNN-T loss does); ``rnnt_loss_reference`` keeps only
(B, T, U+1) tensors and recomputes the softmax block by block in backward.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterator

import torch

from kdst.losses.dispatch import use_triton
from kdst.losses.word_kd import REDUCTIONS, _compute_dtype

MODES = ("full", "collapsed")
NORMALIZERS = ("nodes", "tokens", "utterances")

# Upper bound on the logits one block of the reference touches at once, in elements
# (16 MiB in float32); every block-sized temporary is at most this big.
_CHUNK_ELEMENTS = 1 << 22

# Log-probability of an impossible lattice cell.  Finite on purpose: logaddexp(-inf, -inf)
# has a NaN gradient, which would leak into the logits' gradient.
_NEG = -1e30


# ---------------------------------------------------------------- helpers


def _check_lattice(logits: torch.Tensor, targets: torch.Tensor, logit_lengths: torch.Tensor,
                   target_lengths: torch.Tensor, blank: int, reduction: str, *, name: str,
                   min_frames: int) -> tuple[list[int], list[int]]:
    """Validate one lattice; return the lengths as Python lists (one host sync)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if logits.dim() != 4:
        raise ValueError(f"{name} must be (B, T, U+1, V), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {logits.dtype}")
    b, t, u1, v = logits.shape
    if targets.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"targets must be int32 or int64, got {targets.dtype}")
    if targets.shape != (b, u1 - 1):
        raise ValueError(f"targets must be (B, U) = ({b}, {u1 - 1}) for {name} {tuple(logits.shape)} "
                         f"(B, T, U+1, V), got shape {tuple(targets.shape)}")
    for what, lengths in (("logit_lengths", logit_lengths), ("target_lengths", target_lengths)):
        if lengths.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{what} must be int32 or int64, got {lengths.dtype}")
        if lengths.shape != (b,):
            raise ValueError(f"{what} must be ({b},) for {name} {tuple(logits.shape)}, "
                             f"got shape {tuple(lengths.shape)}")
    if isinstance(blank, bool) or not isinstance(blank, numbers.Integral) or not 0 <= blank < v:
        raise ValueError(f"blank must be an int in [0, V = {v}), got {blank!r}")

    t_len, u_len = logit_lengths.tolist(), target_lengths.tolist()
    if any(not min_frames <= x <= t for x in t_len):
        raise ValueError(f"logit_lengths must be in [{min_frames}, T = {t}], got {t_len}")
    if any(not 0 <= x <= u1 - 1 for x in u_len):
        raise ValueError(f"target_lengths must be in [0, U = {u1 - 1}], got {u_len}")
    valid = torch.arange(u1 - 1, device=targets.device) < target_lengths.to(targets.device)[:, None]
    labels = targets[valid]
    if labels.numel():
        low, high, has_blank = torch.stack([labels.min(), labels.max(), (labels == blank).any()]).tolist()
        if low < 0 or high >= v:
            raise ValueError(f"targets within target_lengths must be in [0, V = {v}), got values in [{low}, {high}]")
        if has_blank:
            raise ValueError(f"targets within target_lengths contain the blank index {blank}; "
                             "a transcript must not contain blank")
    return t_len, u_len


def _blocks(t_len: list[int], u_len: list[int], vocab: int) -> Iterator[tuple[int, int, int, int]]:
    """(b, t0, t1, U_b) blocks tiling every utterance's valid nodes: <= _CHUNK_ELEMENTS logits, or one frame."""
    for b, (frames, labels) in enumerate(zip(t_len, u_len)):
        rows = max(1, _CHUNK_ELEMENTS // ((labels + 1) * vocab))
        for t0 in range(0, frames, rows):
            yield b, t0, min(t0 + rows, frames), labels


def _node_labels(targets: torch.Tensor, b: int, labels: int, blank: int) -> torch.Tensor:
    """(U_b + 1,) int64: y_{u+1} for u < U_b and blank (a placeholder) at u = U_b."""
    return torch.cat([targets[b, :labels].long(), targets.new_full((1,), blank, dtype=torch.long)])


def _reduce(per_utterance: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_utterance
    total = per_utterance.sum()
    return total if reduction == "sum" else total / max(per_utterance.shape[0], 1)


# ---------------------------------------------------------------- RNN-T loss, reference


class _LatticeLogProbs(torch.autograd.Function):
    """(B, T, U+1, V) logits -> phi, psi (B, T, U+1) in ``dtype``; 0 (and no gradient) off the valid nodes.

    Backward recomputes the softmax block by block instead of saving a full log_softmax.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, t_len: list[int], u_len: list[int],
                blank: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, u1, v = logits.shape
        phi = logits.new_zeros((b, t, u1), dtype=dtype)
        psi = logits.new_zeros((b, t, u1), dtype=dtype)
        lse = logits.new_zeros((b, t, u1), dtype=dtype)
        for i, t0, t1, labels in _blocks(t_len, u_len, v):
            z = logits[i, t0:t1, :labels + 1].to(dtype)
            norm = torch.logsumexp(z, dim=-1)
            lse[i, t0:t1, :labels + 1] = norm
            phi[i, t0:t1, :labels + 1] = z[..., blank] - norm
            y = targets[i, :labels].long().view(1, labels, 1).expand(t1 - t0, labels, 1)
            psi[i, t0:t1, :labels] = z[:, :labels].gather(-1, y).squeeze(-1) - norm[:, :labels]
        ctx.save_for_backward(logits, targets, lse)
        ctx.lattice = (t_len, u_len, blank, dtype)
        return phi, psi

    @staticmethod
    def backward(ctx, grad_phi: torch.Tensor, grad_psi: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        t_len, u_len, blank, dtype = ctx.lattice
        grad = torch.zeros_like(logits)
        for i, t0, t1, labels in _blocks(t_len, u_len, logits.shape[-1]):
            g_phi = grad_phi[i, t0:t1, :labels + 1].to(dtype)
            g_psi = grad_psi[i, t0:t1, :labels].to(dtype)  # psi at u = U_b is no lattice edge
            g_total = g_phi.clone()
            g_total[:, :labels] += g_psi
            # d log p[k] / dz = onehot(k) - softmax(z)
            block = (logits[i, t0:t1, :labels + 1].to(dtype) - lse[i, t0:t1, :labels + 1, None]).exp_()
            block.mul_(-g_total[..., None])
            block[..., blank] += g_phi
            y = targets[i, :labels].long().view(1, labels, 1).expand(t1 - t0, labels, 1)
            block[:, :labels].scatter_add_(-1, y, g_psi[..., None])
            grad[i, t0:t1, :labels + 1] = block
        return grad, None, None, None, None, None


def _skew(x: torch.Tensor, frames: int, diagonals: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, U+1) -> (B, D, U+1) with out[:, d, u] = x[:, d - u, u] (_NEG off the grid), and that mask."""
    u1 = x.shape[2]
    t_index = torch.arange(diagonals, device=x.device)[:, None] - torch.arange(u1, device=x.device)
    on_grid = (t_index >= 0) & (t_index < frames)
    out = x.gather(1, t_index.clamp(0, frames - 1).expand(x.shape[0], -1, -1))
    return torch.where(on_grid, out, _NEG), on_grid


def _log_likelihood(phi: torch.Tensor, psi: torch.Tensor, t_len: torch.Tensor, u_len: torch.Tensor) -> torch.Tensor:
    """log P(y | x) per utterance: the alpha recursion, one anti-diagonal t + u = d per step."""
    b, frames, u1 = phi.shape
    diagonals = frames + u1 - 1
    phi_d, on_grid = _skew(phi, frames, diagonals)
    psi_d, _ = _skew(psi, frames, diagonals)
    neg_column = phi.new_full((b, 1), _NEG)
    alpha = torch.where(torch.arange(u1, device=phi.device) == 0, 0.0, _NEG).to(phi.dtype).expand(b, u1)
    alphas = [alpha]
    for d in range(1, diagonals):
        # Every cell of diagonal d depends only on diagonal d - 1: blank from (t-1, u), label from (t, u-1).
        stay = alpha + phi_d[:, d - 1]
        move = torch.cat([neg_column, (alpha + psi_d[:, d - 1])[:, :-1]], dim=1)
        alpha = torch.where(on_grid[d], torch.logaddexp(stay, move), _NEG)
        alphas.append(alpha)
    rows = torch.arange(b, device=phi.device)
    last = torch.stack(alphas, dim=1)[rows, t_len - 1 + u_len, u_len]
    return last + phi[rows, t_len - 1, u_len]


def rnnt_loss_reference(logits: torch.Tensor, targets: torch.Tensor, logit_lengths: torch.Tensor,
                        target_lengths: torch.Tensor, *, blank: int = 0, reduction: str = "mean") -> torch.Tensor:
    """The RNN-T loss in plain PyTorch (see the module docstring); autograd gives the gradient.

    Same arguments and result as :func:`rnnt_loss`.  Computes in float32 (float64 for
    float64 logits), on any device; the alpha recursion runs over the T + U anti-diagonals
    of the lattice, vectorised over the batch.
    """
    t_len, u_len = _check_lattice(logits, targets, logit_lengths, target_lengths, blank, reduction,
                                  name="logits", min_frames=1)
    dtype = _compute_dtype(logits)
    phi, psi = _LatticeLogProbs.apply(logits, targets, t_len, u_len, blank, dtype)
    # Nothing past the longest utterance matters: a shorter recursion.
    frames, labels = max(t_len, default=1), max(u_len, default=0)
    phi, psi = phi[:, :frames, :labels + 1], psi[:, :frames, :labels + 1]
    device = logits.device
    loss = -_log_likelihood(phi, psi, torch.tensor(t_len, dtype=torch.long, device=device),
                            torch.tensor(u_len, dtype=torch.long, device=device))
    return _reduce(loss, reduction)


# ---------------------------------------------------------------- RNN-T loss


_TORCHAUDIO: list = []  # [rnnt_loss or None], filled on first use
_TORCHAUDIO_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _torchaudio_rnnt():
    if not _TORCHAUDIO:
        try:
            from torchaudio.functional import rnnt_loss as op
        except (ImportError, OSError, RuntimeError):  # not installed, or its C++ extension does not load
            op = None
        _TORCHAUDIO.append(op)
    return _TORCHAUDIO[0]


def _rnnt_loss_torchaudio(op, logits: torch.Tensor, targets: torch.Tensor, t_len: list[int], u_len: list[int],
                          blank: int) -> torch.Tensor:
    # torchaudio wants float32 (or float16, which it would also compute in), contiguous
    # logits trimmed to exactly (max T_b, max U_b + 1), and int32 targets and lengths.
    frames, labels = max(t_len), max(u_len)
    logits = logits[:, :frames, :labels + 1].float().contiguous()
    device = logits.device
    valid = torch.arange(labels, device=device) < torch.tensor(u_len, device=device)[:, None]
    targets = torch.where(valid, targets[:, :labels].to(device), blank).int().contiguous()
    # clamp=-1: no gradient clipping; fused_log_softmax: it normalises the raw logits itself.
    return op(logits, targets, torch.tensor(t_len, dtype=torch.int32, device=device),
              torch.tensor(u_len, dtype=torch.int32, device=device), blank=int(blank), clamp=-1.0,
              reduction="none", fused_log_softmax=True)


def rnnt_loss(logits: torch.Tensor, targets: torch.Tensor, logit_lengths: torch.Tensor,
              target_lengths: torch.Tensor, *, blank: int = 0, reduction: str = "mean") -> torch.Tensor:
    """RNN-T loss ``-log P(y | x)`` summed over all alignments (see the module docstring).

    Args:
        logits: (B, T, U+1, V) joiner outputs, unnormalised (the log-softmax is taken here).
            float32, bfloat16 or float16 are computed in float32; float64 in float64.
        targets: (B, U) int32/int64 labels; entries past ``target_lengths`` are padding
            (any value), entries within must be in [0, V) and never ``blank``.
        logit_lengths: (B,) int32/int64 frames per utterance, in [1, T].
        target_lengths: (B,) int32/int64 labels per utterance, in [0, U].
        blank: the blank index in [0, V).
        reduction: "mean" (over the batch), "sum", or "none" for the (B,) losses.

    Returns:
        The loss in float32 (float64 for float64 logits); padding has no effect and gets
        a zero gradient.

    On CUDA it runs the fused Triton kernels (:mod:`kdst.losses.triton.rnnt`), which read
    half-precision logits as they are.  Elsewhere it uses ``torchaudio.functional.rnnt_loss``
    (no gradient clamping) where it applies, else :func:`rnnt_loss_reference` (float64
    logits, other devices, no torchaudio).
    Lengths are read on the host, so a CUDA call synchronises once.

    Raises:
        ValueError: for bad shapes or dtypes, lengths out of range, a target equal to
            blank or outside the vocabulary, or an unknown reduction.
    """
    t_len, u_len = _check_lattice(logits, targets, logit_lengths, target_lengths, blank, reduction,
                                  name="logits", min_frames=1)
    if use_triton(logits):
        from kdst.losses.triton.rnnt import fused_lattice_losses
        nll, _ = fused_lattice_losses(logits, None, targets, logit_lengths, target_lengths, with_rnnt=True,
                                      kd_mode=None, blank=blank)
        return _reduce(nll, reduction)
    op = _torchaudio_rnnt()
    if (op is not None and logits.dtype in _TORCHAUDIO_DTYPES and logits.device.type in ("cpu", "cuda")
            and logits.shape[0] > 0):
        try:
            return _reduce(_rnnt_loss_torchaudio(op, logits, targets, t_len, u_len, blank), reduction)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as error:  # e.g. a torchaudio build without this device's kernel
            warnings.warn(f"torchaudio rnnt_loss failed ({error}); using the PyTorch reference", stacklevel=2)
    return rnnt_loss_reference(logits, targets, logit_lengths, target_lengths, blank=blank, reduction=reduction)


# ---------------------------------------------------------------- RNN-T KD


def _full_kd(lp_s: torch.Tensor, lp_t: torch.Tensor, temperature: float,
             want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """KL(p_T || p_S) at each of a block's nodes, and its gradient w.r.t. the (unscaled) student logits."""
    p_t = lp_t.exp()
    # p_T = 0 must add exactly 0, even where log p_S = -inf.
    kl = torch.where(p_t > 0, p_t * (lp_t - lp_s), 0.0).sum(-1)
    grad = lp_s.exp().sub_(p_t).div_(temperature) if want_grad else None
    return kl, grad


def _class_log_probs(lp: torch.Tensor, y: torch.Tensor, has_label: torch.Tensor, blank: int) -> torch.Tensor:
    """(rows, U_b+1, V) log-probs -> (rows, U_b+1, 3) log q over (label, blank, rest).

    ``lp`` is modified and then restored exactly, to spare a block-sized copy.
    """
    index = y.view(1, -1, 1).expand(lp.shape[0], -1, 1)
    label = lp.gather(-1, index)
    blank_lp = lp[..., blank:blank + 1].clone()
    lp.scatter_(-1, index, -math.inf)
    lp[..., blank] = -math.inf
    rest = torch.logsumexp(lp, dim=-1, keepdim=True)  # -inf when no class is left (V <= 2)
    lp.scatter_(-1, index, label)
    lp[..., blank:blank + 1] = blank_lp
    label = torch.where(has_label[:, None], label, -math.inf)  # u = U_b: the label class does not exist
    return torch.cat([label, blank_lp, rest], dim=-1)


def _collapsed_kd(lp_s: torch.Tensor, lp_t: torch.Tensor, y: torch.Tensor, has_label: torch.Tensor, blank: int,
                  temperature: float, want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """KL(q_T || q_S) over (label, blank, rest) at each of a block's nodes, and its student gradient."""
    lq_s = _class_log_probs(lp_s, y, has_label, blank)
    lq_t = _class_log_probs(lp_t, y, has_label, blank)
    q_t = lq_t.exp()
    kl = torch.where(q_t > 0, q_t * (lq_t - lq_s), 0.0).sum(-1)
    if not want_grad:
        return kl, None
    # d kl / dz_v = (p_S(v) - q_T(c) p_S(v) / q_S(c)) / T with c the class of v; the second
    # term is exp(log p_S(v) - log q_S(c) + log q_T(c)), an exponent <= 0 that cannot overflow.
    shift = torch.where(lq_t == -math.inf, -math.inf, lq_t - lq_s)  # q_T(c) = 0 also where q_S(c) = 0
    index = y.view(1, -1, 1).expand(lp_s.shape[0], -1, 1)
    per_class = shift[..., 2:3].expand_as(lp_s).clone()  # rest by default
    per_class.scatter_(-1, index, shift[..., 0:1])  # at u = U_b this hits blank, overwritten next
    per_class[..., blank] = shift[..., 1]
    second = per_class.add_(lp_s).exp_()
    return kl, lp_s.exp().sub_(second).div_(temperature)


def _check_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
              logit_lengths: torch.Tensor, target_lengths: torch.Tensor, mode: str, temperature: float, blank: int,
              reduction: str, *, min_frames: int, node_weights: torch.Tensor | None = None) -> tuple[list[int], list[int]]:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not (isinstance(temperature, numbers.Real) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    lengths = _check_lattice(student_logits, targets, logit_lengths, target_lengths, blank, reduction,
                             name="student_logits", min_frames=min_frames)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher_logits shape {tuple(teacher_logits.shape)} does not match "
                         f"student_logits shape {tuple(student_logits.shape)}")
    if not teacher_logits.is_floating_point():
        raise ValueError(f"teacher_logits must be floating point, got {teacher_logits.dtype}")
    if node_weights is not None:
        if node_weights.shape != student_logits.shape[:3]:
            raise ValueError(f"node_weights must be (B, T, U+1) = {tuple(student_logits.shape[:3])}, "
                             f"got shape {tuple(node_weights.shape)}")
        if not node_weights.is_floating_point():
            raise ValueError(f"node_weights must be floating point, got {node_weights.dtype}")
    return lengths


class _RnntKD(torch.autograd.Function):
    """Per-utterance KD losses (B,); the student gradient is made in the same pass and kept until backward."""

    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, t_len: list[int],
                u_len: list[int], mode: str, temperature: float, blank: int, dtype: torch.dtype,
                node_weights: torch.Tensor | None) -> torch.Tensor:
        want_grad = ctx.needs_input_grad[0]
        losses = [student.new_zeros((), dtype=dtype) for _ in t_len]
        grad = torch.zeros_like(student) if want_grad else None
        for b, t0, t1, labels in _blocks(t_len, u_len, student.shape[-1]):
            lp_s, lp_t = (torch.log_softmax(x[b, t0:t1, :labels + 1].to(dtype) / temperature, dim=-1)
                          for x in (student, teacher))
            if mode == "full":
                kl, g = _full_kd(lp_s, lp_t, temperature, want_grad)
            else:
                y = _node_labels(targets, b, labels, blank)
                has_label = torch.arange(labels + 1, device=y.device) < labels
                kl, g = _collapsed_kd(lp_s, lp_t, y, has_label, blank, temperature, want_grad)
            if node_weights is not None:
                w = node_weights[b, t0:t1, :labels + 1].to(dtype)
                kl = torch.where(w != 0, kl * w, 0.0)  # a zero weight drops the node, even an infinite KL
                if g is not None:
                    g.mul_(w[..., None])
            losses[b] = losses[b] + kl.sum()
            if grad is not None:
                grad[b, t0:t1, :labels + 1] = g
        ctx.save_for_backward(grad)
        return torch.stack(losses) if losses else student.new_zeros((0,), dtype=dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (grad,) = ctx.saved_tensors
        if grad is None:
            return (None,) * 10
        return (grad * grad_out.to(grad.dtype).view(-1, 1, 1, 1),) + (None,) * 9


def rnnt_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                 logit_lengths: torch.Tensor, target_lengths: torch.Tensor, *, mode: str = "full",
                 temperature: float = 1.0, blank: int = 0, reduction: str = "mean",
                 node_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Node-wise KL(teacher || student) over the RNN-T lattice (see the module docstring).

    Args:
        student_logits: (B, T, U+1, V) student joiner outputs (unnormalised).
        teacher_logits: (B, T, U+1, V) teacher joiner outputs on the same lattice; treated
            as a constant (no gradient).
        targets: (B, U) int32/int64 labels (the collapsed mode's y_{u+1}); entries past
            ``target_lengths`` are padding, entries within must be in [0, V) and not blank.
        logit_lengths: (B,) int32/int64 frames per utterance, in [0, T].
        target_lengths: (B,) int32/int64 labels per utterance, in [0, U].
        mode: "full" (KL over the V classes) or "collapsed" (over label, blank, rest).
        temperature: T > 0 applied to both logits.  No T**2 factor.
        blank: the blank index in [0, V).
        reduction: "mean" (over the batch), "sum", or "none" for the (B,) per-utterance
            sums over valid nodes.
        node_weights: (B, T, U+1) non-negative weights of each node's KL (e.g.
            :func:`lattice_occupancy` of the teacher), constants (no gradient flows into
            them); padded entries are never read.  None: every node weighs 1.

    Returns:
        The loss in float32 (float64 if an input is float64); half-precision inputs are
        computed in float32.  Padded nodes are never read: they add nothing and get a
        zero gradient, even if they hold inf/NaN.

    Raises:
        ValueError: for mismatched shapes, bad dtypes, lengths out of range, a target equal
            to blank or outside the vocabulary, an unknown mode or reduction, or a
            temperature that is not > 0.
    """
    t_len, u_len = _check_kd(student_logits, teacher_logits, targets, logit_lengths, target_lengths, mode,
                             temperature, blank, reduction, min_frames=0, node_weights=node_weights)
    weights = node_weights.detach() if node_weights is not None else None
    if use_triton(student_logits, teacher_logits):
        from kdst.losses.triton.rnnt import fused_lattice_losses
        _, kd = fused_lattice_losses(student_logits, teacher_logits, targets, logit_lengths, target_lengths,
                                     with_rnnt=False, kd_mode=mode, temperature=temperature, blank=blank,
                                     node_weights=weights)
        return _reduce(kd, reduction)
    dtype = _compute_dtype(student_logits, teacher_logits)
    per_utterance = _RnntKD.apply(student_logits, teacher_logits.detach(), targets.to(student_logits.device),
                                  t_len, u_len, mode, float(temperature), int(blank), dtype,
                                  weights.to(student_logits.device) if weights is not None else None)
    return _reduce(per_utterance, reduction)


# ---------------------------------------------------------------- both at once


def rnnt_loss_and_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                     logit_lengths: torch.Tensor, target_lengths: torch.Tensor, *, mode: str = "full",
                     temperature: float = 1.0, blank: int = 0, reduction: str = "mean",
                     node_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rnnt_loss(student_logits, ...), rnnt_kd_loss(student_logits, teacher_logits, ...))`` in one go.

    Same arguments as :func:`rnnt_kd_loss`, except that every utterance needs a frame
    (as for :func:`rnnt_loss`), and the same two results.  On CUDA one fused pass over
    the lattice serves both losses and their gradients are written together, once;
    elsewhere it calls the two functions.
    """
    _check_kd(student_logits, teacher_logits, targets, logit_lengths, target_lengths, mode, temperature, blank,
              reduction, min_frames=1, node_weights=node_weights)
    if use_triton(student_logits, teacher_logits):
        from kdst.losses.triton.rnnt import fused_lattice_losses
        nll, kd = fused_lattice_losses(student_logits, teacher_logits, targets, logit_lengths, target_lengths,
                                       with_rnnt=True, kd_mode=mode, temperature=temperature, blank=blank,
                                       node_weights=node_weights.detach() if node_weights is not None else None)
        return _reduce(nll, reduction), _reduce(kd, reduction)
    return (rnnt_loss(student_logits, targets, logit_lengths, target_lengths, blank=blank, reduction=reduction),
            rnnt_kd_loss(student_logits, teacher_logits, targets, logit_lengths, target_lengths, mode=mode,
                         temperature=temperature, blank=blank, reduction=reduction, node_weights=node_weights))


# ---------------------------------------------------------------- node occupancy and normalisers


def _valid_nodes(logit_lengths: torch.Tensor, target_lengths: torch.Tensor, frames: int, u1: int) -> torch.Tensor:
    """(B, T, U+1) bool: the nodes inside each utterance's T_b x (U_b + 1) rectangle."""
    device = logit_lengths.device
    t_ok = torch.arange(frames, device=device)[None, :, None] < logit_lengths[:, None, None]
    u_ok = torch.arange(u1, device=device)[None, None, :] <= target_lengths.to(device)[:, None, None]
    return t_ok & u_ok


def lattice_occupancy(logits: torch.Tensor, targets: torch.Tensor, logit_lengths: torch.Tensor,
                      target_lengths: torch.Tensor, *, blank: int = 0) -> torch.Tensor:
    """gamma(t, u) = alpha(t, u) beta(t, u) / P(y | x): how likely an alignment passes through each node.

    Args are those of :func:`rnnt_loss` (``logits`` at temperature 1: the model's own
    alignment distribution).  Returns (B, T, U+1) float32 (float64 for float64 logits),
    0 on padded nodes; each utterance's entries sum to T_b + U_b.  No gradient: the
    result is a constant, e.g. the node weights of :func:`rnnt_kd_loss`.

    On CUDA the fused kernels compute it (one pass over the logits, the alpha/beta scans);
    elsewhere the gradient of log P(y | x) with respect to the blank and label
    log-probabilities (the edge posteriors), summed per node.
    """
    t_len, u_len = _check_lattice(logits, targets, logit_lengths, target_lengths, blank, "none",
                                  name="logits", min_frames=1)
    logits = logits.detach()
    if use_triton(logits):
        from kdst.losses.triton.rnnt import fused_lattice_occupancy
        return fused_lattice_occupancy(logits, targets, logit_lengths, target_lengths, blank=blank)
    dtype = _compute_dtype(logits)
    b, frames, u1, _ = logits.shape
    occupancy = logits.new_zeros((b, frames, u1), dtype=dtype)
    if b == 0:
        return occupancy
    last_t, last_u = max(t_len), max(u_len)
    device = logits.device
    with torch.enable_grad():
        phi, psi = _LatticeLogProbs.apply(logits, targets.to(device), t_len, u_len, blank, dtype)
        phi = phi[:, :last_t, :last_u + 1].detach().requires_grad_()
        psi = psi[:, :last_t, :last_u + 1].detach().requires_grad_()
        log_like = _log_likelihood(phi, psi, torch.tensor(t_len, dtype=torch.long, device=device),
                                   torch.tensor(u_len, dtype=torch.long, device=device))
        d_phi, d_psi = torch.autograd.grad(log_like.sum(), (phi, psi))
    # d log P / d phi(t, u) is the posterior of the blank edge leaving (t, u), d psi that of its label edge.
    occupancy[:, :last_t, :last_u + 1] = d_phi + d_psi
    return occupancy


def kd_normalizer(normalize: str, logit_lengths: torch.Tensor, target_lengths: torch.Tensor,
                  node_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The denominator of a batch's lattice KD sum (``rnnt_kd_loss(..., reduction="sum")``), a 0-dim tensor.

    nodes: the total node weight over the valid nodes, sum_b T_b (U_b + 1) with uniform
    weights (``node_weights`` None), so the KD term is the mean KL per node; tokens: the
    target tokens sum_b U_b (the RNN-T term's normaliser); utterances: B, the mean
    per-utterance KL sum.  Computed on the device (no host synchronisation); at least 1
    for counts, and a positive floor for weights.
    """
    if normalize not in NORMALIZERS:
        raise ValueError(f"normalize must be one of {NORMALIZERS}, got {normalize!r}")
    if normalize == "tokens":
        return target_lengths.sum().float().clamp_min(1)
    if normalize == "utterances":
        return target_lengths.new_tensor(max(target_lengths.shape[0], 1), dtype=torch.float32)
    t_len = logit_lengths.to(target_lengths.device)
    if node_weights is None:
        return (t_len * (target_lengths + 1)).sum().float().clamp_min(1)
    valid = _valid_nodes(t_len, target_lengths, node_weights.shape[1], node_weights.shape[2])
    total = torch.where(valid, node_weights.detach().to(valid.device), 0.0).sum()
    return total.clamp_min(torch.finfo(total.dtype).tiny)
