"""RNN-T loss against a brute-force sum over alignments and torchaudio; RNN-T KD against a per-node loop;
node occupancy against a brute-force sum over alignments; the KD normalisers against hand-computed values."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import kdst.losses.rnnt as rnnt_module
from kdst.losses import rnnt_kd_loss, rnnt_loss, rnnt_loss_reference
from kdst.losses.rnnt import kd_normalizer, lattice_occupancy

try:
    import torchaudio.functional as torchaudio_functional
except (ImportError, OSError):  # the KD tests and the reference do not need it
    torchaudio_functional = None

B, T, U, V = 3, 4, 3, 5
T_LEN, U_LEN = [4, 2, 3], [3, 0, 2]  # padding in both lattice dimensions, and an empty transcript
REDUCTIONS = ("mean", "sum", "none")
TEMPERATURES = (0.5, 1.0, 2.0)
MODES = ("full", "collapsed")


# ---------------------------------------------------------------- fixtures and oracles


def lattice(seed: int, b: int = B, t: int = T, u: int = U, v: int = V, scale: float = 2.0,
            blank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 logits (b, t, u+1, v) and int64 targets (b, u), none of them blank (padding included)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, u + 1, v, generator=g, dtype=torch.float64) * scale
    labels = torch.randint(1, v, (b, u), generator=g)
    targets = (blank + labels) % v  # any class but blank
    return logits, targets


def lengths(t_len: list[int] = T_LEN, u_len: list[int] = U_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(t_len), torch.tensor(u_len)


def with_padding(targets: torch.Tensor, u_len: list[int], value: int) -> torch.Tensor:
    out = targets.clone()
    for b, n in enumerate(u_len):
        out[b, n:] = value
    return out


def ref_log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    log_norm = top + math.log(sum(math.exp(x - top) for x in row))
    return [x - log_norm for x in row]


def ref_logsumexp(xs: list[float]) -> float:
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


def brute_rnnt(logits: torch.Tensor, targets: torch.Tensor, t_len: list[int], u_len: list[int], blank: int = 0,
               reduction: str = "none") -> torch.Tensor:
    """-log of the sum over every alignment: T_b - 1 blanks and U_b labels in any order, then a final blank."""
    per = []
    for b, (frames, labels) in enumerate(zip(t_len, u_len)):
        lp = [[ref_log_softmax(node) for node in row] for row in logits[b].double().tolist()]
        y = targets[b].tolist()
        scores = []
        for label_slots in itertools.combinations(range(frames - 1 + labels), labels):
            t = u = 0
            score = 0.0
            for step in range(frames - 1 + labels):
                if step in label_slots:
                    score += lp[t][u][y[u]]
                    u += 1
                else:
                    score += lp[t][u][blank]
                    t += 1
            scores.append(score + lp[frames - 1][labels][blank])
        per.append(-ref_logsumexp(scores))
    return reduce(torch.tensor(per, dtype=torch.float64), reduction)


def reduce(per: torch.Tensor, reduction: str) -> torch.Tensor:
    return per if reduction == "none" else per.sum() if reduction == "sum" else per.mean()


def oracle_kd(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, t_len: list[int],
              u_len: list[int], mode: str, temperature: float = 1.0, blank: int = 0,
              reduction: str = "none", weights: torch.Tensor | None = None) -> torch.Tensor:
    """The KD loss node by node in float64 torch ops (so autograd gives the oracle gradient);
    each node's KL times ``weights[b, t, u]`` when given."""
    v = student.shape[-1]
    per = []
    for b, (frames, labels) in enumerate(zip(t_len, u_len)):
        total = student.new_zeros((), dtype=torch.float64)
        for t in range(frames):
            for u in range(labels + 1):
                lp_s = torch.log_softmax(student[b, t, u].double() / temperature, -1)
                lp_t = torch.log_softmax(teacher[b, t, u].detach().double() / temperature, -1)
                if mode == "full":
                    groups = [[j] for j in range(v)]
                else:
                    named = [int(targets[b, u]), blank] if u < labels else [blank]
                    groups = [[j] for j in named] + [[j for j in range(v) if j not in named]]
                node = student.new_zeros((), dtype=torch.float64)
                for group in groups:
                    if not group:  # an empty "rest" class (V <= 2)
                        continue
                    lq_s, lq_t = lp_s[group].logsumexp(0), lp_t[group].logsumexp(0)
                    if lq_t.exp() > 0:
                        node = node + lq_t.exp() * (lq_t - lq_s)
                total = total + (node if weights is None else float(weights[b, t, u]) * node)
        per.append(total)
    return reduce(torch.stack(per), reduction)


def check(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert actual.shape == expected.shape
    assert torch.isfinite(actual).all()
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol)


