"""Training checkpoints: atomic saves, RNG states, which epochs to keep, and averaging.

Reading a checkpoint and building its model is kdst.models.loading's."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import torch

from kdst.data.files import atomic_path
from kdst.errors import KdstError
from kdst.models.loading import read_checkpoint

_EPOCH_FILE = re.compile(r"epoch-(\d+)\.pt")


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temporary name, then rename: a crash never leaves a truncated checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def epoch_checkpoints(exp_dir: Path) -> dict[int, Path]:
    found = {}
    for path in exp_dir.glob("epoch-*.pt"):
        match = _EPOCH_FILE.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def prune(exp_dir: Path, history: dict[int, float], keep_best: int, keep_last: int = 2) -> None:
    """Delete epoch checkpoints that are neither among the best (lowest validation loss) nor the last."""
    best = set(sorted(history, key=history.get)[:keep_best])
    last = set(sorted(history)[-keep_last:])
    for epoch, path in epoch_checkpoints(exp_dir).items():
        if epoch not in best | last:
            path.unlink()


def average(exp_dir: Path, num: int, by: str = "best") -> Path:
    """Average the weights of the ``num`` best (by validation loss) or last epoch checkpoints."""
    if num < 1:
        raise KdstError(f"--num must be >= 1, not {num}")
    if not (exp_dir / "last.pt").is_file():
        raise KdstError(f"{exp_dir}: no training run here (no last.pt)")
    last = read_checkpoint(exp_dir / "last.pt")
    if "progress" not in last:
        raise KdstError(f"{exp_dir / 'last.pt'}: not a training checkpoint (no progress in it)")
    history: dict[int, float] = last["progress"]["history"]
    available = epoch_checkpoints(exp_dir)
    ranked = sorted(history, key=history.get) if by == "best" else sorted(history, reverse=True)
    chosen = [e for e in ranked if e in available][:num]
    if len(chosen) < num:
        raise KdstError(f"{exp_dir}: only {len(chosen)} epoch checkpoint(s) to average, asked for {num}")
    total: dict[str, torch.Tensor] = {}
    for epoch in chosen:
        weights = read_checkpoint(available[epoch])["model"]
        for name, value in weights.items():
            total[name] = total.get(name, 0) + value.double()
    averaged = {name: (value / num).to(weights[name].dtype) for name, value in total.items()}
    out = exp_dir / f"avg_{by}{num}.pt"
    save_atomic({"model": averaged, "config": last["config"], "epochs": sorted(chosen)}, out)
    return out
