"""kdst train on bad inputs: corrupt checkpoints (--resume, train.init, kd.teacher), missing features, bad config."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CORRUPTIONS = ("truncated", "empty", "random")


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_resume_from_a_corrupt_last_checkpoint(models, fails, corrupt, tmp_path: Path, how: str):
    exp = tmp_path / "exp"
    exp.mkdir()
    shutil.copy(models.mt_exp / "config.yaml", exp)
    before = corrupt(models.mt_exp / "last.pt", exp / "last.pt", how).read_bytes()
    fails(["train", "--config", models.mt / "config.yaml", "--exp-dir", exp, "--resume"], exp / "last.pt")
    assert (exp / "last.pt").read_bytes() == before and not list(exp.glob("*.pt.*")) and not list(exp.glob("epoch-*"))


@pytest.mark.parametrize("how", CORRUPTIONS)
@pytest.mark.parametrize("key", ["train.init", "kd.teacher"])
def test_corrupt_checkpoint_in_the_config(models, fails, corrupt, tmp_path: Path, how: str, key: str):
    model = corrupt(models.mt_model, tmp_path / f"{how}.pt", how)
    exp = tmp_path / "exp"
    line = fails(["train", "--config", models.mt / "config.yaml", "--exp-dir", exp, "--set", f"{key}={model}"], model)
    assert "not a readable checkpoint" in line
    assert not (exp / "last.pt").exists() and not list(exp.glob("epoch-*.pt"))


def test_init_from_a_model_of_another_shape(models, fails, tmp_path: Path):
    exp = tmp_path / "exp"
    line = fails(["train", "--config", models.mt / "config.yaml", "--exp-dir", exp,
                  "--set", f"train.init={models.st_model}"], models.st_model)
    assert "another model" in line
    assert not (exp / "last.pt").exists()


def test_feats_scp_without_an_utterance(models, fails, tmp_path: Path):
    task = shutil.copytree(models.st, tmp_path / "st", ignore=shutil.ignore_patterns("exp"))
    scp = task / "train" / "feats.scp"
    lines = scp.read_text().replace(str(models.st), str(task)).splitlines(keepends=True)
    dropped = lines.pop(2).split()[0]
    scp.write_text("".join(lines))
    config = task / "config.yaml"
    config.write_text(config.read_text().replace(str(models.st), str(task)))
    fails(["train", "--config", config, "--exp-dir", tmp_path / "exp"], scp, f"'{dropped}'")
    assert not (tmp_path / "exp" / "last.pt").exists()


@pytest.mark.parametrize("setting", ["train.epochs=0", "data.max_units=0"])
def test_zero_epochs_or_batch_size(models, fails, tmp_path: Path, setting: str):
    line = fails(["train", "--config", models.mt / "config.yaml", "--exp-dir", tmp_path / "exp", "--set", setting],
                 setting.split("=")[0])
    assert "must be >= 1" in line
    assert not (tmp_path / "exp").exists()