def padded(t_len: list[int], u_len: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """(B, T, U+1) bool: True off the valid nodes."""
    t = torch.arange(shape[1])[None, :, None] >= torch.tensor(t_len)[:, None, None]
    u = torch.arange(shape[2])[None, None, :] > torch.tensor(u_len)[:, None, None]
    return t | u


def garbage_padding(x: torch.Tensor, t_len: list[int], u_len: list[int], seed: int) -> torch.Tensor:
    """x with its padded nodes replaced by huge values, NaN and inf."""
    g = torch.Generator().manual_seed(seed)
    junk = (torch.randn(x.shape, generator=g, dtype=torch.float64) * 1e3).to(x.dtype)
    junk.view(-1)[::7] = math.nan
    junk.view(-1)[3::11] = math.inf
    return torch.where(padded(t_len, u_len, x.shape)[..., None], junk, x)


# ---------------------------------------------------------------- RNN-T loss: values


@pytest.mark.parametrize("fn", (rnnt_loss, rnnt_loss_reference))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("blank", (0, V - 1))
def test_rnnt_matches_brute_force(fn, dtype: torch.dtype, reduction: str, blank: int) -> None:
    tl, ul = lengths()
    for seed in range(3):
        x, y = lattice(seed, blank=blank)
        out = fn(x.to(dtype), y, tl, ul, blank=blank, reduction=reduction)
        assert out.dtype == dtype
        tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
        check(out, brute_rnnt(x.to(dtype), y, T_LEN, U_LEN, blank, reduction), **tol)


def test_rnnt_other_lattice_shapes() -> None:
    # U > T, T_b = 1, and a batch whose longest utterance is shorter than the padded dims.
    for seed, (t, u, t_len, u_len) in enumerate(((2, 3, [2, 1], [3, 3]), (4, 2, [1, 3], [2, 1]),
                                                 (3, 3, [2, 2], [1, 2]))):
        x, y = lattice(10 + seed, b=2, t=t, u=u)
        tl, ul = lengths(t_len, u_len)
        expected = brute_rnnt(x, y, t_len, u_len)
        check(rnnt_loss(x.float(), y, tl, ul, reduction="none"), expected)
        check(rnnt_loss_reference(x, y, tl, ul, reduction="none"), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(torchaudio_functional is None, reason="torchaudio is not installed")
def test_rnnt_matches_torchaudio() -> None:
    # torchaudio wants int32, max lengths equal to the dims, and ignores padded targets.
    x, y = lattice(20, b=3, t=4, u=3, v=6)
    x = x.float()
    t_len, u_len = [4, 3, 2], [2, 3, 0]
    tl, ul = torch.tensor(t_len, dtype=torch.int32), torch.tensor(u_len, dtype=torch.int32)
    y = with_padding(y, u_len, 0).int()
    w = torch.tensor([0.5, 1.0, 2.0])
    grads = []
    for fn in (torchaudio_functional.rnnt_loss, rnnt_loss, rnnt_loss_reference):
        xg = x.clone().requires_grad_(True)
        out = fn(xg, y, tl, ul, blank=0, reduction="none")
        check(out, brute_rnnt(x, y, t_len, u_len))
        (out * w).sum().backward()
        grads.append(xg.grad)
    for grad in grads[1:]:
        torch.testing.assert_close(grad, grads[0], rtol=1e-5, atol=1e-6)


def test_empty_transcripts() -> None:
    # U = 0 for every utterance (torchaudio supports it): the loss is -sum_t log p_blank.
    x, _ = lattice(30, b=2, t=3, u=0)
    y = torch.zeros(2, 0, dtype=torch.long)
    tl, ul = lengths([3, 2], [0, 0])
    expected = torch.tensor([-sum(ref_log_softmax(x[b, t, 0].tolist())[0] for t in range(n))
                             for b, n in enumerate([3, 2])], dtype=torch.float64)
    check(rnnt_loss(x.float(), y, tl, ul, reduction="none"), expected)
    check(rnnt_loss_reference(x, y, tl, ul, reduction="none"), expected, rtol=1e-10, atol=1e-10)
    # All transcripts empty but the targets tensor padded to U = 3.
    x, y = lattice(31)
    tl, ul = lengths(T_LEN, [0, 0, 0])
    expected = brute_rnnt(x, y, T_LEN, [0, 0, 0])
    check(rnnt_loss(x.float(), y, tl, ul, reduction="none"), expected)
    check(rnnt_loss_reference(x, y, tl, ul, reduction="none"), expected, rtol=1e-10, atol=1e-10)


def test_rnnt_int32_int64_and_padding_labels() -> None:
    x, y = lattice(40)
    x = x.float()
    tl, ul = lengths()
    base = rnnt_loss(x, y, tl, ul, reduction="none")
    for fn in (rnnt_loss, rnnt_loss_reference):
        for pad in (-1, 0, 99):  # padded targets may hold anything
            yp = with_padding(y, U_LEN, pad)
            assert torch.equal(fn(x, yp.int(), tl.int(), ul.int(), reduction="none"),
                               fn(x, yp.long(), tl.long(), ul.long(), reduction="none"))
            torch.testing.assert_close(fn(x, yp, tl.int(), ul, reduction="none"), base)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
@pytest.mark.parametrize("fn", (rnnt_loss, rnnt_loss_reference))
def test_rnnt_half_precision_computes_in_float32(fn, dtype: torch.dtype) -> None:
    x, y = lattice(50)
    x = x.to(dtype)
    tl, ul = lengths()
    xg = x.clone().requires_grad_(True)
    out = fn(xg, y, tl, ul, reduction="none")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, rnnt_loss_reference(x.float(), y, tl, ul, reduction="none"))
    check(out, brute_rnnt(x, y, T_LEN, U_LEN))
    out.sum().backward()
    assert xg.grad.dtype == dtype and torch.isfinite(xg.grad).all()


def test_rnnt_large_logit_gaps() -> None:
    # +-40 logits: every node is nearly one-hot, log-probabilities reach -80 per step.
    g = torch.Generator().manual_seed(60)
    for blank in (0, 2):
        x, y = lattice(61, blank=blank)
        x = (torch.randint(0, 2, x.shape, generator=g) * 80.0 - 40.0 + x * 0.1).float()
        x[0, :, :, blank] = 40.0  # utterance 0 strongly prefers blank everywhere
        tl, ul = lengths()
        expected = brute_rnnt(x, y, T_LEN, U_LEN, blank)
        for fn in (rnnt_loss, rnnt_loss_reference):
            xg = x.clone().requires_grad_(True)
            out = fn(xg, y, tl, ul, blank=blank, reduction="none")
            check(out, expected, rtol=1e-5, atol=1e-4)
            out.sum().backward()
            assert torch.isfinite(xg.grad).all()


# ---------------------------------------------------------------- RNN-T loss: gradients and padding


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_rnnt_gradient_matches_reference(reduction: str) -> None:
    x, y = lattice(70)
    tl, ul = lengths()
    w = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
    fast = x.float().requires_grad_(True)
    ref = x.clone().requires_grad_(True)
    for xg in (fast, ref):
        out = (rnnt_loss if xg is fast else rnnt_loss_reference)(xg, y, tl, ul, reduction=reduction)
        (out * w.to(out.dtype) if reduction == "none" else out).sum().backward()
    torch.testing.assert_close(fast.grad.double(), ref.grad, rtol=1e-4, atol=1e-6)
    pad = padded(T_LEN, U_LEN, x.shape)
    assert (fast.grad[pad] == 0).all() and (ref.grad[pad] == 0).all()


def test_rnnt_reference_gradcheck() -> None:
    x, y = lattice(71, scale=1.0)
    tl, ul = lengths()
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: rnnt_loss_reference(z, y, tl, ul, reduction="none"), (x,))


