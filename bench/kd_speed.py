"""Training steps/s of a student with word-level KD: no KD, online teacher, top-k cache; one process.

    python bench/kd_speed.py --threads 2
    python bench/kd_speed.py --student egs/mustc/st1/conf/train_st.yaml --teacher egs/mustc/st1/conf/train_mt.yaml \\
        --device cuda --batch 64 --frames 1200 --tokens 30 --vocab 8000

Random weights and fixed-shape random batches (no data loading): the student is the ST config's
model, the teacher the MT config's, reading a random transcript of --src-tokens tokens.  The
three ways are interleaved round by round so machine noise hits them alike; the table gives the
median round.  The cache way reads the teacher's top-k from tensors made once, as the cache
reader's collated batch would hold them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import yaml

from kdst.models import build_model
from kdst.train.kd import WordKD


def build(path: str, vocab: int, device: torch.device):
    config = yaml.safe_load(open(path))["model"]
    config = {**config, "vocab_size": vocab, **({"src_vocab_size": vocab} if config.get("input") == "text" else {})}
    return build_model(config).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="egs/mini/st1/conf/train_st.yaml")
    parser.add_argument("--teacher", default="egs/mini/st1/conf/train_mt.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=55)
    parser.add_argument("--frames", type=int, default=290)
    parser.add_argument("--src-tokens", type=int, default=20, help="transcript tokens the teacher reads")
    parser.add_argument("--tokens", type=int, default=22, help="target tokens")
    parser.add_argument("--vocab", type=int, default=300)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="steps per way and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    student = build(args.student, args.vocab, device).train()
    teacher = build(args.teacher, args.vocab, device).eval()
    if device.type == "cuda":
        teacher = teacher.to(torch.bfloat16)
    b, u = args.batch, args.tokens
    batch = {"ids": [], "src": torch.randn(b, args.frames, 80, device=device),
             "src_lengths": torch.full((b,), args.frames, device=device),
             "tgt": torch.randint(3, args.vocab, (b, u), device=device), "tgt_lengths": torch.full((b,), u, device=device),
             "teacher_src": torch.randint(3, args.vocab, (b, args.src_tokens), device=device),
             "teacher_src_lengths": torch.full((b,), args.src_tokens, device=device)}
    with torch.no_grad():
        logits = teacher.decoder_logits({"src": batch["teacher_src"], "src_lengths": batch["teacher_src_lengths"],
                                         "tgt": batch["tgt"], "tgt_lengths": batch["tgt_lengths"]})[0].float()
        values, indices = logits.topk(args.k, dim=-1)
    cached = {**batch, "teacher_topk_indices": indices, "teacher_topk_values": values}
    ways = {"no KD": (student, batch), "online teacher": (WordKD(student, teacher, weight=0.5), batch),
            f"top-{args.k} cache": (WordKD(student, None, weight=0.5), cached)}
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    bf16 = device.type == "cuda"
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def steps(model, data, n: int) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(n):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss, _ = model(data)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync()
        return n / (time.perf_counter() - start)

    for model, data in ways.values():  # warm-up
        steps(model, data, 2)
    rates: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, (model, data) in ways.items():
            rates[name].append(steps(model, data, args.steps))
    params = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    print(f"student {args.student} ({params(student):.2f}M), teacher {args.teacher} ({params(teacher):.2f}M), "
          f"{args.device}, batch {b}x{args.frames} frames -> {u} tokens, vocab {args.vocab}")
    print("| way | steps/s | vs no KD |")
    print("|---|---|---|")
    base = statistics.median(rates["no KD"])
    for name, r in rates.items():
        print(f"| {name} | {statistics.median(r):.2f} | {statistics.median(r) / base:.2f}x |")


if __name__ == "__main__":
    main()
