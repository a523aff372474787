"""word_kd_loss against a brute-force KL written from the definition, plus gradients and edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from kdst.losses import word_kd_loss

N, V, K = 5, 7, 3
TEMPERATURES = (0.5, 1.0, 2.0)
REDUCTIONS = ("mean", "sum", "none")
MASKS = {"nomask": None, "partial": [True, False, True, True, False], "empty": [False] * N}


# ---------------------------------------------------------------- reference


def ref_log_softmax(row: list[float], temperature: float) -> list[float]:
    """log softmax(row / T) from the definition; the max shift only keeps math.exp in range."""
    top = max(row)
    z = [(x - top) / temperature for x in row]
    log_norm = math.log(sum(math.exp(x) for x in z))
    return [x - log_norm for x in z]


def ref_kl(student: torch.Tensor, teacher: torch.Tensor | None = None, idx: torch.Tensor | None = None,
           topk: torch.Tensor | None = None, temperature: float = 1.0, mask: list[bool] | None = None,
           reduction: str = "mean") -> torch.Tensor:
    """sum_j p_T(j) (log p_T(j) - log p_S(j)) per token with python floats, then reduced."""
    s = student.double().tolist()
    per = []
    for n, s_row in enumerate(s):
        log_ps = ref_log_softmax(s_row, temperature)  # always over the full vocabulary
        if teacher is not None:
            cols, log_pt = list(range(len(s_row))), ref_log_softmax(teacher[n].double().tolist(), temperature)
        else:
            cols, log_pt = idx[n].tolist(), ref_log_softmax(topk[n].double().tolist(), temperature)
        kl = 0.0
        for j, lpt in zip(cols, log_pt):
            pt = math.exp(lpt)
            if pt > 0:
                kl += pt * (lpt - log_ps[j])
        per.append(kl if mask is None or mask[n] else 0.0)
    if reduction == "none":
        return torch.tensor(per, dtype=torch.float64)
    total = sum(per)
    if reduction == "sum":
        return torch.tensor(total, dtype=torch.float64)
    count = len(per) if mask is None else sum(mask)
    return torch.tensor(total / count if count else 0.0, dtype=torch.float64)


def logits(seed: int, n: int = N, v: int = V, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * scale, torch.randn(n, v, generator=g) * scale


def topk_of(teacher: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct random indices per row (not the true top-k: the loss must not rely on that)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(teacher.shape[1], generator=g)[:k] for _ in range(teacher.shape[0])])
    return idx, teacher.gather(1, idx)


def as_mask(m: list[bool] | None) -> torch.Tensor | None:
    return None if m is None else torch.tensor(m)


def check(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=atol)


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("mask", MASKS)
def test_full_matches_reference(temperature: float, reduction: str, mask: str) -> None:
    s, t = logits(1)
    out = word_kd_loss(s, t, temperature=temperature, mask=as_mask(MASKS[mask]), reduction=reduction)
    assert out.dtype == torch.float32
    check(out, ref_kl(s, t, temperature=temperature, mask=MASKS[mask], reduction=reduction))


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("mask", MASKS)
def test_topk_matches_reference(temperature: float, reduction: str, mask: str) -> None:
    s, t = logits(2)
    idx, tl = topk_of(t, K, seed=3)
    out = word_kd_loss(s, topk_indices=idx, topk_logits=tl, temperature=temperature, mask=as_mask(MASKS[mask]),
                       reduction=reduction)
    check(out, ref_kl(s, idx=idx, topk=tl, temperature=temperature, mask=MASKS[mask], reduction=reduction))


def test_none_zeroes_masked_rows_and_empty_mean_is_zero() -> None:
    s, t = logits(4)
    s.requires_grad_(True)
    m = as_mask(MASKS["partial"])
    per = word_kd_loss(s, t, mask=m, reduction="none")
    assert per.shape == (N,) and (per[~m] == 0).all() and (per[m] > 0).all()
    empty = word_kd_loss(s, t, mask=as_mask(MASKS["empty"]))
    assert empty.item() == 0.0
    (grad,) = torch.autograd.grad(empty, s)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_topk_with_k_equal_v_is_full_mode() -> None:
    s, t = logits(5)
    idx, tl = topk_of(t, V, seed=6)  # a permutation of the vocabulary per row
    m = as_mask(MASKS["partial"])
    for reduction in REDUCTIONS:
        full_s = s.clone().requires_grad_(True)
        topk_s = s.clone().requires_grad_(True)
        full = word_kd_loss(full_s, t, temperature=2.0, mask=m, reduction=reduction)
        topk = word_kd_loss(topk_s, topk_indices=idx, topk_logits=tl, temperature=2.0, mask=m, reduction=reduction)
        torch.testing.assert_close(topk, full)
        full.sum().backward()
        topk.sum().backward()
        torch.testing.assert_close(topk_s.grad, full_s.grad)


def test_kl_is_nonnegative_and_zero_for_identical_distributions() -> None:
    s, t = logits(7, n=200, v=11)
    for temperature in TEMPERATURES:
        assert (word_kd_loss(s, t, temperature=temperature, reduction="none") >= 0).all()
        same = s.clone().requires_grad_(True)
        per = word_kd_loss(same, s, temperature=temperature, reduction="none")
        assert torch.equal(per, torch.zeros(200))
        (grad,) = torch.autograd.grad(per.sum(), same)
        torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-6)


def test_int32_indices() -> None:
    s, t = logits(8)
    idx, tl = topk_of(t, K, seed=9)
    a = word_kd_loss(s, topk_indices=idx.int(), topk_logits=tl, reduction="none")
    b = word_kd_loss(s, topk_indices=idx.long(), topk_logits=tl, reduction="none")
    assert torch.equal(a, b)


# ---------------------------------------------------------------- top-k plus the rest


def collapsed_kl(student: torch.Tensor, teacher: torch.Tensor, idx: torch.Tensor, temperature: float) -> torch.Tensor:
    """The brute force: both full distributions at T, collapsed onto the k ids and one class for all the
    other ids (probabilities summed), then KL per token, in float64 (differentiable in ``student``)."""
    p_t, p_s = (torch.softmax(x.double() / temperature, -1) for x in (teacher, student))
    outside = torch.ones_like(p_t).scatter(1, idx, 0.0)
    q = torch.cat([p_t.gather(1, idx), (p_t * outside).sum(1, keepdim=True)], 1)
    r = torch.cat([p_s.gather(1, idx), (p_s * outside).sum(1, keepdim=True)], 1)
    return (q * (q.log() - r.log())).sum(1)


def rest_inputs(teacher: torch.Tensor, idx: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """What a top-k cache with the rest stores: the logits at the k ids and log(teacher mass outside them) at T."""
    log_p_t = torch.log_softmax(teacher.double() / temperature, -1)
    rest = log_p_t.scatter(1, idx, -math.inf).logsumexp(1)
    return teacher.gather(1, idx), rest.float()


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("true_topk", (True, False))
def test_topk_rest_is_the_collapsed_full_kl(temperature: float, true_topk: bool) -> None:
    s, t = logits(40, scale=3.0)
    idx = t.topk(K, dim=1).indices if true_topk else topk_of(t, K, seed=41)[0]
    tl, rest = rest_inputs(t, idx, temperature)
    student = s.double().requires_grad_(True)
    out = word_kd_loss(student, topk_indices=idx, topk_logits=tl.double(), rest_log_mass=rest.double(),
                       temperature=temperature, reduction="none")
    expected_s = s.double().requires_grad_(True)
    expected = collapsed_kl(expected_s, t, idx, temperature)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-9)
    weights = torch.arange(1.0, N + 1, dtype=torch.float64)
    (g,) = torch.autograd.grad((out * weights).sum(), student)
    (g_expected,) = torch.autograd.grad((expected * weights).sum(), expected_s)
    torch.testing.assert_close(g, g_expected, rtol=1e-6, atol=1e-9)
    # float32 inputs as training gives them: the same within float32 rounding
    out32 = word_kd_loss(s, topk_indices=idx, topk_logits=tl, rest_log_mass=rest, temperature=temperature,
                         reduction="none")
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), expected.detach(), rtol=1e-4, atol=1e-6)


def test_topk_rest_differs_from_renormalised_topk_and_is_full_kd_at_k_equal_v() -> None:
    s, t = logits(42, scale=1.0)  # flat teachers: the top 3 of 7 hold well under all the mass at T = 2
    idx = t.topk(K, dim=1).indices
    tl, rest = rest_inputs(t, idx, 2.0)
    with_rest = word_kd_loss(s, topk_indices=idx, topk_logits=tl, rest_log_mass=rest, temperature=2.0)
    renormalised = word_kd_loss(s, topk_indices=idx, topk_logits=tl, temperature=2.0)
    assert float(with_rest - renormalised) == pytest.approx(
        float(collapsed_kl(s, t, idx, 2.0).mean()) - float(ref_kl(s, idx=idx, topk=tl, temperature=2.0)), abs=1e-6)
    assert abs(float(with_rest - renormalised)) > 1e-2
    # k = V: no mass outside (log 0 = -inf), and the loss and its gradient are those of full KD.
    idx_all, tl_all = topk_of(t, V, seed=43)
    rest_none = torch.full((N,), -math.inf)
    a, b = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    full = word_kd_loss(a, t, temperature=2.0, reduction="sum")
    rested = word_kd_loss(b, topk_indices=idx_all, topk_logits=tl_all, rest_log_mass=rest_none, temperature=2.0,
                          reduction="sum")
    torch.testing.assert_close(rested, full)
    full.backward()
    rested.backward()
    assert torch.isfinite(b.grad).all()
    torch.testing.assert_close(b.grad, a.grad)


def test_topk_rest_masked_rows_and_gradcheck() -> None:
    s, t = (x.double() for x in logits(44))
    idx = topk_of(t, K, seed=45)[0]
    tl, rest = rest_inputs(t, idx, 0.5)
    m = as_mask(MASKS["partial"])
    s.requires_grad_(True)
    per = word_kd_loss(s, topk_indices=idx, topk_logits=tl, rest_log_mass=rest.double(), temperature=0.5, mask=m,
                       reduction="none")
    assert (per[~m] == 0).all() and (per[m] > 0).all()
    assert torch.autograd.gradcheck(
        lambda x: word_kd_loss(x, topk_indices=idx, topk_logits=tl, rest_log_mass=rest.double(), temperature=0.5,
                               mask=m), (s,))


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("reduction", ("mean", "sum"))
@pytest.mark.parametrize("mask", MASKS)
def test_full_gradient_is_analytic(temperature: float, reduction: str, mask: str) -> None:
    s, t = (x.double() for x in logits(10))
    s.requires_grad_(True)
    m = MASKS[mask]
    loss = word_kd_loss(s, t, temperature=temperature, mask=as_mask(m), reduction=reduction)
    (grad,) = torch.autograd.grad(loss, s)
    # d KL / d z_S = (p_S - p_T) / T for each counted token.
    counted = torch.ones(N, dtype=torch.float64) if m is None else torch.tensor(m, dtype=torch.float64)
    expected = (torch.softmax(s.detach() / temperature, -1) - torch.softmax(t / temperature, -1)) / temperature
    expected = expected * counted[:, None]
    if reduction == "mean":
        expected = expected / max(counted.sum().item(), 1.0)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("temperature", "reduction"), ((0.5, "mean"), (2.0, "sum"), (1.0, "none")))
def test_topk_gradcheck(temperature: float, reduction: str) -> None:
    s, t = (x.double() for x in logits(11))
    idx, tl = topk_of(t, K, seed=12)
    m = as_mask(MASKS["partial"])
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: word_kd_loss(x, topk_indices=idx, topk_logits=tl, temperature=temperature, mask=m,
                               reduction=reduction), (s,))


def test_teacher_gets_no_gradient() -> None:
    s, t = logits(13)
    idx, tl = topk_of(t, K, seed=14)
    s.requires_grad_(True)
    t.requires_grad_(True)
    tl = tl.detach().requires_grad_(True)
    (word_kd_loss(s, t) + word_kd_loss(s, topk_indices=idx, topk_logits=tl)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None and tl.grad is None


# ---------------------------------------------------------------- numerics


def test_zero_teacher_probabilities_add_nothing() -> None:
    s, t = logits(15)
    t[0, 2] = -math.inf
    t[3, :4] = -math.inf
    s[0, 2] = -math.inf  # student -inf where p_T = 0: must not give 0 * inf
    t[1, 0] = t[1].max() + 150.0  # the other entries of row 1 underflow to p_T = 0 in float32
    idx, tl = topk_of(t, K, seed=16)
    tl[:, 0] = -math.inf
    for temperature in TEMPERATURES:
        full_s = s.clone().requires_grad_(True)
        full = word_kd_loss(full_s, t, temperature=temperature, reduction="none")
        check(full, ref_kl(s, t, temperature=temperature, reduction="none"))
        full.sum().backward()
        assert torch.isfinite(full_s.grad).all()

        topk_s = s.clone().requires_grad_(True)
        topk = word_kd_loss(topk_s, topk_indices=idx, topk_logits=tl, temperature=temperature, reduction="none")
        check(topk, ref_kl(s, idx=idx, topk=tl, temperature=temperature, reduction="none"))
        topk.sum().backward()
        assert torch.isfinite(topk_s.grad).all()


def test_masked_garbage_rows_do_not_leak() -> None:
    s, t = logits(17)
    t[1] = -math.inf  # no teacher distribution at all (e.g. padding)
    t[4, 0] = math.nan
    s.requires_grad_(True)
    m = as_mask(MASKS["partial"])
    loss = word_kd_loss(s, t, mask=m)
    check(loss, ref_kl(s.detach(), t.nan_to_num(0.0), mask=MASKS["partial"]))
    loss.backward()
    assert torch.isfinite(s.grad).all() and (s.grad[~m] == 0).all()
    # A non-finite student row (NaN per-token loss) is dropped in the forward pass too.
    clean_s, clean_t = logits(17)
    bad_s = clean_s.clone()
    bad_s[4, 0] = math.inf
    check(word_kd_loss(bad_s, clean_t, mask=m), ref_kl(clean_s, clean_t, mask=MASKS["partial"]))


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_half_precision_computes_in_float32(dtype: torch.dtype) -> None:
    s, t = (x.to(dtype) for x in logits(18))
    idx, tl = topk_of(t, K, seed=19)
    m = as_mask(MASKS["partial"])
    for temperature in (1.0, 2.0):
        half_s = s.clone().requires_grad_(True)
        full = word_kd_loss(half_s, t, temperature=temperature, mask=m)
        topk = word_kd_loss(half_s, topk_indices=idx, topk_logits=tl, temperature=temperature, mask=m)
        assert full.dtype == topk.dtype == torch.float32
        torch.testing.assert_close(full, word_kd_loss(s.float(), t.float(), temperature=temperature, mask=m))
        torch.testing.assert_close(topk, word_kd_loss(s.float(), topk_indices=idx, topk_logits=tl.float(),
                                                      temperature=temperature, mask=m))
        check(full, ref_kl(s, t, temperature=temperature, mask=MASKS["partial"]))
        (full + topk).backward()
        assert half_s.grad.dtype == dtype and torch.isfinite(half_s.grad).all()


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_huge_logits(temperature: float) -> None:
    s, t = logits(20)
    offset = 1e4
    idx, _ = topk_of(t, K, seed=21)
    # ~1e4 offsets: the loss must equal the loss of the shifted (small) logits.
    for big_s, big_t in ((s + offset, t - offset), (s * offset, t * offset)):
        big_s = big_s.requires_grad_(True)
        shifted_s = big_s.detach().double() - big_s.detach().double().amax(1, keepdim=True)
        shifted_t = big_t.double() - big_t.double().amax(1, keepdim=True)
        full = word_kd_loss(big_s, big_t, temperature=temperature, reduction="none")
        check(full, ref_kl(shifted_s, shifted_t, temperature=temperature, reduction="none"))
        topk = word_kd_loss(big_s, topk_indices=idx, topk_logits=big_t.gather(1, idx), temperature=temperature,
                            reduction="none")
        check(topk, ref_kl(shifted_s, idx=idx, topk=shifted_t.gather(1, idx), temperature=temperature,
                           reduction="none"))
        (full.sum() + topk.sum()).backward()
        assert torch.isfinite(big_s.grad).all()


# ---------------------------------------------------------------- errors


def _errors() -> dict[str, tuple]:
    s, t = logits(22)
    idx, tl = topk_of(t, K, seed=23)
    return {
        "no teacher": ((s,), {}, "no teacher"),
        "both": ((s, t), {"topk_indices": idx, "topk_logits": tl}, "not both"),
        "indices only": ((s,), {"topk_indices": idx}, "together"),
        "logits only": ((s,), {"topk_logits": tl}, "together"),
        "teacher shape": ((s, t[:, :-1]), {}, r"\(5, 6\).*\(5, 7\)"),
        "student 3-d": ((s[None], t[None]), {}, r"\(1, 5, 7\)"),
        "topk shapes": ((s,), {"topk_indices": idx, "topk_logits": tl[:, :-1]}, r"\(5, 2\).*\(5, 3\)"),
        "topk rows": ((s,), {"topk_indices": idx[:-1], "topk_logits": tl[:-1]}, r"\(4, 3\)"),
        "topk too big": ((s,), {"topk_indices": torch.zeros(N, V + 1, dtype=torch.long),
                                "topk_logits": torch.zeros(N, V + 1)}, "top-k size"),
        "float indices": ((s,), {"topk_indices": idx.float(), "topk_logits": tl}, "int32 or int64"),
        "int16 indices": ((s,), {"topk_indices": idx.short(), "topk_logits": tl}, "int32 or int64"),
        "mask shape": ((s, t), {"mask": torch.ones(N + 1, dtype=torch.bool)}, r"\(6,\)"),
        "mask dtype": ((s, t), {"mask": torch.ones(N)}, "bool"),
        "reduction": ((s, t), {"reduction": "avg"}, "reduction"),
        "zero temperature": ((s, t), {"temperature": 0.0}, "temperature"),
        "negative temperature": ((s, t), {"temperature": -1.0}, "temperature"),
        "nan temperature": ((s, t), {"temperature": math.nan}, "temperature"),
        "rest without top-k": ((s, t), {"rest_log_mass": torch.zeros(N)}, "goes with a top-k teacher"),
        "rest shape": ((s,), {"topk_indices": idx, "topk_logits": tl, "rest_log_mass": torch.zeros(N, 1)},
                       r"rest_log_mass must be a float \(5,\) tensor"),
    }


@pytest.mark.parametrize("case", _errors())
def test_errors(case: str) -> None:
    args, kwargs, match = _errors()[case]
    with pytest.raises(ValueError, match=match):
        word_kd_loss(*args, **kwargs)
