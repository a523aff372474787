"""kdst average on bad inputs: a corrupt epoch checkpoint, no checkpoints, --num 0; never an average written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.mark.parametrize("how", ("truncated", "empty", "random"))
def test_corrupt_epoch_checkpoint(models, fails, corrupt, tmp_path: Path, how: str):
    exp = shutil.copytree(models.mt_exp, tmp_path / "exp")
    corrupt(models.mt_exp / "epoch-1.pt", exp / "epoch-1.pt", how)
    fails(["average", "--exp-dir", exp, "--num", "2"], exp / "epoch-1.pt")
    assert not list(exp.glob("avg_*"))


def test_no_checkpoints(fails, tmp_path: Path):
    (tmp_path / "exp").mkdir()
    fails(["average", "--exp-dir", tmp_path / "exp"], tmp_path / "exp", "last.pt")


def test_no_epoch_checkpoints(models, fails, tmp_path: Path):
    exp = shutil.copytree(models.mt_exp, tmp_path / "exp", ignore=shutil.ignore_patterns("epoch-*.pt"))
    fails(["average", "--exp-dir", exp, "--num", "1"], exp, "only 0 epoch checkpoint(s)")
    assert not list(exp.glob("avg_*"))


def test_num_zero(models, fails, tmp_path: Path):
    exp = shutil.copytree(models.mt_exp, tmp_path / "exp")
    fails(["average", "--exp-dir", exp, "--num", "0"], "--num")
    assert not list(exp.glob("avg_*"))
