"""Training steps/s of a recipe's model config: on fixed-size random batches, or on real batches with data loading.

    python bench/train_speed.py --config egs/mini/st1/conf/train_st.yaml --batch 32 --frames 300 --steps 20
    python bench/train_speed.py --config egs/mustc/st1/conf/train_st.yaml --device cuda --batch 64 --frames 1200

prints one Markdown table row: config, device, batch shape, parameters, steps/s, frames/s.

    python bench/train_speed.py --config egs/mini/st1/conf/train_st.yaml --loading --steps 40 --workers 2

trains on real batches (features read from an ark through feats.scp, global CMVN, the config's
max_units batching and SpecAugment) the way ``kdst train`` does, three ways one after the other
from the same initial weights: batches read and collated in the training process as before
kdst.data.loader (``iterate``), the DataLoader in the training process (0 workers), and the
DataLoader with ``--workers`` processes.  For each it prints steps/s and the share of the time
the training process waited for the next batch.  The data is ``--data DIR`` (a data dir with
feats.scp, utt2num_frames, text and text.en, e.g. egs/mini/st1/data/train after stage 3), or
else ``--utterances`` tone utterances of 1-8 s with sentences of the synthetic corpus, made in
a temporary directory (features computed with kdst.data.features).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
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
    parser.add_argument("--loading", action="store_true", help="real batches: compare the ways of loading them")
    parser.add_argument("--data", help="(--loading) a data dir with features; default: made up")
    parser.add_argument("--utterances", type=int, default=400, help="(--loading) utterances to make up")
    parser.add_argument("--workers", type=int, default=2, help="(--loading) DataLoader worker processes")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.loading:
        compare_loading(args)
        return
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


# --- --loading: real batches -------------------------------------------------------------

def make_data(root: Path, n: int) -> Path:
    """A data dir of ``n`` tone utterances (1-8 s) with features, CMVN and char tokenizers, as stage 3 leaves."""
    import soundfile

    from kdst.data.features import compute_global_cmvn, write_fbank_shard
    from kdst.data.kaldi_dir import write_data_dir
    from kdst.data.tokenizer import train_tokenizer
    from kdst.synth.text import generate_pairs

    rng = np.random.default_rng(0)
    pairs = generate_pairs(n, seed=1)
    ids = [f"utt{i:05d}" for i in range(n)]
    wav_scp = {}
    for i, utt in enumerate(ids):
        seconds = rng.uniform(1.0, 8.0)
        t = np.arange(int(seconds * 16000)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 800) * t) + rng.normal(0, 0.01, t.shape)
        path = root / "wav" / f"{utt}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, wave.astype(np.float32), 16000)
        wav_scp[utt] = str(path)
    data = root / "train"
    write_data_dir(data, {"wav.scp": wav_scp, "utt2spk": {u: u for u in ids},
                          "text": dict(zip(ids, (p.de for p in pairs))),
                          "text.en": dict(zip(ids, (p.en for p in pairs)))})
    scp = write_fbank_shard(data, root / "fbank", "train")
    (data / "feats.scp").write_text(scp.read_text())
    (data / "utt2num_frames").write_text((root / "fbank" / "train.utt2num_frames").read_text())
    compute_global_cmvn(data / "feats.scp", root / "cmvn.npy")
    train_tokenizer(root / "tok_de", [data / "text"], type="char")
    train_tokenizer(root / "tok_en", [data / "text.en"], type="char")
    return data


def compare_loading(args) -> None:
    from kdst.data.dataset import iterate, make_batches
    from kdst.data.loader import batch_loader
    from kdst.train.trainer import build_datasets, compute_loss, load_config

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            data, root = Path(args.data), Path(args.data).parent
            tokenizers = {"tokenizer": root / "tokenizer" / "tgt", "ctc_tokenizer": root / "tokenizer" / "src",
                          "cmvn": data / "cmvn.npy"}
        else:
            started = time.perf_counter()
            data = make_data(Path(tmp), args.utterances)
            tokenizers = {"tokenizer": Path(tmp) / "tok_de", "ctc_tokenizer": Path(tmp) / "tok_en",
                          "cmvn": Path(tmp) / "cmvn.npy"}
            print(f"made {args.utterances} utterances with features in {time.perf_counter() - started:.0f} s")
        overrides = [f"data.train={data}", f"data.valid={data}", f"data.num_workers={args.workers}",
                     *(f"data.{key}={value}" for key, value in tokenizers.items())]
        config = load_config(args.config, overrides)
        train_set, _, sizes = build_datasets(config.data, config.train.seed)
        config = replace(config, model=replace(config.model, **sizes))
        batches = make_batches(train_set.src_lengths, config.data.max_units, max_items=config.data.max_items,
                               seed=config.train.seed, epoch=1)[:args.steps]
        frames = sum(train_set.src_lengths[u] for ids in batches for u in ids)
        print(f"{len(train_set.ids)} utterances; {len(batches)} batches of up to {config.data.max_units} frames "
              f"({frames / len(batches):.0f} frames a batch); torch threads {torch.get_num_threads()}; "
              f"device {device}")
        ways = {"in the training process, as before (iterate)": lambda: iterate(train_set, batches),
                "DataLoader, 0 workers": lambda: batch_loader(train_set, batches, num_workers=0, device=device),
                f"DataLoader, {args.workers} workers": lambda: batch_loader(train_set, batches,
                                                                            num_workers=args.workers, device=device)}
        print("| batches read | steps/s | waiting for data (% of step time) |")
        print("|---|---|---|")
        for name, make_batches_iter in ways.items():
            torch.manual_seed(1)
            model = build_model(config.model).to(device).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            waited, started = 0.0, time.perf_counter()
            batches_iter = iter(make_batches_iter())  # worker start-up is part of the wait
            while True:
                asked = time.perf_counter()
                batch = next(batches_iter, None)
                waited += time.perf_counter() - asked
                if batch is None:
                    break
                loss, stats = compute_loss(model, batch, config, device)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            print(f"| {name} | {len(batches) / seconds:.2f} | {100 * waited / seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
