"""The fused Triton KD losses against PyTorch and torch.compile: time, extra memory, bandwidth.

    python bench/fused_kd.py --out bench/fused_kd.json          # on a GPU: the issue's sizes
    python bench/fused_kd.py --smoke                             # tiny shapes, CPU interpreter: checks the script
    python bench/fused_kd.py --sweep                             # also every block width of the fused kernels

Word-level KD: N = 32,768 tokens x V in {8,192, 32,768}, bfloat16 logits, temperature 2,
full teacher and a top-8 teacher, forward + backward of the mean loss, for
  pytorch   the reference (kdst.losses.word_kd with KDST_TRITON=0),
  compile   torch.compile of that reference,
  triton    the fused kernel (what word_kd_loss runs on CUDA).
RNN-T: B = 32, T = 188, U = 86, V = 1,025 bfloat16 joiner logits, every utterance full length:
  torchaudio             torchaudio's rnnt_loss alone, on float32 logits cast beforehand (untimed),
  torchaudio via kdst    kdst's rnnt_loss without kernels: the bf16 -> fp32 cast, then torchaudio,
  triton rnnt            the fused RNN-T loss,
  triton rnnt+collapsed  RNN-T loss + collapsed KD in one fused pass (rnnt_loss_and_kd),
  triton rnnt+full       RNN-T loss + full KD,
  pytorch rnnt+...       torchaudio + the block-wise PyTorch KD reference,
  compile rnnt+full      torchaudio + torch.compile of a dense KL over the whole lattice.

Time: the median of --repeats CUDA-event-timed steps after two warm-ups.  Memory: the peak
of torch.cuda.max_memory_allocated during a step minus what was allocated before it (inputs
and teacher already there): the loss's own extra memory, gradient included.  Bandwidth:
"essential bytes" reads every input logit once and writes the gradient once; divided by the
step time and by the copy bandwidth measured in the same run (a device-to-device copy of
4 GiB, counting read + write), it says how close a step comes to the memory limit.  The
lattice-pass rows time the fused forward alone (no grad: one read of student and teacher).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU through Triton's interpreter")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    p.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile rows")
    p.add_argument("--sweep", action="store_true",
                   help="also time the fused kernels at every vocabulary block width (to tune the defaults)")
    return p.parse_args()


ARGS = parse_args()
if ARGS.smoke:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are imported

import torch  # noqa: E402

from kdst.losses import rnnt_loss, rnnt_loss_and_kd  # noqa: E402
from kdst.losses import rnnt_loss as _reference_rnnt_loss  # noqa: E402
from kdst.losses.rnnt import rnnt_kd_loss  # noqa: E402
from kdst.losses.word_kd import _per_token_reference, _reduce_tokens, word_kd_loss  # noqa: E402
from kdst.losses.word_kd import word_kd_loss as _reference_word_kd  # noqa: E402

DEVICE = torch.device("cpu" if ARGS.smoke else "cuda")
CUDA = DEVICE.type == "cuda"

if not CUDA:
    # The public functions use the kernels on CUDA only; on CPU the smoke run calls the
    # kernels' entry points, so that it checks them too.
    from kdst.losses.triton.rnnt import fused_lattice_losses
    from kdst.losses.triton.word_kd import word_kd_per_token

    def word_kd_loss(student, teacher_logits=None, *, topk_indices=None, topk_logits=None,  # noqa: F811
                     temperature=1.0):
        if os.environ.get("KDST_TRITON") == "0":
            return _reference_word_kd(student, teacher_logits, topk_indices, topk_logits, temperature)
        per_token = word_kd_per_token(student, teacher_logits, topk_indices, topk_logits, temperature, None)
        return per_token.mean()

    def rnnt_loss(logits, targets, lengths, labels):  # noqa: F811
        if os.environ.get("KDST_TRITON") == "0":
            return _reference_rnnt_loss(logits, targets, lengths, labels)
        return fused_lattice_losses(logits, None, targets, lengths, labels, with_rnnt=True, kd_mode=None)[0].mean()

    def rnnt_loss_and_kd(student, teacher, targets, lengths, labels, mode):  # noqa: F811
        nll, kd = fused_lattice_losses(student, teacher, targets, lengths, labels, with_rnnt=True, kd_mode=mode)
        return nll.mean(), kd.mean()


class kernels:
    """Context manager: KDST_TRITON set to on/off for the calls inside."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        self.saved = os.environ.get("KDST_TRITON")
        os.environ["KDST_TRITON"] = "1" if self.on else "0"

    def __exit__(self, *exc):
        if self.saved is None:
            os.environ.pop("KDST_TRITON", None)
        else:
            os.environ["KDST_TRITON"] = self.saved


