"""kdst topk on bad inputs: a corrupt teacher checkpoint, --k 0, an output path that is a file."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.parametrize("how", ("truncated", "empty", "random"))
def test_corrupt_teacher(models, fails, corrupt, tmp_path: Path, how: str):
    teacher = corrupt(models.mt_model, tmp_path / f"{how}.pt", how)
    fails(["topk", "--teacher", teacher, "--data-dir", models.mt / "dev", "--out", tmp_path / "cache"], teacher)
    assert not (tmp_path / "cache").exists()


def test_k_zero(models, fails, tmp_path: Path):
    fails(["topk", "--teacher", models.mt_model, "--data-dir", models.mt / "dev", "--out", tmp_path / "cache",
           "--k", "0"], "--k")
    assert not (tmp_path / "cache").exists()


def test_out_is_a_file(models, fails, tmp_path: Path):
    (tmp_path / "cache").write_text("not a cache\n")
    fails(["topk", "--teacher", models.mt_model, "--data-dir", models.mt / "dev", "--out", tmp_path / "cache"],
          tmp_path / "cache")
    assert (tmp_path / "cache").read_text() == "not a cache\n"
