"""Batched transducer search (greedy and modified beam search) against one utterance at a time.

    python bench/transducer_search.py --threads 2           # CPU: 64 utterances of 2-6 s, batches of 16

The model has random weights at the size of a small streaming student (d_model 256, 6 chunk-wise
Conformer layers, stateless predictor, joint 320, vocab 500).  Its joiner is scaled so the
per-frame distributions are peaky, and blank gets a bias so about one frame in four emits a label,
as a trained model's do; without that a random model emits on every frame and the search measures
nothing realistic.  Features are random (80-dim, 100 frames/s).  Both ways run in one process, on the
same utterances, and the 1-best of both is compared.
"""

from __future__ import annotations

import argparse
import time

import torch

from kdst.decode.transducer_search import greedy_search, modified_beam_search
from kdst.models import build_model


def build(vocab: int, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model({"type": "transducer", "vocab_size": vocab, "input_dim": 80,
                         "encoder": {"type": "streaming_conformer", "d_model": 256, "layers": 6, "heads": 4,
                                     "ff_dim": 1024, "kernel_size": 15, "chunk_size": 16, "left_chunks": 4},
                         "predictor": {"type": "stateless", "dim": 320, "context_size": 2},
                         "joiner": {"dim": 320}})
    with torch.no_grad():
        model.joiner.output.weight.mul_(4.0)
        model.joiner.output.bias[0] += 3.0  # blank most of the time
    return model.to(device).eval()


def utterances(num: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(200, 601, (num,), generator=g).tolist()
    return [torch.randn(n, 80, generator=g) for n in frames]


def run(model, utts, batch_size: int, search, device: str) -> tuple[list[tuple[int, ...]], float]:
    order = sorted(range(len(utts)), key=lambda i: len(utts[i]))
    best: list = [None] * len(utts)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            lengths = torch.tensor([len(utts[j]) for j in idx])
            src = torch.zeros(len(idx), int(lengths.max()), 80)
            for row, j in enumerate(idx):
                src[row, :len(utts[j])] = utts[j]
            for j, hyp in zip(idx, search(model, src.to(device), lengths.to(device))):
                best[j] = tuple((hyp[0] if isinstance(hyp, list) else hyp).tokens)
    sync()
    return best, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--utterances", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build(args.vocab, args.device)
    utts = utterances(args.utterances)
    audio_s = sum(len(u) for u in utts) / 100
    searches = {"greedy (3 symbols/frame)": lambda m, s, l: greedy_search(m, s, l, max_symbols_per_frame=3),
                f"modified beam search (beam {args.beam})":
                    lambda m, s, l: modified_beam_search(m, s, l, beam=args.beam)}
    print(f"{args.utterances} utterances, {audio_s:.0f} s of audio, {args.device}, {args.threads} threads, "
          f"batches of {args.batch}\n")
    print("| search | one at a time, utt/s | batched, utt/s | speed-up | batched RTF | same 1-best |")
    print("|---|---|---|---|---|---|")
    for name, search in searches.items():
        run(model, utts[:2], 2, search, args.device)  # warm-up
        single, t_single = run(model, utts, 1, search, args.device)
        batched, t_batched = run(model, utts, args.batch, search, args.device)
        same = sum(a == b for a, b in zip(single, batched))
        mean_labels = sum(len(b) for b in batched) / len(batched)
        print(f"| {name} | {len(utts) / t_single:.1f} | {len(utts) / t_batched:.1f} | "
              f"{t_single / t_batched:.2f}× | {t_batched / audio_s:.4f} | {same}/{len(utts)} "
              f"({mean_labels:.0f} labels/utt) |")


if __name__ == "__main__":
    main()
