"""validate-data on features: a feats.scp into a truncated ark is reported, and --deep reads every matrix."""

from __future__ import annotations

from pathlib import Path

import kaldiio
import numpy as np
import pytest

from kdst.cli import main
from kdst.data.kaldi_dir import write_kv
from kdst.data.validate import validate_data_dir


@pytest.fixture
def feats_dir(plain_dir: Path, tmp_path: Path) -> Path:
    """plain_dir with features: three matrices (10, 20, 30 frames x 80) in one ark, absolute paths."""
    ark, scp = tmp_path / "feats" / "raw.ark", plain_dir / "feats.scp"
    ark.parent.mkdir()
    utts = ["spk1-utt0", "spk1-utt1", "spk1-utt2"]
    rng = np.random.default_rng(0)
    with kaldiio.WriteHelper(f"ark,scp:{ark},{scp}") as writer:
        for i, utt in enumerate(utts):
            writer(utt, rng.normal(size=(10 * (i + 1), 80)).astype(np.float32))
    write_kv(plain_dir / "utt2num_frames", {u: str(10 * (i + 1)) for i, u in enumerate(utts)})
    return plain_dir


def ark_of(data: Path) -> Path:
    return Path((data / "feats.scp").read_text().split()[1].rsplit(":", 1)[0])


def offsets(data: Path) -> list[int]:
    return [int(line.rsplit(":", 1)[1]) for line in (data / "feats.scp").read_text().splitlines()]


def problems_of(data: Path, capsys, *options: str) -> tuple[int, list[str]]:
    status = main(["validate-data", "--no-audio", *options, str(data)])
    return status, capsys.readouterr().err.splitlines()


def test_features_that_are_whole_are_ok(feats_dir: Path, capsys):
    assert main(["validate-data", "--no-audio", str(feats_dir)]) == 0
    assert capsys.readouterr().out == f"{feats_dir}: OK\n"
    assert validate_data_dir(feats_dir, check_audio=False, deep=True) == []


def test_ark_cut_inside_the_last_matrix(feats_dir: Path, capsys):
    ark = ark_of(feats_dir)
    ark.write_bytes(ark.read_bytes()[:-100])
    status, err = problems_of(feats_dir, capsys)
    assert status == 1
    assert err[0] == (f"{feats_dir}/feats.scp:3: the matrix of 'spk1-utt2' ends at byte {ark.stat().st_size + 100}, "
                      f"past the end of {ark} ({ark.stat().st_size} bytes): the archive is truncated")
    assert len(err) == 2 and err[1] == f"{feats_dir}: 1 problem(s)"


def test_ark_cut_before_an_offset(feats_dir: Path, capsys):
    ark = ark_of(feats_dir)
    cut = offsets(feats_dir)[1] - 5  # inside the key of the second matrix: the second and third start past the end
    ark.write_bytes(ark.read_bytes()[:cut])
    status, err = problems_of(feats_dir, capsys)
    assert status == 1 and len(err) == 3
    assert err[0] == (f"{feats_dir}/feats.scp:2: 'spk1-utt1' starts at byte {offsets(feats_dir)[1]}, past the end of "
                      f"{ark} ({cut} bytes): the archive is truncated")
    assert err[1].startswith(f"{feats_dir}/feats.scp:3: 'spk1-utt2' starts at byte ")


def test_missing_ark_is_named_once(feats_dir: Path, capsys):
    ark = ark_of(feats_dir)
    ark.unlink()
    status, err = problems_of(feats_dir, capsys)
    assert status == 1 and err[0] == f"{feats_dir}/feats.scp:1: feature archive not found: {ark}" and len(err) == 2


def test_deep_reads_every_matrix(feats_dir: Path):
    """An offset that points into the middle of a matrix passes the cheap check (no header to read
    there); reading the matrix fails, one line for it."""
    scp = feats_dir / "feats.scp"
    lines = scp.read_text().splitlines()
    key, location = lines[1].split()
    ark, offset = location.rsplit(":", 1)
    lines[1] = f"{key} {ark}:{int(offset) + 40}"
    scp.write_text("\n".join(lines) + "\n")
    assert validate_data_dir(feats_dir, check_audio=False) == []
    problems = validate_data_dir(feats_dir, check_audio=False, deep=True)
    assert len(problems) == 1 and problems[0].startswith(f"{scp}:2: cannot read the matrix of 'spk1-utt1': ")


def test_deep_compares_frames_with_utt2num_frames(feats_dir: Path):
    write_kv(feats_dir / "utt2num_frames", {"spk1-utt0": "10", "spk1-utt1": "21", "spk1-utt2": "30"})
    assert validate_data_dir(feats_dir, check_audio=False) == []
    assert validate_data_dir(feats_dir, check_audio=False, deep=True) == [
        f"{feats_dir}/feats.scp:2: the matrix of 'spk1-utt1' has 20 frames, utt2num_frames says 21"]


def test_deep_on_the_command_line(feats_dir: Path, capsys):
    write_kv(feats_dir / "utt2num_frames", {"spk1-utt0": "10", "spk1-utt1": "21", "spk1-utt2": "30"})
    assert problems_of(feats_dir, capsys)[0] == 0
    status, err = problems_of(feats_dir, capsys, "--deep")
    assert status == 1 and err[0].startswith(f"{feats_dir}/feats.scp:2: the matrix of 'spk1-utt1' has 20 frames")