def measure(step, repeats: int) -> tuple[float, float]:
    """(median seconds, peak extra MiB) of ``step()``; CUDA events on a GPU, wall time otherwise."""
    import time
    for _ in range(2):
        step()
    times, extra = [], 0.0
    for _ in range(repeats):
        if CUDA:
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
            extra = max(extra, (torch.cuda.max_memory_allocated() - before) / 2**20)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return statistics.median(times), extra


def copy_bandwidth() -> float:
    """Bytes/s of a device-to-device copy, read + write counted."""
    if not CUDA:
        return float("nan")
    size = 4 << 30
    x, y = torch.empty(size, dtype=torch.uint8, device=DEVICE), torch.empty(size, dtype=torch.uint8, device=DEVICE)
    seconds, _ = measure(lambda: y.copy_(x), 10)
    del x, y
    return 2 * size / seconds


LAST_VALUE: list[float] = []  # the loss of the latest step, so that every row shows what it computed


def backward_of(loss_fn, leaf: torch.Tensor):
    def step():
        leaf.grad = None
        loss = loss_fn()
        loss = sum(loss) if isinstance(loss, tuple) else loss
        loss.backward()
        LAST_VALUE[:] = [loss.detach()]
    return step


def value() -> float:
    return float(LAST_VALUE[0]) if LAST_VALUE else float("nan")


def word_kd_rows(repeats: int) -> list[dict]:
    n, vocabs, k, temperature = (16, (40, 100), 8, 2.0) if ARGS.smoke else (32768, (8192, 32768), 8, 2.0)

    def reference(student, teacher, index):
        per_token = _per_token_reference(student, teacher, index, temperature, torch.float32)
        return _reduce_tokens(per_token, None, "mean", torch.float32)

    compiled = None if ARGS.skip_compile or ARGS.smoke else torch.compile(reference)
    rows = []
    for v in vocabs:
        g = torch.Generator(device=DEVICE).manual_seed(0)
        student = (torch.randn(n, v, generator=g, device=DEVICE) * 3).to(torch.bfloat16).requires_grad_()
        teacher = (torch.randn(n, v, generator=g, device=DEVICE) * 3).to(torch.bfloat16)
        top = teacher.float().topk(k, dim=-1)
        index, top_logits = top.indices, top.values.to(torch.bfloat16)
        for mode, t_in, idx in (("full", teacher, None), (f"top-{k}", top_logits, index)):
            teacher_kwargs = {"teacher_logits": t_in} if idx is None else {"topk_indices": idx, "topk_logits": t_in}
            element = student.element_size()
            essential = (2 * n * v + t_in.numel()) * element + (idx.numel() * 8 if idx is not None else 0)
            for name, on, fn in (("pytorch", False, lambda: reference(student, t_in, idx)),
                                 ("compile", False, (lambda: compiled(student, t_in, idx)) if compiled else None),
                                 ("triton", True, lambda: word_kd_loss(student, temperature=temperature,
                                                                        **teacher_kwargs))):
                if fn is None:
                    continue
                with kernels(on):
                    seconds, extra = measure(backward_of(fn, student), repeats)
                rows.append({"loss": "word-KD", "shape": f"N={n} V={v}", "teacher": mode, "impl": name,
                             "value": value(), "ms": seconds * 1e3, "extra_mib": extra, "essential_bytes": essential})
        del student, teacher
    return rows


