"""The fused Triton kernels against the PyTorch references: values, gradients, masks, padding.

Without CUDA the kernels run on CPU tensors in Triton's interpreter: TRITON_INTERPRET must
be set before triton is first imported, which test/conftest.py does.  The shapes are
tiny and the vocabulary blocks forced small, so every multi-block loop runs.  With CUDA
the same tests run compiled on the GPU, plus public-API tests at realistic sizes.
"""

from __future__ import annotations

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
assert CUDA or os.environ.get("TRITON_INTERPRET") == "1", "conftest.py sets TRITON_INTERPRET before triton is imported"

triton = pytest.importorskip("triton", reason="Triton is not installed (the fused kernels need it)")

from kdst.losses import rnnt_kd_loss, rnnt_loss, rnnt_loss_and_kd, rnnt_loss_reference, word_kd_loss  # noqa: E402
from kdst.losses.rnnt import lattice_occupancy  # noqa: E402
from kdst.losses.triton.rnnt import fused_lattice_losses, fused_lattice_occupancy, lattice_block  # noqa: E402
from kdst.losses.triton.word_kd import word_kd_per_token  # noqa: E402

# The interpreter evaluates masked-out lanes too (-inf - -inf, 0 * nan), which the kernels
# drop, and reads scalars through a numpy path that numpy 2.x deprecates.
pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")]

DEVICE = "cuda" if CUDA else "cpu"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# (atol, rtol) for gradients: values are float32 sums either way, gradients are rounded to the
# student's dtype, by both sides but not at the same step, so they may differ by two ulps.
GRAD_TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1e-2, 2 ** -6), torch.float16: (2e-3, 2 ** -9)}


def rand(*shape, seed: int, scale: float = 3.0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEVICE)


def grad_of(loss: torch.Tensor, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad((loss * weights).sum(), x)
    return g.float()


# ---------------------------------------------------------------- word-level KD

N, V = 6, 37  # V = 37 with blocks of 8: four full blocks and a ragged one


def word_case(dtype, seed=0):
    student = rand(N, V, seed=seed, dtype=dtype).requires_grad_()
    teacher = rand(N, V, seed=seed + 1, dtype=dtype)
    weights = torch.arange(1.0, N + 1, device=DEVICE)  # a different upstream gradient per row
    return student, teacher, weights


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", (0.5, 1.0, 2.0))
@pytest.mark.parametrize("mask", (None, [True, False, True, True, False, True], [False] * N))
def test_word_kd_full_matches_reference(dtype, temperature, mask):
    student, teacher, weights = word_case(dtype)
    mask = torch.tensor(mask, device=DEVICE) if mask is not None else None
    fused = word_kd_per_token(student, teacher, None, None, temperature, mask, block_v=8)
    reference = word_kd_loss(student, teacher, temperature=temperature, mask=mask, reduction="none")
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)
    g_fused, g_ref = grad_of(fused, student, weights), grad_of(reference, student, weights)
    torch.testing.assert_close(g_fused, g_ref, atol=GRAD_TOL[dtype][0], rtol=GRAD_TOL[dtype][1])
    if mask is not None:
        assert not g_fused[~mask].any() and not fused[~mask].any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", (1, 3, V))
@pytest.mark.parametrize("index_dtype", (torch.int32, torch.int64))
def test_word_kd_topk_matches_reference(dtype, k, index_dtype):
    student, _, weights = word_case(dtype, seed=3)
    g = torch.Generator().manual_seed(k)
    index = torch.stack([torch.randperm(V, generator=g)[:k] for _ in range(N)]).to(index_dtype).to(DEVICE)
    topk = rand(N, k, seed=9, dtype=dtype)
    mask = torch.tensor([True, True, False, True, True, True], device=DEVICE)
    for temperature in (1.0, 2.0):
        fused = word_kd_per_token(student, None, index, topk, temperature, mask, block_v=8)
        reference = word_kd_loss(student, topk_indices=index, topk_logits=topk, temperature=temperature, mask=mask,
                                 reduction="none")
        torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad_of(fused, student, weights), grad_of(reference, student, weights),
                                   atol=GRAD_TOL[dtype][0], rtol=GRAD_TOL[dtype][1])