@pytest.mark.parametrize("fn", (rnnt_loss, rnnt_loss_reference))
def test_rnnt_padding_is_ignored(fn) -> None:
    x, y = lattice(72)
    x = x.float()
    tl, ul = lengths()
    grads, outs = [], []
    for logits in (x, garbage_padding(x, T_LEN, U_LEN, seed=73)):
        xg = logits.clone().requires_grad_(True)
        outs.append(fn(xg, y, tl, ul, reduction="none"))
        outs[-1].sum().backward()
        grads.append(xg.grad)
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(grads[0], grads[1])
    assert (grads[1][padded(T_LEN, U_LEN, x.shape)] == 0).all()


def test_rnnt_reference_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = lattice(74)
    tl, ul = lengths()
    whole = x.clone().requires_grad_(True)
    rnnt_loss_reference(whole, y, tl, ul).backward()
    monkeypatch.setattr(rnnt_module, "_CHUNK_ELEMENTS", 1)  # one frame row per block
    rows = x.clone().requires_grad_(True)
    loss = rnnt_loss_reference(rows, y, tl, ul)
    loss.backward()
    check(loss, brute_rnnt(x, y, T_LEN, U_LEN, reduction="mean"), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(rows.grad, whole.grad, rtol=1e-12, atol=1e-14)


def test_rnnt_loss_falls_back_to_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[0].dtype)
        return rnnt_loss_reference(*args, **kwargs)

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this device")

    monkeypatch.setattr(rnnt_module, "rnnt_loss_reference", counted)
    x, y = lattice(75)
    tl, ul = lengths()
    expected = brute_rnnt(x, y, T_LEN, U_LEN)
    check(rnnt_loss(x, y, tl, ul, reduction="none"), expected, rtol=1e-10, atol=1e-10)  # float64: not torchaudio's
    monkeypatch.setattr(rnnt_module, "_TORCHAUDIO", [None])  # torchaudio missing
    check(rnnt_loss(x.float(), y, tl, ul, reduction="none"), expected)
    monkeypatch.setattr(rnnt_module, "_TORCHAUDIO", [broken])  # torchaudio failing
    with pytest.warns(UserWarning, match="no kernel"):
        check(rnnt_loss(x.float(), y, tl, ul, reduction="none"), expected)
    assert calls == [torch.float64, torch.float32, torch.float32]