def dense_full_kd(student, teacher, lengths, labels, temperature):
    """KL(p_T || p_S) over every valid node, written the plain way: two full log-softmaxes."""
    lp_s = torch.log_softmax(student.float() / temperature, dim=-1)
    lp_t = torch.log_softmax(teacher.float() / temperature, dim=-1)
    kl = (lp_t.exp() * (lp_t - lp_s)).sum(-1)
    t_valid = torch.arange(student.shape[1], device=student.device)[None, :, None] < lengths[:, None, None]
    u_valid = torch.arange(student.shape[2], device=student.device)[None, None, :] <= labels[:, None, None]
    return (kl * (t_valid & u_valid)).sum() / student.shape[0]


def rnnt_rows(repeats: int) -> list[dict]:
    import torchaudio.functional as taf

    b, t, u, v = (2, 6, 3, 17) if ARGS.smoke else (32, 188, 86, 1025)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    student = torch.randn(b, t, u + 1, v, generator=g, device=DEVICE).to(torch.bfloat16).requires_grad_()
    teacher = torch.randn(b, t, u + 1, v, generator=g, device=DEVICE).to(torch.bfloat16)
    targets = torch.randint(1, v, (b, u), generator=g, device=DEVICE, dtype=torch.int32)
    lengths = torch.full((b,), t, dtype=torch.int32, device=DEVICE)
    labels = torch.full((b,), u, dtype=torch.int32, device=DEVICE)
    lattice = b * t * (u + 1) * v * student.element_size()
    shape = f"B={b} T={t} U={u} V={v}"
    rows = []

    student32 = student.detach().float().requires_grad_()
    with kernels(False):
        seconds, extra = measure(backward_of(lambda: taf.rnnt_loss(student32, targets, lengths, labels, blank=0,
                                                                   clamp=-1.0, reduction="mean"), student32), repeats)
    rows.append({"loss": "RNN-T", "shape": shape, "teacher": "-", "impl": "torchaudio (fp32 logits)",
                 "value": value(), "ms": seconds * 1e3, "extra_mib": extra, "essential_bytes": 4 * lattice})
    del student32

    compiled = None if ARGS.skip_compile or ARGS.smoke else torch.compile(dense_full_kd)
    cases = [
        ("-", "torchaudio via kdst (bf16 -> fp32)", False, lambda: rnnt_loss(student, targets, lengths, labels), 2),
        ("-", "triton rnnt", True, lambda: rnnt_loss(student, targets, lengths, labels), 2),
    ]
    for mode in ("collapsed", "full"):
        cases += [
            (mode, f"triton rnnt+{mode}", True,
             lambda mode=mode: rnnt_loss_and_kd(student, teacher, targets, lengths, labels, mode=mode), 3),
            (mode, f"pytorch rnnt+{mode}", False,
             lambda mode=mode: rnnt_loss(student, targets, lengths, labels)
             + rnnt_kd_loss(student, teacher, targets, lengths, labels, mode=mode), 3),
        ]
    if compiled is not None:
        cases.append(("full", "compile rnnt+full (dense KL)", False,
                      lambda: rnnt_loss(student, targets, lengths, labels)
                      + compiled(student, teacher, lengths, labels, 1.0), 3))
    for mode, name, on, fn, tensors in cases:
        with kernels(on):
            seconds, extra = measure(backward_of(fn, student), repeats)
        rows.append({"loss": "RNN-T", "shape": shape, "teacher": mode, "impl": name, "value": value(),
                     "ms": seconds * 1e3,
                     "extra_mib": extra, "essential_bytes": tensors * lattice})

    # The lattice pass alone: the fused forward without grad reads student and teacher once.
    with torch.no_grad(), kernels(True):
        for mode in ("collapsed", "full"):
            seconds, extra = measure(lambda mode=mode: rnnt_loss_and_kd(student, teacher, targets, lengths, labels,
                                                                        mode=mode), repeats)
            rows.append({"loss": "RNN-T", "shape": shape, "teacher": mode, "impl": f"lattice pass only ({mode})",
                         "value": float("nan"), "ms": seconds * 1e3, "extra_mib": extra, "essential_bytes": 2 * lattice})
    return rows


