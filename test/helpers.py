"""Plain helpers for the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

from kdst.synth.text import generate_pairs
from kdst.data.kaldi_dir import write_data_dir
from kdst.data.tokenizer import train_tokenizer

RATE = 16000


def tone(seconds: float, rate: int = RATE, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    """A tone with a little noise: speech-like enough for fbank, never silent."""
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.01, t.shape)
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def write_wav(path: Path, seconds: float, rate: int = RATE, seed: int = 0, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, tone(seconds, rate, seed=seed), rate, subtype=subtype)
    return path


needs = {tool: pytest.mark.skipif(shutil.which(tool) is None, reason=f"{tool} is not installed "
                                  f"(tools/install.sh installs it as root)")
         for tool in ("sox", "flac", "espeak-ng")}


def make_mt_task(root: Path, sizes=(("train", 64, 1), ("dev", 16, 2))) -> Path:
    """A tiny En->De MT task (text.en -> text) from the synthetic grammar, with char tokenizers."""
    for split, n, seed in sizes:
        pairs = generate_pairs(n, seed=seed, variability=0.0)
        ids = [f"utt{i:03d}" for i in range(n)]
        write_data_dir(root / split, {"text.en": dict(zip(ids, (p.en for p in pairs))),
                                      "text": dict(zip(ids, (p.de for p in pairs))),
                                      "utt2spk": {u: u for u in ids}})
    train_tokenizer(root / "tok_en", [root / "train" / "text.en"], type="char")
    train_tokenizer(root / "tok_de", [root / "train" / "text"], type="char")
    return root


def write_config(root: Path, path: Path, **train) -> Path:
    """A training config for the tiny MT task of make_mt_task; ``train`` overrides the train section."""
    config = {
        "data": {"input": "text", "train": str(root / "train"), "valid": str(root / "dev"),
                 "src_text": "text.en", "text": "text", "tokenizer": str(root / "tok_de"),
                 "src_tokenizer": str(root / "tok_en"), "max_units": 1200},
        "model": {"input": "text", "d_model": 32, "encoder": {"layers": 1, "heads": 2, "ff_dim": 64, "dropout": 0.1},
                  "decoder": {"layers": 1, "heads": 2, "ff_dim": 64, "dropout": 0.1}, "label_smoothing": 0.1},
        "optim": {"lr": 3e-3, "warmup_steps": 5, "schedule": "noam"},
        "train": {"epochs": 3, "seed": 7, "log_interval": 1, "keep_best": 2, **train},
    }
    path.write_text(yaml.safe_dump(config))
    return path


REPO = Path(__file__).resolve().parents[1]
RECIPE_OUTPUTS = ("corpus", "data", "dump", "exp", ".stages")  # a user's earlier run, not copied


def copy_recipe(root: Path, name: str) -> Path:
    """A private copy of egs/<name> under root/egs (sharing egs/TEMPLATE), so tests never touch the real one."""
    egs = root / "egs"
    egs.mkdir(parents=True, exist_ok=True)
    if not (egs / "TEMPLATE").exists():
        (egs / "TEMPLATE").symlink_to(REPO / "egs" / "TEMPLATE")
    shutil.copytree(REPO / "egs" / name, egs / name, symlinks=True, ignore=shutil.ignore_patterns(*RECIPE_OUTPUTS))
    return egs / name


def run_recipe(recipe: Path, *args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``recipe/run.sh args...`` with this Python's venv first on PATH; output captured."""
    env = {**os.environ, **(env or {})}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run([str(recipe / "run.sh"), *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=timeout)