def test_word_kd_zero_teacher_mass_adds_nothing():
    """-inf teacher logits (full and top-k), an all -inf teacher row, and a masked row of NaNs."""
    student, teacher, weights = word_case(torch.float32, seed=5)
    teacher[0, :10] = float("-inf")
    teacher[1] = float("-inf")
    teacher[2] = float("nan")
    mask = torch.tensor([True, True, False, True, True, True], device=DEVICE)
    fused = word_kd_per_token(student, teacher, None, None, 1.0, mask, block_v=8)
    reference = word_kd_loss(student, teacher, mask=mask, reduction="none")
    torch.testing.assert_close(fused, reference)
    g = grad_of(fused, student, weights)
    assert torch.isfinite(g).all() and not g[1].any() and not g[2].any()
    torch.testing.assert_close(g, grad_of(word_kd_loss(student, teacher, mask=mask, reduction="none"), student,
                                          weights), atol=1e-6, rtol=0)

    index = torch.tensor([[0, 5, 9]] * N, device=DEVICE)
    topk = rand(N, 3, seed=2)
    topk[0, 1] = float("-inf")
    topk[3] = float("-inf")
    fused = word_kd_per_token(student, None, index, topk, 1.0, None, block_v=8)
    reference = word_kd_loss(student, topk_indices=index, topk_logits=topk, reduction="none")
    torch.testing.assert_close(fused, reference)
    torch.testing.assert_close(grad_of(fused, student, weights), grad_of(reference, student, weights),
                               atol=1e-6, rtol=0)


# k = V (no rest: log 0 = -inf) once: the interpreter runs the id-membership loop per column and id
@pytest.mark.parametrize(("dtype", "k"), [(d, k) for d in DTYPES for k in (1, 5)] + [(torch.float32, V)])
def test_word_kd_topk_rest_matches_reference(dtype, k):
    """Top-k plus the rest: the kernel's loss and gradient against the PyTorch reference (itself tested
    against the collapsed full distributions in test_word_kd.py), at several temperatures, with a masked row."""
    student, teacher, weights = word_case(dtype, seed=21)
    index = teacher.float().topk(k, dim=1).indices
    mask = torch.tensor([True, True, False, True, True, True], device=DEVICE)
    for temperature in (0.5, 1.0, 2.0):
        log_p_t = torch.log_softmax(teacher.float() / temperature, -1)
        rest = log_p_t.scatter(1, index, float("-inf")).logsumexp(1)  # -inf at k = V
        topk = teacher.gather(1, index)
        fused = word_kd_per_token(student, None, index, topk, temperature, mask, rest_log_mass=rest, block_v=8)
        reference = word_kd_loss(student, topk_indices=index, topk_logits=topk, rest_log_mass=rest,
                                 temperature=temperature, mask=mask, reduction="none")
        torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)
        g_fused = grad_of(fused, student, weights)
        assert torch.isfinite(g_fused).all() and not g_fused[2].any()
        torch.testing.assert_close(g_fused, grad_of(reference, student, weights),
                                   atol=GRAD_TOL[dtype][0], rtol=GRAD_TOL[dtype][1])