# ---------------------------------------------------------------- RNN-T KD: values and gradients


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_kd_matches_oracle(mode: str, temperature: float, reduction: str) -> None:
    s, y = lattice(80)
    t, _ = lattice(81)
    tl, ul = lengths()
    s.requires_grad_(True)
    out = rnnt_kd_loss(s, t, y, tl, ul, mode=mode, temperature=temperature, reduction=reduction)
    assert out.dtype == torch.float64
    expected = oracle_kd(s, t, y, T_LEN, U_LEN, mode, temperature, reduction=reduction)
    check(out, expected, rtol=1e-10, atol=1e-12)
    w = torch.linspace(0.5, 2.0, B, dtype=torch.float64) if reduction == "none" else 1.0
    (grad,) = torch.autograd.grad((out * w).sum(), s)
    (expected_grad,) = torch.autograd.grad((expected * w).sum(), s)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_kd_float32_and_blank_last(mode: str) -> None:
    blank = V - 1
    s, y = lattice(82, blank=blank)
    t, _ = lattice(83)
    tl, ul = lengths()
    s32 = s.float().requires_grad_(True)
    out = rnnt_kd_loss(s32, t.float(), y, tl, ul, mode=mode, temperature=2.0, blank=blank, reduction="none")
    assert out.dtype == torch.float32
    s.requires_grad_(True)
    expected = oracle_kd(s, t, y, T_LEN, U_LEN, mode, 2.0, blank=blank)
    check(out, expected)
    out.sum().backward()
    (expected_grad,) = torch.autograd.grad(expected.sum(), s)
    torch.testing.assert_close(s32.grad.double(), expected_grad, rtol=1e-5, atol=1e-6)


def test_kd_collapsed_last_row_is_blank_versus_rest() -> None:
    # One utterance, no labels, one frame: a single node at u = U_b = 0 with classes {blank, rest}.
    s, _ = lattice(84, b=1, t=1, u=0)
    t, _ = lattice(85, b=1, t=1, u=0)
    y = torch.zeros(1, 0, dtype=torch.long)
    ps, pt = (torch.softmax(x[0, 0, 0], -1) for x in (s, t))
    qs, qt = torch.stack([ps[0], 1 - ps[0]]), torch.stack([pt[0], 1 - pt[0]])
    expected = (qt * (qt.log() - qs.log())).sum()
    out = rnnt_kd_loss(s, t, y, *lengths([1], [0]), mode="collapsed", reduction="sum")
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mode", MODES)
def test_kd_padding_gets_no_loss_and_no_gradient(mode: str) -> None:
    s, y = lattice(86)
    t, _ = lattice(87)
    s, t = s.float(), t.float()
    tl, ul = lengths()
    outs, grads = [], []
    for student, teacher in ((s, t), (garbage_padding(s, T_LEN, U_LEN, 88), garbage_padding(t, T_LEN, U_LEN, 89))):
        sg = student.clone().requires_grad_(True)
        outs.append(rnnt_kd_loss(sg, teacher, y, tl, ul, mode=mode, temperature=0.5, reduction="none"))
        outs[-1].sum().backward()
        grads.append(sg.grad)
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(grads[0], grads[1])
    assert (grads[1][padded(T_LEN, U_LEN, s.shape)] == 0).all()


