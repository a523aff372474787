"""What every bad-input test needs: the CLI run in-process, checked for one error line, and tiny trained models."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from helpers import make_mt_task, write_config
from kdst.cli import main
from kdst.train.trainer import load_config, run
from transducer_task import FEAT_DIM, make_feature_task, write_yaml


@pytest.fixture
def fails(capsys):
    """``fails(argv, *names)``: kdst exits non-zero with exactly one stderr line naming each of ``names``."""

    def check(argv: list, *names) -> str:
        capsys.readouterr()
        status = main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert status != 0, err
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        line = err.strip()
        assert line.startswith(f"kdst {argv[0]}: error: "), line
        for name in names:
            assert os.fspath(name) in line, line
        return line

    return check


@dataclass(frozen=True)
class Models:
    mt: Path  # the MT task of helpers.make_mt_task
    mt_exp: Path  # its training run: epoch-1.pt, epoch-2.pt, last.pt
    st: Path  # a speech task in features (transducer_task.make_feature_task)
    st_exp: Path  # an attention encoder-decoder trained on it: epoch-1.pt

    @property
    def mt_model(self) -> Path:
        return self.mt_exp / "epoch-2.pt"

    @property
    def st_model(self) -> Path:
        return self.st_exp / "epoch-1.pt"


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Models:
    """One tiny MT and one tiny ST model, trained once (a few seconds) for every bad-input test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mt = make_mt_task(tmp_path_factory.mktemp("mt"), sizes=(("train", 24, 1), ("dev", 6, 2)))
        run(load_config(write_config(mt, mt / "config.yaml", epochs=2)), mt / "exp")
        st = make_feature_task(tmp_path_factory.mktemp("st"), sizes=(("train", 12, 1), ("dev", 4, 2)))
        config = {"data": {"train": str(st / "train"), "valid": str(st / "dev"), "text": "text",
                           "tokenizer": str(st / "tok"), "max_units": 400},
                  "model": {"input_dim": FEAT_DIM, "d_model": 16,
                            "encoder": {"type": "conformer", "layers": 1, "heads": 2, "ff_dim": 32, "kernel_size": 3,
                                        "subsampling_channels": 4},
                            "decoder": {"layers": 1, "heads": 2, "ff_dim": 32}},
                  "optim": {"lr": 3e-3, "warmup_steps": 5, "schedule": "noam"},
                  "train": {"epochs": 1, "seed": 7, "log_interval": 1}}
        run(load_config(write_yaml(config, st / "config.yaml")), st / "exp")
    finally:
        torch.set_num_threads(threads)
    return Models(mt, mt / "exp", st, st / "exp")


@pytest.fixture
def corrupt():
    """``corrupt(good, path, how)``: at ``path``, checkpoint ``good`` cut in half, a 0-byte file or random bytes."""

    def write(good: Path, path: Path, how: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = good.read_bytes()
        noise = random.Random(how).randbytes(4096)  # the same bytes every run: a failure can be rerun
        path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "random": noise}[how])
        return path

    return write