def test_word_kd_topk_rest_when_the_students_rest_is_tiny():
    """A student that puts almost all its mass on the k ids: p_S(rest) ~ 1e-30, far below float32's
    1 - sum(p_S) resolution; the kernel's log-sum-exp over the other columns still gets it right."""
    student = torch.zeros(2, V, device=DEVICE)
    student[:, :3] = 70.0
    student = student.requires_grad_()
    index = torch.tensor([[0, 1, 2], [2, 0, 1]], device=DEVICE)
    topk = torch.tensor([[0.0, -1.0, -2.0], [0.0, -0.5, -3.0]], device=DEVICE)
    rest = torch.log(torch.tensor([0.2, 1e-3], device=DEVICE))
    weights = torch.tensor([1.0, 3.0], device=DEVICE)
    fused = word_kd_per_token(student, None, index, topk, 1.0, None, rest_log_mass=rest, block_v=8)
    reference = word_kd_loss(student, topk_indices=index, topk_logits=topk, rest_log_mass=rest, reduction="none")
    torch.testing.assert_close(fused, reference, atol=1e-4, rtol=1e-6)
    assert float(fused[0].detach()) > 0.2 * 60  # q_r log(q_r / p_S(rest)) with log p_S(rest) ~ -70 + log(34)
    # atol: at logits of 70 the kernel's float32 log-sum-exp (70 + log 3) is one ulp (8e-6) coarse, which the
    # reference's max-shifted log_softmax avoids; the entries outside the k ids agree to 1e-6 relative.
    g_fused, g_ref = grad_of(fused, student, weights), grad_of(reference, student, weights)
    torch.testing.assert_close(g_fused, g_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_fused[:, 3:], g_ref[:, 3:], atol=0, rtol=1e-6)


def test_word_kd_repeated_ids_in_a_row():
    """A sampled cache pads its empty slots with id 0 (count 0), so a row may hold id 0 twice: once real, once
    empty.  The gradient at id 0 is that of the full distribution whatever the order of the slots (the kernel
    used to let the empty slot's store overwrite the real one's), and repeated real ids add up (as the
    reference's gather does)."""
    student = rand(3, V, seed=11).requires_grad_()
    index = torch.tensor([[0, 5, 0, 0], [3, 0, 7, 0], [2, 2, 9, 2]], device=DEVICE)
    counts = torch.tensor([[3.0, 1.0, 0.0, 0.0], [2.0, 0.0, 2.0, 0.0], [1.0, 2.0, 1.0, 0.0]], device=DEVICE)
    values = torch.log(counts)  # as the encoder-decoder hands sampled counts to the loss (T = 1)
    weights = torch.tensor([1.0, 2.0, 0.5], device=DEVICE)
    fused = word_kd_per_token(student, None, index, values, 1.0, None, block_v=8)
    reference = word_kd_loss(student, topk_indices=index, topk_logits=values, reduction="none")
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)
    # the oracle: the empirical distribution over the vocabulary, p_T(j) = (counts at j) / (all counts)
    p_t = torch.zeros(3, V, device=DEVICE).scatter_add_(1, index, counts) / counts.sum(1, keepdim=True)
    p_s = torch.softmax(student.detach(), -1)
    expected = (p_s - p_t) * weights[:, None]
    torch.testing.assert_close(grad_of(fused, student, weights), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad_of(reference, student, weights), expected, atol=1e-6, rtol=1e-5)
    assert float(expected[0, 0]) < -0.1  # the crafted row: a real teacher entry at id 0 pulls its logit up


def test_word_kd_strided_rows_without_grad_and_single_backward():
    wide = rand(N, 2 * V, seed=7)
    student, teacher = wide[:, :V], rand(V, N, seed=8).t()  # a row stride of 2V; a transposed teacher
    with torch.no_grad():
        fused = word_kd_per_token(student, teacher, None, None, 1.5, None, block_v=16)
    torch.testing.assert_close(fused, word_kd_loss(student, teacher, temperature=1.5, reduction="none"))

    student = student.clone().requires_grad_()
    loss = word_kd_per_token(student, teacher, None, None, 1.0, None, block_v=16).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):  # the gradient was scaled in place
        loss.backward()


# ---------------------------------------------------------------- RNN-T loss and RNN-T KD

B, T, U, VOCAB = 3, 6, 4, 11
FRAMES, LABELS = [6, 4, 1], [4, 2, 0]  # a full lattice, a padded one, one frame and no label


