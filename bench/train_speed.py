"""Training steps/s of a recipe's model config on fixed-size random batches (no data loading).

    python bench/train_speed.py --config egs/mini/st1/conf/train_st.yaml --batch 32 --frames 300 --steps 20
    python bench/train_speed.py --config egs/mustc/st1/conf/train_st.yaml --device cuda --batch 64 --frames 1200

Prints one Markdown table row: config, device, batch shape, parameters, steps/s, frames/s.
"""

from __future__ import annotations

import argparse
import time

import torch
import yaml

from kdst.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--frames", type=int, default=300, help="input frames (speech) or tokens (text)")
    parser.add_argument("--tokens", type=int, default=20, help="target tokens")
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = yaml.safe_load(open(args.config))
    model_config = {**config["model"], "vocab_size": args.vocab}
    if model_config.get("input") == "text":
        model_config["src_vocab_size"] = args.vocab
    device = torch.device(args.device)
    model = build_model(model_config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if model_config.get("input") == "text":
        src = torch.randint(3, args.vocab, (args.batch, args.frames), device=device)
    else:
        src = torch.randn(args.batch, args.frames, model_config.get("input_dim", 80), device=device)
    batch = {"src": src, "src_lengths": torch.full((args.batch,), args.frames, device=device),
             "tgt": torch.randint(3, args.vocab, (args.batch, args.tokens), device=device),
             "tgt_lengths": torch.full((args.batch,), args.tokens, device=device), "ids": []}
    bf16 = device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = model(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up: allocator, kernels
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters()) / 1e6
    rate = args.steps / seconds
    print(f"| {args.config} | {args.device} | {args.batch}x{args.frames} -> {args.tokens} | {params:.1f}M "
          f"| {rate:.2f} | {rate * args.batch * args.frames:.0f} |")


if __name__ == "__main__":
    main()
