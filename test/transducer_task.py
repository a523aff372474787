"""A tiny ASR task in features (feats.scp, utt2num_frames) and transducer configs for it."""

from __future__ import annotations

from pathlib import Path

import kaldiio
import numpy as np
import yaml

from kdst.data.kaldi_dir import write_data_dir
from kdst.data.tokenizer import train_tokenizer

FEAT_DIM = 20
WORDS = ("ab", "ba", "abc", "ca", "cab")


def make_feature_task(root: Path, sizes=(("train", 24, 1), ("dev", 8, 2))) -> Path:
    """Random 20-dim features (40 to 70 frames) with 1 or 2 short words each, and a char tokenizer."""
    for split, n, seed in sizes:
        rng = np.random.default_rng(seed)
        ids = [f"utt{i:03d}" for i in range(n)]
        text, frames = {}, {}
        (root / split).mkdir(parents=True, exist_ok=True)
        with kaldiio.WriteHelper(f"ark,scp:{root / split / 'feats.ark'},{root / split / 'feats.scp'}") as writer:
            for utt in ids:
                words = rng.choice(WORDS, size=int(rng.integers(1, 3)))
                text[utt] = " ".join(words)
                feats = rng.normal(size=(int(rng.integers(40, 71)), FEAT_DIM)).astype(np.float32)
                frames[utt] = str(len(feats))
                writer(utt, feats)
        write_data_dir(root / split, {"text": text, "utt2spk": {u: u for u in ids}, "utt2num_frames": frames})
    train_tokenizer(root / "tok", [root / "train" / "text"], type="char")
    return root


def transducer_config(root: Path, *, streaming: bool = False, **train) -> dict:
    """A training config for a tiny transducer on make_feature_task's data; ``train`` overrides the train section."""
    encoder = {"type": "conformer", "d_model": 16, "layers": 1, "heads": 2, "ff_dim": 32, "kernel_size": 3,
               "subsampling_channels": 4, "dropout": 0.1}
    if streaming:
        encoder = {**encoder, "type": "streaming_conformer", "chunk_size": 2, "left_chunks": 1}
    return {
        "data": {"train": str(root / "train"), "valid": str(root / "dev"), "text": "text",
                 "tokenizer": str(root / "tok"), "max_units": 400},
        "model": {"type": "transducer", "input_dim": FEAT_DIM, "encoder": encoder,
                  "predictor": {"type": "stateless", "dim": 16, "context_size": 2}, "joiner": {"dim": 16}},
        "optim": {"lr": 3e-3, "warmup_steps": 5, "schedule": "noam"},
        "train": {"epochs": 1, "seed": 7, "log_interval": 1, "keep_best": 2, "bf16": False, **train},
    }


def write_yaml(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path
