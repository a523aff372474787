"""kdst compute-cmvn, speed-perturb and fbank on bad inputs: one line naming the file or option, nothing written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def test_cmvn_of_a_missing_scp(fails, tmp_path: Path):
    fails(["compute-cmvn", tmp_path / "feats.scp", tmp_path / "cmvn.ark"], tmp_path / "feats.scp", "missing")
    assert not (tmp_path / "cmvn.ark").exists()


def test_cmvn_of_a_truncated_ark(models, fails, tmp_path: Path):
    data = shutil.copytree(models.st / "dev", tmp_path / "dev")
    ark = (data / "feats.ark").read_bytes()
    (data / "feats.ark").write_bytes(ark[: len(ark) // 2])
    scp = (data / "feats.scp").read_text().replace(str(models.st / "dev"), str(data))
    (data / "feats.scp").write_text(scp)
    fails(["compute-cmvn", data / "feats.scp", tmp_path / "cmvn.ark"], f"{data / 'feats.scp'}:", "truncated")
    assert not (tmp_path / "cmvn.ark").exists()


@pytest.mark.parametrize("factors, bad", [("abc", "'abc'"), ("0", "'0'"), ("0.9,-1", "'-1'"), ("0.9,,1.1", "''"),
                                          ("nan", "'nan'"), ("1.0,1", "given twice")])
def test_speed_perturb_bad_factors(plain_dir: Path, fails, tmp_path: Path, factors: str, bad: str):
    fails(["speed-perturb", plain_dir, tmp_path / "sp", "--factors", factors], "--factors", bad)
    assert not (tmp_path / "sp").exists()


def test_fbank_feature_dir_is_a_file(plain_dir: Path, fails, tmp_path: Path):
    (tmp_path / "fbank").write_text("a file\n")
    fails(["fbank", plain_dir, tmp_path / "fbank"], tmp_path / "fbank", "not a directory")
    assert not (plain_dir / "feats.scp").exists()


def test_fbank_missing_config(plain_dir: Path, fails, tmp_path: Path):
    fails(["fbank", plain_dir, tmp_path / "fbank", "--config", tmp_path / "fbank.yaml"], tmp_path / "fbank.yaml")
    assert not (tmp_path / "fbank").exists()


def test_fbank_of_an_empty_wav_leaves_no_partial_shard(fails, tmp_path: Path):
    """A failing job removes its ark and its scp temporary: nothing a later stage could take for features."""
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "empty.wav").write_bytes(b"")
    (data / "wav.scp").write_text(f"u1 {tmp_path / 'empty.wav'}\n")
    (data / "utt2spk").write_text("u1 u1\n")
    (data / "text").write_text("u1 hello\n")
    fails(["fbank", data, tmp_path / "fbank"], "empty.wav")
    assert sorted(p.name for p in (tmp_path / "fbank").iterdir()) == []
