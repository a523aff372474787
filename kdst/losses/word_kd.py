"""Word-level knowledge distillation: per-token KL(teacher || student).

For each token ``n`` the teacher distribution ``p_T`` and the student
log-distribution ``log p_S`` are taken at temperature ``T``::

    p_T     = softmax(teacher_logits / T)          over the vocabulary V
    log p_S = log_softmax(student_logits / T)      over the vocabulary V
    loss_n  = sum_j p_T(j) * (log p_T(j) - log p_S(j))

With a stored top-k teacher (``topk_indices``, ``topk_logits``) the teacher
distribution is the softmax of the k stored logits, i.e. renormalised over
those k entries, and ``log p_S`` is still normalised over the *full*
vocabulary and then read at the k indices.  Entries with ``p_T = 0`` (a
teacher logit of -inf, or a probability that underflows) contribute exactly 0.

Top-k plus the rest (``rest_log_mass``): instead of renormalising, the stored top-k
keeps the teacher's true probabilities and a (k + 1)-th class, "everything else",
carries the teacher's remaining mass ``q_r`` (stored per token by ``kdst topk`` as
``log q_r`` at the temperature it was made at).  With K the stored ids::

    q_j       = (1 - q_r) * softmax(topk_logits / T)_j       j in K
    p_S(rest) = sum_{i not in K} p_S(i) = 1 - sum_{j in K} p_S(j)
    loss_n    = sum_{j in K} q_j (log q_j - log p_S(j)) + q_r (log q_r - log p_S(rest))

the KL between the two distributions collapsed onto K + {rest}.  ``log p_S(rest)`` is
a log-sum-exp over the columns outside K (not ``log(1 - sum)``, which cancels when the
top k hold nearly all of the student's mass).  The ids of a row must be distinct here
(a ``topk`` cache's are); ``rest_log_mass = -inf`` is plain top-k at k = V.

On CUDA (float32/bfloat16/float16) the per-token losses come from the fused Triton
kernel in :mod:`kdst.losses.triton.word_kd`; elsewhere from the PyTorch code below.

No ``T**2`` factor is applied; callers that want the usual gradient-scale
correction multiply by it themselves.  The gradient with respect to the
student logits of one counted token is ``(p_S - p_T) / T`` (full mode).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from kdst.losses.dispatch import use_triton

REDUCTIONS = ("mean", "sum", "none")


def _log_softmax(logits: torch.Tensor, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    """log_softmax(logits / T) in ``dtype`` with at most one extra (N, V) tensor."""
    if temperature == 1.0:
        # log_softmax casts internally, so a half-precision input needs no float32 copy.
        return F.log_softmax(logits, dim=-1, dtype=dtype)
    scaled = logits.to(dtype)
    # A cast already made a private copy, which can be divided in place; dividing in
    # half precision first would round the scaled logits.
    scaled = scaled.div_(temperature) if scaled is not logits else scaled / temperature
    return F.log_softmax(scaled, dim=-1)


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32 for half-precision (and float32) inputs, float64 if any input is float64."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _check_inputs(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                  topk_indices: torch.Tensor | None, topk_logits: torch.Tensor | None,
                  temperature: float, mask: torch.Tensor | None, reduction: str,
                  rest_log_mass: torch.Tensor | None = None) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not (isinstance(temperature, numbers.Real) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if student_logits.dim() != 2:
        raise ValueError(f"student_logits must be (N, V), got shape {tuple(student_logits.shape)}; "
                         "flatten leading dimensions first")
    if not student_logits.is_floating_point():
        raise ValueError(f"student_logits must be floating point, got {student_logits.dtype}")
    n, v = student_logits.shape

    have_topk = (topk_indices is not None, topk_logits is not None)
    if teacher_logits is not None and any(have_topk):
        raise ValueError("give either teacher_logits or (topk_indices, topk_logits), not both")
    if teacher_logits is None and not all(have_topk):
        if any(have_topk):
            raise ValueError("topk_indices and topk_logits must be given together")
        raise ValueError("no teacher: give teacher_logits or (topk_indices, topk_logits)")

    if teacher_logits is not None:
        if teacher_logits.shape != student_logits.shape:
            raise ValueError(f"teacher_logits shape {tuple(teacher_logits.shape)} does not match "
                             f"student_logits shape {tuple(student_logits.shape)}")
        if not teacher_logits.is_floating_point():
            raise ValueError(f"teacher_logits must be floating point, got {teacher_logits.dtype}")
    else:
        assert topk_indices is not None and topk_logits is not None
        if topk_indices.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"topk_indices must be int32 or int64, got {topk_indices.dtype}")
        if topk_indices.dim() != 2 or topk_indices.shape[0] != n:
            raise ValueError(f"topk_indices must be (N, k) with N = {n}, got shape "
                             f"{tuple(topk_indices.shape)} for student_logits {tuple(student_logits.shape)}")
        if topk_logits.shape != topk_indices.shape:
            raise ValueError(f"topk_logits shape {tuple(topk_logits.shape)} does not match "
                             f"topk_indices shape {tuple(topk_indices.shape)}")
        if not topk_logits.is_floating_point():
            raise ValueError(f"topk_logits must be floating point, got {topk_logits.dtype}")
        k = topk_indices.shape[1]
        if not 1 <= k <= v:
            raise ValueError(f"top-k size must be in [1, V = {v}], got k = {k} "
                             f"(topk_indices shape {tuple(topk_indices.shape)})")

    if rest_log_mass is not None:
        if topk_indices is None:
            raise ValueError("rest_log_mass goes with a top-k teacher (topk_indices, topk_logits)")
        if rest_log_mass.shape != (n,) or not rest_log_mass.is_floating_point():
            raise ValueError(f"rest_log_mass must be a float ({n},) tensor, got {rest_log_mass.dtype} of shape "
                             f"{tuple(rest_log_mass.shape)}")

    if mask is not None:
        if mask.shape != (n,):
            raise ValueError(f"mask must be ({n},) to match student_logits {tuple(student_logits.shape)}, "
                             f"got shape {tuple(mask.shape)}")
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool (True = token counts), got {mask.dtype}")


def word_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None = None, *,
                 topk_indices: torch.Tensor | None = None, topk_logits: torch.Tensor | None = None,
                 rest_log_mass: torch.Tensor | None = None, temperature: float = 1.0,
                 mask: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """Per-token KL(p_T || p_S) between a teacher and the student at ``temperature``.

    Args:
        student_logits: (N, V).  Inputs with more leading dimensions (batch, time)
            are not accepted: flatten them to N first.
        teacher_logits: (N, V) full teacher logits, or None when the top-k form is given.
        topk_indices: (N, k) int32/int64 vocabulary indices in [0, V) of a stored
            teacher top-k, without duplicates (neither is checked: that would need
            a device sync or a sort).
        topk_logits: (N, k) the teacher's logits at ``topk_indices``; the teacher
            distribution is their softmax, renormalised over the k entries, unless
        rest_log_mass: (N,) is given: the log of the teacher's probability mass outside
            the k entries at this temperature; the KL is then over the k entries and a
            rest class (top-k plus the rest, see the module docstring).
        temperature: T > 0; both distributions use logits / T.  No T**2 factor.
        mask: (N,) bool, True where a token counts.  Masked tokens contribute 0
            and get a zero gradient, even if their teacher logits are inf/NaN; a
            non-finite *student* logit still contributes 0 to the value but makes
            that row's gradient NaN (masking the student would cost an (N, V) copy).
        reduction: "mean" (over counted tokens; 0.0 if none count), "sum", or
            "none" for the (N,) per-token losses with masked tokens set to 0.

    Returns:
        The loss in float32 (float64 if an input is float64), whatever the input
        precision.  Only the student receives a gradient; teacher tensors are
        treated as constants.

    Raises:
        ValueError: for a missing or doubled teacher, mismatched shapes or dtypes,
            a bad reduction, or a temperature that is not > 0.
    """
    _check_inputs(student_logits, teacher_logits, topk_indices, topk_logits, temperature, mask, reduction,
                  rest_log_mass)
    temperature = float(temperature)
    teacher = teacher_logits if teacher_logits is not None else topk_logits
    assert teacher is not None
    dtype = _compute_dtype(student_logits, teacher)
    if use_triton(student_logits, teacher):
        from kdst.losses.triton.word_kd import word_kd_per_token
        per_token = word_kd_per_token(student_logits, teacher_logits, topk_indices, topk_logits, temperature, mask,
                                      rest_log_mass=rest_log_mass)
    elif rest_log_mass is not None:
        per_token = _per_token_rest_reference(student_logits, topk_indices, topk_logits, rest_log_mass, temperature,
                                              dtype)
    else:
        per_token = _per_token_reference(student_logits, teacher, topk_indices, temperature, dtype)
    return _reduce_tokens(per_token, mask, reduction, dtype)


def _per_token_reference(student_logits: torch.Tensor, teacher: torch.Tensor, topk_indices: torch.Tensor | None,
                         temperature: float, dtype: torch.dtype) -> torch.Tensor:
    """(N,) KL per token in plain PyTorch; ``teacher`` is the full or the top-k logits."""
    log_p_s = _log_softmax(student_logits, temperature, dtype)
    if topk_indices is not None:
        # Normalise over the full vocabulary first, then read only the k stored entries:
        # the only (N, V) tensor is the log_softmax output itself.
        log_p_s = log_p_s.gather(-1, topk_indices.long())

    with torch.no_grad():
        log_p_t = _log_softmax(teacher.detach(), temperature, dtype)
        p_t = log_p_t.exp()
        # p_T = 0 (or NaN from an all -inf teacher row) must add exactly 0 and keep the
        # gradient finite, so zero both factors instead of computing 0 * (-inf - x).
        drop = ~(p_t > 0)
        p_t.masked_fill_(drop, 0.0)
        log_p_t.masked_fill_(drop, 0.0)

    # A student log-prob of -inf where p_T = 0 would otherwise give 0 * inf = NaN.
    log_p_s = log_p_s.masked_fill(drop, 0.0)
    return (p_t * (log_p_t - log_p_s)).sum(dim=-1)


def _per_token_rest_reference(student_logits: torch.Tensor, topk_indices: torch.Tensor, topk_logits: torch.Tensor,
                              rest_log_mass: torch.Tensor, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    """(N,) KL over the k stored entries and a rest class, in plain PyTorch."""
    index = topk_indices.long()
    log_p_s_all = _log_softmax(student_logits, temperature, dtype)
    with torch.no_grad():
        log_q_r = rest_log_mass.detach().to(dtype)[:, None]
        has_rest = log_q_r.exp() > 0
    # The student's rest: a log-sum-exp over the columns outside the k ids (one more (N, V) tensor).  A row
    # whose teacher has no rest reads zeros instead: with k = V its columns are all -inf, whose log-sum-exp
    # has a NaN gradient even when multiplied by 0.
    outside = torch.where(has_rest, log_p_s_all.scatter(-1, index, float("-inf")), 0.0)
    log_p_s = torch.cat([log_p_s_all.gather(-1, index), outside.logsumexp(-1, keepdim=True)], dim=-1)
    with torch.no_grad():
        log_q = torch.cat([_log_softmax(topk_logits.detach(), temperature, dtype) + torch.log1p(-log_q_r.exp()),
                           log_q_r], dim=-1)
        q = log_q.exp()
        drop = ~(q > 0)
        q.masked_fill_(drop, 0.0)
        log_q.masked_fill_(drop, 0.0)
    log_p_s = log_p_s.masked_fill(drop, 0.0)
    return (q * (log_q - log_p_s)).sum(dim=-1)


def _reduce_tokens(per_token: torch.Tensor, mask: torch.Tensor | None, reduction: str,
                   dtype: torch.dtype) -> torch.Tensor:
    if mask is not None:
        # where, not multiplication: a masked row that is inf/NaN must not leak through.
        per_token = torch.where(mask, per_token, per_token.new_zeros(()))
    if reduction == "none":
        return per_token
    total = per_token.sum()
    if reduction == "sum":
        return total
    if mask is None:
        return total / max(per_token.shape[0], 1)
    # clamp keeps the no-counted-tokens case at 0 / 1 = 0 with a zero gradient; keeping
    # the count a tensor avoids a host sync on the GPU.
    return total / mask.sum().clamp(min=1).to(dtype)
