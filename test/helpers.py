"""Plain helpers for the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

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
