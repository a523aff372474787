"""Forward + backward of the RNN-T losses: rnnt_loss alone, and with rnnt_kd_loss (full, collapsed).

    python bench/rnnt_loss.py --threads 4                  # B=8 T=300 U=80 V=500 (LibriSpeech-sized), CPU
    python bench/rnnt_loss.py --device cuda --repeats 20
    python bench/rnnt_loss.py --batch 2 --frames 100 --labels 30 --vocab 100 --repeats 1   # a smoke run

Each case runs in a fresh child process, one after the other in one invocation, so that one
case's allocator high-water mark cannot hide or inflate another's.  The child builds random
joiner logits (B, T, U+1, V) as a leaf that requires grad (the KD cases also build teacher
logits of that shape, without grad), full-length utterances and random non-blank targets,
runs one warm-up step, then --repeats timed steps of ``loss.backward()`` (the leaf's .grad is
dropped before each step).  The step time is the median.

Memory, per case: "peak" is the child's high-water mark of the whole process (CPU: the peak
RSS from getrusage, so it includes the Python interpreter, torch and the inputs; CUDA:
torch.cuda.max_memory_allocated, i.e. tensors only).  "above inputs" subtracts the same
high-water mark read right after the inputs were built: what the losses, their saved state
and the logits' gradient add on top.  RSS is a coarse measure (the allocator may keep freed
pages), good to tens of MB; the ratios against rnnt_loss alone are the point.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CASES = ("rnnt_loss", "rnnt_loss + rnnt_kd_loss full", "rnnt_loss + rnnt_kd_loss collapsed")


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def child(args: argparse.Namespace) -> None:
    import torch

    from kdst.losses import rnnt_kd_loss, rnnt_loss

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    b, t, u, v = args.batch, args.frames, args.labels, args.vocab
    g = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(b, t, u + 1, v, generator=g, device=device).to(dtype).requires_grad_(True)
    mode = args.case.rpartition(" ")[2] if "kd" in args.case else None
    teacher = torch.randn(b, t, u + 1, v, generator=g, device=device).to(dtype) if mode else None
    targets = torch.randint(1, v, (b, u), generator=g, device=device, dtype=torch.int32)
    logit_lengths = torch.full((b,), t, dtype=torch.int32, device=device)
    target_lengths = torch.full((b,), u, dtype=torch.int32, device=device)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        inputs_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        inputs_mb = peak_rss_mb()

    def step() -> None:
        logits.grad = None
        loss = rnnt_loss(logits, targets, logit_lengths, target_lengths)
        if mode:
            loss = loss + rnnt_kd_loss(logits, teacher, targets, logit_lengths, target_lengths, mode=mode,
                                       temperature=args.temperature)
        loss.backward()

    step()  # warm-up
    times = []
    for _ in range(args.repeats):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else peak_rss_mb()
    print(json.dumps({"seconds": statistics.median(times), "peak_mb": peak_mb, "above_inputs_mb": peak_mb - inputs_mb,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="dtype of the joiner logits (losses compute in float32)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=300, help="T")
    parser.add_argument("--labels", type=int, default=80, help="U")
    parser.add_argument("--vocab", type=int, default=500, help="V")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per case, after one warm-up step")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # set in the child processes
    args = parser.parse_args()
    if args.case:
        child(args)
        return

    forwarded = [f"--{k}={getattr(args, k.replace('-', '_'))}" for k in
                 ("device", "dtype", "batch", "frames", "labels", "vocab", "temperature", "repeats", "threads")]
    results = {}
    for case in CASES:
        run = subprocess.run([sys.executable, __file__, *forwarded, f"--case={case}"], capture_output=True, text=True)
        if run.returncode:
            sys.exit(f"{case}: child failed with exit code {run.returncode}\n{run.stderr}")
        results[case] = json.loads(run.stdout.strip().splitlines()[-1])

    first = results[CASES[0]]
    unit = "peak RSS" if args.device == "cpu" else "peak allocated"
    print(f"B={args.batch} T={args.frames} U={args.labels} V={args.vocab} {args.dtype} on {args.device}, "
          f"torch {first['torch']}, {first['threads']} threads, median of {args.repeats} steps "
          f"(forward + backward), one fresh process per case\n")
    print(f"| case | s / step | {unit} MB | above inputs MB | time × | peak × | above inputs × |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for case, r in results.items():
        print(f"| {case} | {r['seconds']:.3f} | {r['peak_mb']:.0f} | {r['above_inputs_mb']:.0f} | "
              f"{r['seconds'] / first['seconds']:.2f} | {r['peak_mb'] / first['peak_mb']:.2f} | "
              f"{r['above_inputs_mb'] / max(first['above_inputs_mb'], 1e-9):.2f} |")


if __name__ == "__main__":
    main()