def lattice_case(dtype, seed=0, blank=0, vocab=VOCAB, scale=2.0):
    student = rand(B, T, U + 1, vocab, seed=seed, scale=scale, dtype=dtype)
    teacher = rand(B, T, U + 1, vocab, seed=seed + 1, scale=scale, dtype=dtype)
    for b, (frames, labels) in enumerate(zip(FRAMES, LABELS)):  # padding that must never be read
        for x in (student, teacher):
            x[b, frames:] = float("nan")
            x[b, :, labels + 1:] = float("inf")
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, vocab - 1, (B, U), generator=g)
    targets = (targets + (targets >= blank).long()).to(DEVICE)  # never the blank
    lengths = torch.tensor(FRAMES, device=DEVICE), torch.tensor(LABELS, device=DEVICE)
    weights = torch.tensor([1.0, 2.0, 0.5], device=DEVICE)
    return student.requires_grad_(), teacher, targets, lengths, weights


def assert_padding_has_zero_grad(grad: torch.Tensor) -> None:
    for b, (frames, labels) in enumerate(zip(FRAMES, LABELS)):
        assert not grad[b, frames:].any() and not grad[b, :, labels + 1:].any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("blank", (0, VOCAB - 1))
def test_rnnt_loss_matches_reference(dtype, blank):
    student, _, targets, (frames, labels), weights = lattice_case(dtype, blank=blank)
    nll, kd = fused_lattice_losses(student, None, targets, frames, labels, with_rnnt=True, kd_mode=None,
                                   blank=blank, block_v=4)
    reference = rnnt_loss_reference(student, targets, frames, labels, blank=blank, reduction="none")
    torch.testing.assert_close(nll, reference, atol=1e-5, rtol=1e-5)
    assert not kd.any()
    g = grad_of(nll, student, weights)
    torch.testing.assert_close(g, grad_of(reference, student, weights), atol=GRAD_TOL[dtype][0], rtol=GRAD_TOL[dtype][1])
    assert_padding_has_zero_grad(g)


@pytest.mark.parametrize("mode", ("full", "collapsed"))
@pytest.mark.parametrize("temperature", (1.0, 2.0))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_rnnt_kd_and_the_combined_loss_match_references(mode, temperature, dtype):
    student, teacher, targets, (frames, labels), weights = lattice_case(dtype, seed=4)
    kd_weights = weights.flip(0)

    def kd_reference():
        return rnnt_kd_loss(student, teacher, targets, frames, labels, mode=mode, temperature=temperature,
                            reduction="none")

    _, kd = fused_lattice_losses(student, teacher, targets, frames, labels, with_rnnt=False, kd_mode=mode,
                                 temperature=temperature, block_v=4)
    torch.testing.assert_close(kd, kd_reference(), atol=1e-5, rtol=1e-5)
    g = grad_of(kd, student, kd_weights)
    torch.testing.assert_close(g, grad_of(kd_reference(), student, kd_weights), atol=GRAD_TOL[dtype][0], rtol=GRAD_TOL[dtype][1])
    assert_padding_has_zero_grad(g)

    nll, kd = fused_lattice_losses(student, teacher, targets, frames, labels, with_rnnt=True, kd_mode=mode,
                                   temperature=temperature, block_v=4)
    (g,) = torch.autograd.grad((nll * weights).sum() + (kd * kd_weights).sum(), student)
    reference = rnnt_loss_reference(student, targets, frames, labels, reduction="none")
    separate = kd_reference()
    torch.testing.assert_close(nll, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kd, separate, atol=1e-5, rtol=1e-5)
    (g_ref,) = torch.autograd.grad((reference * weights).sum() + (separate * kd_weights).sum(), student)
    torch.testing.assert_close(g.float(), g_ref.float(), atol=2 * GRAD_TOL[dtype][0], rtol=2 * GRAD_TOL[dtype][1])