def test_kd_teacher_gets_no_gradient() -> None:
    s, y = lattice(90)
    t, _ = lattice(91)
    tl, ul = lengths()
    s.requires_grad_(True)
    t.requires_grad_(True)
    sum(rnnt_kd_loss(s, t, y, tl, ul, mode=mode) for mode in MODES).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_kd_large_logit_gaps(mode: str, temperature: float) -> None:
    # Label and blank share nearly all the mass (q_rest ~ e^-80): log(1 - q_y - q_blank) would be -inf.
    s, y = lattice(92, scale=0.5)
    t, _ = lattice(93, scale=0.5)
    s, t = s - 40.0, t - 40.0
    idx = torch.cat([y, y[:, :1]], 1)[:, None, :, None].expand(B, T, U + 1, 1)
    s.scatter_(-1, idx, 40.0)
    t[..., 0] = 40.0  # teacher: blank on top, student: label on top
    t[1] = -s[1]  # a reversed teacher: gaps in both directions
    s, t = s.float(), t.float()
    tl, ul = lengths()
    sg = s.clone().requires_grad_(True)
    out = rnnt_kd_loss(sg, t, y, tl, ul, mode=mode, temperature=temperature, reduction="none")
    s64 = s.double().requires_grad_(True)
    expected = oracle_kd(s64, t.double(), y, T_LEN, U_LEN, mode, temperature)
    check(out, expected, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    (expected_grad,) = torch.autograd.grad(expected.sum(), s64)
    assert torch.isfinite(sg.grad).all()
    torch.testing.assert_close(sg.grad.double(), expected_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("blank", (0, 1))
def test_kd_collapsed_equals_full_with_three_classes(blank: int) -> None:
    # V = 3: below u = U_b the classes {label, blank, rest} are the vocabulary itself.  At u = U_b
    # (where rest merges two classes) student and teacher agree, so both modes give 0 there.
    s, y = lattice(94, v=3, blank=blank)
    t, _ = lattice(95, v=3)
    for b, n in enumerate(U_LEN):
        t[b, :, n] = s[b, :, n]
    tl, ul = lengths()
    grads, outs = [], []
    for mode in MODES:
        sg = s.clone().requires_grad_(True)
        outs.append(rnnt_kd_loss(sg, t, y, tl, ul, mode=mode, temperature=1.5, blank=blank, reduction="none"))
        outs[-1].sum().backward()
        grads.append(sg.grad)
    assert (outs[0][[0, 2]] > 0).all() and outs[0][1] == 0  # utterance 1 has only u = U_b nodes
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)


def test_kd_collapsed_equals_full_with_two_classes() -> None:
    # V = 2: the rest class is empty below u = U_b and is the label at u = U_b.
    s, y = lattice(96, v=2)
    t, _ = lattice(97, v=2)
    tl, ul = lengths()
    full, collapsed = (s.clone().requires_grad_(True) for _ in MODES)
    a = rnnt_kd_loss(full, t, y, tl, ul, mode="full", reduction="sum")
    c = rnnt_kd_loss(collapsed, t, y, tl, ul, mode="collapsed", reduction="sum")
    (a + c).backward()
    torch.testing.assert_close(c, a, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(collapsed.grad, full.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_kd_nonnegative_and_zero_for_identical_models(mode: str) -> None:
    s, y = lattice(98, b=4, t=6, u=4, v=9, scale=4.0)
    t, _ = lattice(99, b=4, t=6, u=4, v=9, scale=4.0)
    tl, ul = lengths([6, 3, 5, 1], [4, 0, 2, 4])
    for temperature in TEMPERATURES:
        assert (rnnt_kd_loss(s, t, y, tl, ul, mode=mode, temperature=temperature, reduction="none") > 0).all()
        same = s.clone().requires_grad_(True)
        per = rnnt_kd_loss(same, s, y, tl, ul, mode=mode, temperature=temperature, reduction="none")
        assert torch.equal(per, torch.zeros(4, dtype=torch.float64))
        (grad,) = torch.autograd.grad(per.sum(), same)
        torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-12)


def test_kd_int32_int64_and_zero_frames() -> None:
    s, y = lattice(100)
    t, _ = lattice(101)
    t_len, u_len = [4, 0, 3], [3, 2, 0]  # an utterance without frames has no nodes: loss 0
    tl, ul = lengths(t_len, u_len)
    for mode in MODES:
        a = rnnt_kd_loss(s, t, y.int(), tl.int(), ul.int(), mode=mode, reduction="none")
        b = rnnt_kd_loss(s, t, y.long(), tl.long(), ul.long(), mode=mode, reduction="none")
        assert torch.equal(a, b) and a[1] == 0
        check(a, oracle_kd(s, t, y, t_len, u_len, mode), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
@pytest.mark.parametrize("mode", MODES)
def test_kd_half_precision_computes_in_float32(dtype: torch.dtype, mode: str) -> None:
    s, y = lattice(102)
    t, _ = lattice(103)
    s, t = s.to(dtype), t.to(dtype)
    tl, ul = lengths()
    sg = s.clone().requires_grad_(True)
    out = rnnt_kd_loss(sg, t, y, tl, ul, mode=mode, temperature=2.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, rnnt_kd_loss(s.float(), t.float(), y, tl, ul, mode=mode, temperature=2.0))
    check(out, oracle_kd(s, t, y, T_LEN, U_LEN, mode, 2.0, reduction="mean"))
    out.backward()
    assert sg.grad.dtype == dtype and torch.isfinite(sg.grad).all()


@pytest.mark.parametrize("mode", MODES)
def test_kd_chunking(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    s, y = lattice(104)
    t, _ = lattice(105)
    tl, ul = lengths()
    whole = s.clone().requires_grad_(True)
    expected = rnnt_kd_loss(whole, t, y, tl, ul, mode=mode, reduction="none")
    expected.sum().backward()
    monkeypatch.setattr(rnnt_module, "_CHUNK_ELEMENTS", 1)
    rows = s.clone().requires_grad_(True)
    out = rnnt_kd_loss(rows, t, y, tl, ul, mode=mode, reduction="none")
    out.sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rows.grad, whole.grad, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- node weights, occupancy, normalisers


def brute_occupancy(logits: torch.Tensor, targets: torch.Tensor, t_len: list[int], u_len: list[int],
                    blank: int = 0) -> torch.Tensor:
    """gamma[b, t, u] = sum over every alignment of P(alignment | y, x) x [it passes through (t, u)], by
    enumerating the alignments (T_b - 1 blanks and U_b labels in any order, then the final blank)."""
    out = torch.zeros(logits.shape[:3], dtype=torch.float64)
    for b, (frames, labels) in enumerate(zip(t_len, u_len)):
        lp = [[ref_log_softmax(node) for node in row] for row in logits[b].double().tolist()]
        y = targets[b].tolist()
        paths = []
        for label_slots in itertools.combinations(range(frames - 1 + labels), labels):
            t = u = 0
            score, visited = 0.0, [(0, 0)]
            for step in range(frames - 1 + labels):
                if step in label_slots:
                    score += lp[t][u][y[u]]
                    u += 1
                else:
                    score += lp[t][u][blank]
                    t += 1
                visited.append((t, u))
            paths.append((score + lp[frames - 1][labels][blank], visited))
        log_total = ref_logsumexp([score for score, _ in paths])
        for score, visited in paths:
            for t, u in visited:
                out[b, t, u] += math.exp(score - log_total)
    return out


def node_kl(student: list[float], teacher: list[float], label: int | None, mode: str, blank: int = 0) -> float:
    """One node's KL(teacher || student) in plain Python: over the vocabulary, or over {label, blank, rest}."""
    ps, pt = ([math.exp(x) for x in ref_log_softmax(row)] for row in (student, teacher))
    if mode == "full":
        groups = [[j] for j in range(len(ps))]
    else:
        named = [blank] if label is None else [label, blank]
        groups = [[j] for j in named] + [[j for j in range(len(ps)) if j not in named]]
    qs, qt = ([sum(p[j] for j in group) for group in groups] for p in (ps, pt))
    return sum(b * math.log(b / a) for a, b in zip(qs, qt) if b > 0)


TINY_T, TINY_U = [3, 2, 3, 1], [2, 1, 0, 2]  # T <= 3, U <= 2: at most 10 alignments per utterance


@pytest.mark.parametrize("blank", (0, V - 1))
def test_occupancy_matches_brute_force(blank: int) -> None:
    logits, y = lattice(120, b=4, t=3, u=2, blank=blank, scale=3.0)
    tl, ul = lengths(TINY_T, TINY_U)
    expected = brute_occupancy(logits, y, TINY_T, TINY_U, blank=blank)
    for x, tol in ((logits, 1e-12), (logits.float(), 1e-5)):
        gamma = lattice_occupancy(garbage_padding(x, TINY_T, TINY_U, 121), y, tl, ul, blank=blank)
        assert gamma.dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32)
        torch.testing.assert_close(gamma.double(), expected, rtol=tol, atol=tol)
    # every alignment visits T_b + U_b nodes; the start and the end node are on all of them
    torch.testing.assert_close(expected.sum((1, 2)), (tl + ul).double())
    for b, (frames, labels) in enumerate(zip(TINY_T, TINY_U)):
        assert expected[b, 0, 0] == pytest.approx(1.0) and expected[b, frames - 1, labels] == pytest.approx(1.0)
    assert 0 < expected[0, 1, 1] < 1  # a node that some alignments avoid
    assert (expected[padded(TINY_T, TINY_U, expected.shape)] == 0).all()


def test_occupancy_is_a_constant() -> None:
    logits, y = lattice(122, b=4, t=3, u=2)
    logits.requires_grad_(True)
    gamma = lattice_occupancy(logits, y, *lengths(TINY_T, TINY_U))
    assert not gamma.requires_grad and logits.grad is None
    with torch.no_grad():  # the trainer calls it under no_grad
        torch.testing.assert_close(lattice_occupancy(logits, y, *lengths(TINY_T, TINY_U)), gamma)


@pytest.mark.parametrize("mode", MODES)
def test_kd_with_occupancy_weights_equals_the_hand_sum(mode: str) -> None:
    """KD with the teacher's occupancy as node weights = sum over (t, u) of gamma_T(t, u) x KL(t, u), with
    gamma from the alignment enumeration and each KL by hand; the gradient has no term through gamma."""
    s, y = lattice(123, b=4, t=3, u=2)
    t, _ = lattice(124, b=4, t=3, u=2)
    tl, ul = lengths(TINY_T, TINY_U)
    gamma = brute_occupancy(t, y, TINY_T, TINY_U)
    sg = s.clone().requires_grad_(True)
    out = rnnt_kd_loss(sg, t, y, tl, ul, mode=mode, reduction="none", node_weights=lattice_occupancy(t, y, tl, ul))
    by_hand = []
    for b, (frames, labels) in enumerate(zip(TINY_T, TINY_U)):
        total = 0.0
        for ti in range(frames):
            for u in range(labels + 1):
                label = int(y[b, u]) if u < labels else None
                total += float(gamma[b, ti, u]) * node_kl(s[b, ti, u].tolist(), t[b, ti, u].tolist(), label, mode)
        by_hand.append(total)
    check(out, torch.tensor(by_hand, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    # uniform weights (None) give the plain node sum, and every node's KL is weighted in the gradient
    check(rnnt_kd_loss(s, t, y, tl, ul, mode=mode, reduction="none", node_weights=torch.ones(4, 3, 3)),
          oracle_kd(s, t, y, TINY_T, TINY_U, mode), rtol=1e-10, atol=1e-12)
    s64 = s.clone().requires_grad_(True)
    expected = oracle_kd(s64, t, y, TINY_T, TINY_U, mode, weights=gamma)
    out.sum().backward()
    (expected_grad,) = torch.autograd.grad(expected.sum(), s64)
    torch.testing.assert_close(sg.grad, expected_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_kd_node_weights_match_oracle(mode: str, reduction: str) -> None:
    s, y = lattice(125)
    t, _ = lattice(126)
    tl, ul = lengths()
    g = torch.Generator().manual_seed(127)
    weights = torch.rand(B, T, U + 1, generator=g, dtype=torch.float64) * 2
    weights[0, 1, 2] = 0.0  # a node that drops out
    junk = torch.where(padded(T_LEN, U_LEN, weights.shape), math.nan, weights)  # padding is never read
    sg = s.clone().requires_grad_(True)
    out = rnnt_kd_loss(sg, t, y, tl, ul, mode=mode, temperature=2.0, reduction=reduction, node_weights=junk)
    s64 = s.clone().requires_grad_(True)
    expected = oracle_kd(s64, t, y, T_LEN, U_LEN, mode, 2.0, reduction=reduction, weights=weights)
    check(out, expected, rtol=1e-10, atol=1e-12)
    (out.sum() if reduction == "none" else out).backward()
    (expected_grad,) = torch.autograd.grad(expected.sum(), s64)
    torch.testing.assert_close(sg.grad, expected_grad, rtol=1e-10, atol=1e-12)
    assert not sg.grad[0, 1, 2].any() and (sg.grad[padded(T_LEN, U_LEN, s.shape)] == 0).all()


def test_the_three_normalisers_by_hand() -> None:
    """Two utterances: T = (3, 2) frames, U = (2, 1) labels, so 3 x 3 + 2 x 2 = 13 lattice nodes, 3 target
    tokens, 2 utterances; KL sums 1.3 and 0.65 (1.95 in all)."""
    tl, ul = torch.tensor([3, 2]), torch.tensor([2, 1])
    kd_sum = 1.3 + 0.65
    by_hand = {"nodes": kd_sum / 13, "tokens": kd_sum / 3, "utterances": kd_sum / 2}
    got = {n: kd_sum / float(kd_normalizer(n, tl, ul)) for n in ("nodes", "tokens", "utterances")}
    assert got == pytest.approx(by_hand, rel=1e-6)
    assert len(set(round(v, 6) for v in got.values())) == 3  # three different values: 0.15, 0.65, 0.975
    # with node weights, "nodes" is their total over the valid nodes (padding ignored): occupancy gives T + U
    weights = torch.full((2, 3, 3), math.nan)
    weights[0] = 0.5
    weights[1, :2, :2] = 2.0
    assert float(kd_normalizer("nodes", tl, ul, weights)) == pytest.approx(9 * 0.5 + 4 * 2.0)
    logits, y = lattice(128, b=2, t=3, u=2)
    gamma = lattice_occupancy(logits, y, tl, ul)
    assert float(kd_normalizer("nodes", tl, ul, gamma)) == pytest.approx(3 + 2 + 2 + 1)
    assert float(kd_normalizer("tokens", tl, ul, weights)) == 3  # the others ignore the weights
    with pytest.raises(ValueError, match="normalize must be one of"):
        kd_normalizer("frames", tl, ul)


# ---------------------------------------------------------------- errors


def _errors() -> dict[str, tuple]:
    x, y = lattice(110)
    x = x.float()
    tl, ul = lengths()
    bad_y = y.clone()
    bad_y[0, 1] = 0  # blank within target_lengths
    pad_blank = with_padding(y, U_LEN, 0)  # blank in the padding is fine: see the last case
    return {
        "reduction": ((x, y, tl, ul), {"reduction": "avg"}, "reduction"),
        "logits 3-d": ((x[0], y, tl, ul), {}, r"\(B, T, U\+1, V\)"),
        "int logits": ((x.long(), y, tl, ul), {}, "floating point"),
        "targets dtype": ((x, y.float(), tl, ul), {}, "targets must be int32 or int64"),
        "targets batch": ((x, y[:2], tl, ul), {}, r"\(3, 3\).*\(2, 3\)"),
        "targets U": ((x, y[:, :2], tl, ul), {}, r"\(3, 3\).*\(3, 2\)"),
        "lengths dtype": ((x, y, tl.float(), ul), {}, "logit_lengths must be int32 or int64"),
        "lengths shape": ((x, y, tl, ul[:2]), {}, r"target_lengths must be \(3,\)"),
        "frames too long": ((x, y, tl + 1, ul), {}, r"logit_lengths must be in \[1, T = 4\]"),
        "zero frames": ((x, y, tl * 0, ul), {}, r"logit_lengths must be in \[1, T = 4\]"),
        "labels too long": ((x, y, tl, ul + 1), {}, r"target_lengths must be in \[0, U = 3\]"),
        "negative labels": ((x, y, tl, ul - 1), {}, "target_lengths"),
        "blank range": ((x, y, tl, ul), {"blank": V}, "blank must be"),
        "blank target": ((x, bad_y, tl, ul), {}, "blank index 0"),
        "target range": ((x, y + V, tl, ul), {"blank": 0}, r"\[0, V = 5\)"),
        "ok": ((x, pad_blank, tl, ul), {}, None),
    }


@pytest.mark.parametrize("fn", (rnnt_loss, rnnt_loss_reference))
@pytest.mark.parametrize("case", _errors())
def test_rnnt_errors(fn, case: str) -> None:
    args, kwargs, match = _errors()[case]
    if match is None:
        fn(*args, **kwargs)
        return
    with pytest.raises(ValueError, match=match):
        fn(*args, **kwargs)


def _kd_errors() -> dict[str, tuple]:
    s, y = lattice(111)
    t, _ = lattice(112)
    tl, ul = lengths()
    bad_y = y.clone()
    bad_y[2, 0] = 0
    return {
        "teacher shape": ((s, t[:, :, :-1], y, tl, ul), {}, r"\(3, 4, 3, 5\).*\(3, 4, 4, 5\)"),
        "teacher vocab": ((s, t[..., :-1], y, tl, ul), {}, "does not match"),
        "int teacher": ((s, t.long(), y, tl, ul), {}, "teacher_logits must be floating point"),
        "student 3-d": ((s[0], t[0], y, tl, ul), {}, "student_logits must be"),
        "targets": ((s, t, y[:, :2], tl, ul), {}, "targets must be"),
        "frames": ((s, t, y, tl + 1, ul), {}, r"logit_lengths must be in \[0, T = 4\]"),
        "labels": ((s, t, y, tl, ul + 1), {}, "target_lengths"),
        "blank target": ((s, t, bad_y, tl, ul), {}, "blank"),
        "mode": ((s, t, y, tl, ul), {"mode": "topk"}, "mode"),
        "zero temperature": ((s, t, y, tl, ul), {"temperature": 0.0}, "temperature"),
        "nan temperature": ((s, t, y, tl, ul), {"temperature": math.nan}, "temperature"),
        "reduction": ((s, t, y, tl, ul), {"reduction": "batchmean"}, "reduction"),
        "node weights shape": ((s, t, y, tl, ul), {"node_weights": torch.ones(3, 4, 3)},
                               r"node_weights must be \(B, T, U\+1\) = \(3, 4, 4\)"),
        "int node weights": ((s, t, y, tl, ul), {"node_weights": torch.ones(3, 4, 4, dtype=torch.long)},
                             "node_weights must be floating point"),
    }


@pytest.mark.parametrize("case", _kd_errors())
def test_kd_errors(case: str) -> None:
    args, kwargs, match = _kd_errors()[case]
    with pytest.raises(ValueError, match=match):
        rnnt_kd_loss(*args, **kwargs)