def sweep_rows(repeats: int) -> list[dict]:
    """The fused kernels with every vocabulary block width (and the num_warps warps_for gives it)."""
    from kdst.losses.triton.rnnt import fused_lattice_losses
    from kdst.losses.triton.word_kd import word_kd_per_token

    rows = []
    n, v = (16, 100) if ARGS.smoke else (32768, 32768)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    student = torch.randn(n, v, generator=g, device=DEVICE).to(torch.bfloat16).requires_grad_()
    teacher = torch.randn(n, v, generator=g, device=DEVICE).to(torch.bfloat16)
    for block in (512, 1024, 2048):
        seconds, extra = measure(backward_of(
            lambda block=block: word_kd_per_token(student, teacher, None, None, 2.0, None, block_v=block).mean(),
            student), repeats)
        rows.append({"loss": "word-KD", "shape": f"N={n} V={v}", "teacher": "full", "impl": f"triton BLOCK_V={block}",
                     "value": value(), "ms": seconds * 1e3, "extra_mib": extra,
                     "essential_bytes": 3 * n * v * student.element_size()})
    del student, teacher
    b, t, u, v = (2, 6, 3, 17) if ARGS.smoke else (32, 188, 86, 1025)
    student = torch.randn(b, t, u + 1, v, generator=g, device=DEVICE).to(torch.bfloat16).requires_grad_()
    teacher = torch.randn(b, t, u + 1, v, generator=g, device=DEVICE).to(torch.bfloat16)
    targets = torch.randint(1, v, (b, u), generator=g, device=DEVICE, dtype=torch.int32)
    lengths = torch.full((b,), t, dtype=torch.int32, device=DEVICE)
    labels = torch.full((b,), u, dtype=torch.int32, device=DEVICE)
    for block in (128, 256, 512, 1024, 2048):
        seconds, extra = measure(backward_of(
            lambda block=block: tuple(x.mean() for x in fused_lattice_losses(
                student, teacher, targets, lengths, labels, with_rnnt=True, kd_mode="collapsed", block_v=block)),
            student), repeats)
        rows.append({"loss": "RNN-T", "shape": f"B={b} T={t} U={u} V={v}", "teacher": "collapsed",
                     "impl": f"triton rnnt+collapsed BLOCK_V={block}", "value": value(), "ms": seconds * 1e3,
                     "extra_mib": extra, "essential_bytes": 3 * student.numel() * student.element_size()})
    return rows


def main() -> None:
    repeats = 1 if ARGS.smoke else ARGS.repeats
    bandwidth = copy_bandwidth()
    rows = word_kd_rows(repeats) + rnnt_rows(repeats) + (sweep_rows(repeats) if ARGS.sweep else [])
    for row in rows:
        row["tb_per_s"] = row["essential_bytes"] / (row["ms"] / 1e3) / 1e12
        row["of_copy_bw"] = row["essential_bytes"] / (row["ms"] / 1e3) / bandwidth
    device = torch.cuda.get_device_name() if CUDA else "CPU (Triton interpreter: timings mean nothing)"
    print(f"# {device}; torch {torch.__version__}; copy bandwidth {bandwidth / 1e12:.2f} TB/s (read + write)")
    print("| loss | shape | teacher | implementation | loss value | ms | extra MiB | TB/s | of copy bw |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['loss']} | {r['shape']} | {r['teacher']} | {r['impl']} | {r['value']:.5g} | {r['ms']:.2f} | {r['extra_mib']:.0f} | "
              f"{r['tb_per_s']:.2f} | {r['of_copy_bw']:.0%} |")
    if ARGS.out:
        tmp = ARGS.out.with_name(ARGS.out.name + ".tmp")
        tmp.write_text(json.dumps({"device": device, "copy_bandwidth": bandwidth, "rows": rows}, indent=1))
        tmp.replace(ARGS.out)


if __name__ == "__main__":
    sys.exit(main())
