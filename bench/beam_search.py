"""Batched beam search against one utterance at a time, on a realistic-size MT Transformer.

    python bench/beam_search.py --threads 2            # CPU, 200 sentences, beam 5, 50 per batch

The model has random weights (d_model 256, 6+6 layers, 4 heads, ff 1024, vocab 1000).  Its output layer
is scaled so the next-token distributions are peaky like a trained model's, and <eos> gets a bias so
hypotheses end at lengths like the source's (10-30 tokens) rather than at the max length.  Sources are
random sentences of 10-30 tokens, max_len_ratio 1.5.  Batches are made of sentences of similar source
length (sorted), as a decoding script would do.  Both ways run in one process, on the same sentences.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kdst.decode import SearchOptions, beam_search
from kdst.models import build_model

EOS = 2


def build(vocab: int, output_scale: float, eos_bias: float, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model({"input": "text", "src_vocab_size": vocab, "vocab_size": vocab, "d_model": 256,
                         "encoder": {"layers": 6, "heads": 4, "ff_dim": 1024},
                         "decoder": {"layers": 6, "heads": 4, "ff_dim": 1024}})
    with torch.no_grad():
        model.decoder.output.weight.mul_(output_scale)
        model.decoder.output.bias[EOS] += eos_bias
    return model.to(device).eval()


def sentences(num: int, vocab: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(10, 31, (num,), generator=g).tolist()
    return [torch.randint(3, vocab, (n,), generator=g) for n in lengths]


def pad(batch: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    src = torch.zeros(len(batch), max(len(s) for s in batch), dtype=torch.long)
    for i, s in enumerate(batch):
        src[i, :len(s)] = s
    return src, torch.tensor([len(s) for s in batch])


def decode(model, sents, batch_size: int, options: SearchOptions, device: str):
    """1-best per sentence (in input order), wall seconds and process CPU seconds it took."""
    order = sorted(range(len(sents)), key=lambda i: len(sents[i]))
    best = [None] * len(sents)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        src, lengths = pad([sents[j] for j in idx])
        for j, hyps in zip(idx, beam_search(model, src.to(device), lengths.to(device), options)):
            best[j] = hyps[0]
    sync()
    return best, time.perf_counter() - start, time.process_time() - cpu_start


def count_row_steps(model) -> list[int]:
    """Wraps the decoder's step to count the rows (beams) it is run for: one cell per step."""
    counts, step = [], model.decoder.step

    def counted(tokens, state):
        counts.append(tokens.shape[0])
        return step(tokens, state)

    model.decoder.step = counted
    return counts


def matmul_rate(rows: int, d_model: int, device: str) -> float:
    """FLOP/s of a plain (rows x d) @ (d x 4d) product, the decoder's largest, on this device."""
    a, b = torch.randn(rows, d_model, device=device), torch.randn(d_model, 4 * d_model, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    repeats, start = 50, time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return repeats * 2 * rows * d_model * 4 * d_model / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--output-scale", type=float, default=8.0, help="x output layer weights: peakier")
    parser.add_argument("--eos-bias", type=float, default=10.0, help="added to the <eos> logit")
    parser.add_argument("--length-penalty", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = build(args.vocab, args.output_scale, args.eos_bias, args.device)
    sents = sentences(args.num, args.vocab)
    options = SearchOptions(beam=args.beam, max_len_ratio=1.5, length_penalty=args.length_penalty)
    decode(model, sents[:4], 2, options, args.device)  # warm-up
    single, t_single, cpu_single = decode(model, sents, 1, options, args.device)
    row_steps = count_row_steps(model)
    batched, t_batched, cpu_batched = decode(model, sents, args.batch_size, options, args.device)
    del model.decoder.step

    # The compute floor: the multiply-adds of the decoder's linear layers for every row of every step
    # the batched search ran, at the speed of a plain matrix product as wide as its batch.
    decoder_weights = sum(m.weight.numel() for m in model.decoder.modules() if isinstance(m, torch.nn.Linear))
    flops = 2 * decoder_weights * sum(row_steps)
    rate = matmul_rate(args.batch_size * args.beam, 256, args.device)

    agree = sum(a.tokens == b.tokens for a, b in zip(single, batched))
    close = sum(a.tokens == b.tokens or abs(a.score - b.score) < 1e-4 for a, b in zip(single, batched))
    out_len = statistics.mean(len(h.tokens) for h in batched)
    src_len = statistics.mean(len(s) for s in sents)
    rate_single, rate_batched = args.num / t_single, args.num / t_batched
    print(f"{args.num} sentences, source {src_len:.1f} tokens, 1-best {out_len:.1f} tokens on average; "
          f"1-best identical for {agree}/{args.num} ({close}/{args.num} identical or tied within 1e-4)")
    # CPU seconds count every thread; with one thread they hardly depend on other processes' load.
    print(f"one at a time: {t_single:.2f} s ({cpu_single:.2f} CPU s), {rate_single:.1f} sentences/s")
    print(f"batched ({args.batch_size}): {t_batched:.2f} s ({cpu_batched:.2f} CPU s), {rate_batched:.1f} sentences/s, "
          f"{rate_batched / rate_single:.1f}x ({cpu_single / cpu_batched:.1f}x in CPU time)")
    print(f"decoder matmuls: {flops / 1e9:.1f} GFLOP over {sum(row_steps)} row-steps; a plain matmul at this width "
          f"runs {rate / 1e9:.0f} GFLOP/s, so batched search could take no less than {flops / rate:.2f} s "
          f"(one at a time / that floor = {t_single / (flops / rate):.1f}x; batched reaches "
          f"{flops / rate / t_batched:.0%} of it)")
    print()
    print("| device | threads | beam | batch | sentences | one at a time (sent/s) | batched (sent/s) | speed-up "
          "| 1-best agree |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.device} | {args.threads} | {args.beam} | {args.batch_size} | {args.num} | {rate_single:.1f} "
          f"| {rate_batched:.1f} | {rate_batched / rate_single:.1f}x | {agree}/{args.num} |")


if __name__ == "__main__":
    main()