def test_collapsed_rest_stays_exact_at_large_logit_gaps_and_tiny_vocabularies():
    student, teacher, targets, (frames, labels), weights = lattice_case(torch.float32, seed=6)
    with torch.no_grad():  # blank and the next label hold all but ~e^-35 of the mass
        index = torch.cat([targets, targets[:, :1]], dim=1)[:, None, :, None].expand(B, T, U + 1, 1)
        for x in (student, teacher):
            x[..., 0] += 40.0
            x.scatter_add_(-1, index, torch.full(index.shape, 38.0, device=DEVICE))
        teacher.mul_(1.5)
    for temperature in (1.0, 3.0):
        _, kd = fused_lattice_losses(student, teacher, targets, frames, labels, with_rnnt=False,
                                     kd_mode="collapsed", temperature=temperature, block_v=4)
        reference = rnnt_kd_loss(student, teacher, targets, frames, labels, mode="collapsed",
                                 temperature=temperature, reduction="none")
        torch.testing.assert_close(kd, reference, atol=1e-5, rtol=1e-4)

    # V = 2: blank and one label, so the rest class is empty everywhere.
    student, teacher, _, (frames, labels), weights = lattice_case(torch.float32, seed=2, vocab=2)
    targets = torch.ones(B, U, dtype=torch.long, device=DEVICE)
    for mode in ("full", "collapsed"):
        nll, kd = fused_lattice_losses(student, teacher, targets, frames, labels, with_rnnt=True, kd_mode=mode,
                                       block_v=16)
        torch.testing.assert_close(kd, rnnt_kd_loss(student, teacher, targets, frames, labels, mode=mode,
                                                    reduction="none"), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(nll, rnnt_loss_reference(student, targets, frames, labels, reduction="none"),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode, dtype", [("full", torch.float32), ("collapsed", torch.bfloat16)])
def test_rnnt_kd_with_node_weights_matches_the_reference(mode, dtype):
    """Per-node weights (here NaN on padding, which must never be read) scale each node's KL and its gradient."""
    student, teacher, targets, (frames, labels), weights = lattice_case(dtype, seed=10)
    g = torch.Generator().manual_seed(11)
    node_weights = (torch.rand(B, T, U + 1, generator=g) * 2).to(DEVICE)
    node_weights[0, 2, 1] = 0.0
    for b, (f, n) in enumerate(zip(FRAMES, LABELS)):
        node_weights[b, f:] = float("nan")
        node_weights[b, :, n + 1:] = float("nan")

    def reference():
        return rnnt_kd_loss(student, teacher, targets, frames, labels, mode=mode, temperature=2.0, reduction="none",
                            node_weights=node_weights)

    nll, kd = fused_lattice_losses(student, teacher, targets, frames, labels, with_rnnt=True, kd_mode=mode,
                                   temperature=2.0, block_v=4, node_weights=node_weights)
    torch.testing.assert_close(kd, reference(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(kd, rnnt_kd_loss(student, teacher, targets, frames, labels, mode=mode,
                                               temperature=2.0, reduction="none"))
    (g_fused,) = torch.autograd.grad((nll * weights).sum() + (kd * weights.flip(0)).sum(), student)
    ref_nll = rnnt_loss_reference(student, targets, frames, labels, reduction="none")
    (g_ref,) = torch.autograd.grad((ref_nll * weights).sum() + (reference() * weights.flip(0)).sum(), student)
    torch.testing.assert_close(g_fused.float(), g_ref.float(), atol=2 * GRAD_TOL[dtype][0], rtol=2 * GRAD_TOL[dtype][1])
    assert_padding_has_zero_grad(g_fused)


@pytest.mark.parametrize("dtype, blank", [(torch.float32, 0), (torch.bfloat16, VOCAB - 1), (torch.float16, 0)])
def test_occupancy_matches_the_reference(dtype, blank):
    logits, _, targets, (frames, labels), _ = lattice_case(dtype, seed=12, blank=blank)
    fused = fused_lattice_occupancy(logits, targets, frames, labels, blank=blank, block_v=4)
    reference = lattice_occupancy(logits.cpu(), targets.cpu(), frames.cpu(), labels.cpu(), blank=blank)
    torch.testing.assert_close(fused.cpu(), reference, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fused.sum((1, 2)).cpu(), (frames + labels).float().cpu(), atol=1e-4, rtol=1e-5)
    assert not fused.requires_grad


def test_kd_without_frames_is_zero_and_lattice_blocks():
    student, teacher, targets, (_, labels), _ = lattice_case(torch.float32, seed=8)
    frames = torch.tensor([0, 3, 1], device=DEVICE)
    _, kd = fused_lattice_losses(student, teacher, targets, frames, labels, with_rnnt=False, kd_mode="full",
                                 block_v=4)
    assert kd[0] == 0
    torch.testing.assert_close(kd, rnnt_kd_loss(student, teacher, targets, frames, labels, reduction="none"))
    assert lattice_block(1025) == 512 and lattice_block(500) == 512 and lattice_block(8000) == 2048
    assert lattice_block(11) == 16


# ---------------------------------------------------------------- the public functions on a GPU


@pytest.mark.skipif(not CUDA, reason="needs CUDA: the public functions use the kernels only on a GPU")
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_public_functions_on_cuda_match_the_cpu_references(dtype):
    g = torch.Generator().manual_seed(0)
    n, v, k = 512, 8000, 8
    student = (torch.randn(n, v, generator=g) * 3).to(dtype)
    teacher = (torch.randn(n, v, generator=g) * 3).to(dtype)
    mask = torch.rand(n, generator=g) > 0.2
    index = torch.randn(n, v, generator=g).topk(k, dim=-1).indices
    topk = teacher.gather(-1, index)
    for kwargs in ({"teacher_logits": teacher}, {"topk_indices": index, "topk_logits": topk}):
        cpu = student.clone().requires_grad_()
        ref = word_kd_loss(cpu, **kwargs, temperature=2.0, mask=mask)
        ref.backward()
        gpu = student.cuda().requires_grad_()
        out = word_kd_loss(gpu, **{key: x.cuda() for key, x in kwargs.items()}, temperature=2.0, mask=mask.cuda())
        out.backward()
        torch.testing.assert_close(out.cpu(), ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(gpu.grad.float().cpu(), cpu.grad.float(), atol=1e-6, rtol=GRAD_TOL[dtype][1])

    b, t, u, v = 4, 40, 12, 257
    student = (torch.randn(b, t, u + 1, v, generator=g) * 2).to(dtype)
    teacher = (torch.randn(b, t, u + 1, v, generator=g) * 2).to(dtype)
    targets = torch.randint(1, v, (b, u), generator=g)
    frames, labels = torch.tensor([40, 31, 7, 1]), torch.tensor([12, 5, 0, 3])
    for mode in ("full", "collapsed"):
        cpu = student.clone().requires_grad_()
        nll, kd = rnnt_loss(cpu, targets, frames, labels), rnnt_kd_loss(cpu, teacher, targets, frames, labels,
                                                                          mode=mode, temperature=2.0)
        (nll + kd).backward()
        gpu = student.cuda().requires_grad_()
        fused = rnnt_loss_and_kd(gpu, teacher.cuda(), targets.cuda(), frames.cuda(), labels.cuda(), mode=mode,
                                 temperature=2.0)
        sum(fused).backward()
        torch.testing.assert_close(fused[0].cpu(), nll, atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(fused[1].cpu(), kd, atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(gpu.grad.float().cpu(), cpu.grad.float(), atol=GRAD_TOL[dtype][0], rtol=GRAD_TOL[dtype][1])

    # the teacher's occupancy as node weights (kd.node_weights: occupancy)
    gamma = lattice_occupancy(teacher.cuda(), targets.cuda(), frames.cuda(), labels.cuda())
    torch.testing.assert_close(gamma.cpu(), lattice_occupancy(teacher, targets, frames, labels), atol=1e-4, rtol=1e-3)
    cpu = student.clone().requires_grad_()
    kd = rnnt_kd_loss(cpu, teacher, targets, frames, labels, node_weights=gamma.cpu())
    kd.backward()
    gpu = student.cuda().requires_grad_()
    fused = rnnt_loss_and_kd(gpu, teacher.cuda(), targets.cuda(), frames.cuda(), labels.cuda(), node_weights=gamma)[1]
    fused.backward()
    torch.testing.assert_close(fused.cpu(), kd, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(gpu.grad.float().cpu(), cpu.grad.float(), atol=GRAD_TOL[dtype][0], rtol=GRAD_TOL[dtype][1])
