from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi

from helpers import needs, write_wav
from kdst.cli import main
from kdst.data.audio import load_recording
from kdst.data.features import (FbankOptions, GlobalCMVN, accumulate_cmvn, compute_fbank, compute_global_cmvn,
                                read_utt2num_frames, speed_perturb_data_dir, write_fbank_shard)
from kdst.data.kaldi_dir import DataDir
from kdst.data.validate import validate_data_dir
from kdst.errors import DataError

REPO = Path(__file__).resolve().parents[2]


def test_fbank_equals_torchaudio_kaldi_fbank_on_int16_audio(tmp_path: Path):
    wav = write_wav(tmp_path / "a.wav", 1.3)
    samples = load_recording(str(wav))
    ints = torch.from_numpy(samples * 32768).round().unsqueeze(0)  # what Kaldi reads from the file
    expected = torchaudio.compliance.kaldi.fbank(ints, num_mel_bins=80, dither=0.0, energy_floor=0.0,
                                                 sample_frequency=16000)
    ours = compute_fbank(samples)
    assert ours.shape == (128, 80)  # Kaldi's frame count for 1.3 s with snip_edges: 1 + (20800 - 400) // 160
    np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-5, atol=1e-4)


def test_shipped_config_is_the_default():
    assert FbankOptions.from_yaml(REPO / "conf" / "fbank.yaml") == FbankOptions()


def test_unknown_option_names_the_config(tmp_path: Path):
    (tmp_path / "fbank.yaml").write_text("num_mel_bins: 40\nnum_ceps: 13\n")
    with pytest.raises(DataError, match=r"fbank.yaml: unknown fbank option\(s\): num_ceps"):
        FbankOptions.from_yaml(tmp_path / "fbank.yaml")


def test_shard_round_trip_and_resume(segmented_dir: Path, tmp_path: Path):
    feat_dir = tmp_path / "feats"
    scp = write_fbank_shard(segmented_dir, feat_dir, "raw")
    feats = dict(kaldiio.load_scp(str(scp)))
    data = DataDir(segmented_dir)
    assert sorted(feats) == data.utterances()
    frames = read_utt2num_frames(feat_dir / "raw.utt2num_frames")
    assert all(feats[u].shape == (frames[u], 80) for u in feats)
    assert frames[data.utterances()[0]] == 1 + (19200 - 400) // 160  # a 1.2 s segment

    mtime = (feat_dir / "raw.ark").stat().st_mtime_ns
    write_fbank_shard(segmented_dir, feat_dir, "raw")  # same inputs: nothing to do
    assert (feat_dir / "raw.ark").stat().st_mtime_ns == mtime
    write_fbank_shard(segmented_dir, feat_dir, "raw", FbankOptions(num_mel_bins=40))  # new options: recompute
    assert next(iter(kaldiio.load_scp(str(scp)).values())).shape[1] == 40


def test_parallel_jobs_equal_one_job(segmented_dir: Path, tmp_path: Path):
    assert main(["fbank", "--nj", "2", str(segmented_dir), str(tmp_path / "f2")]) == 0
    parallel = {k: v.copy() for k, v in kaldiio.load_scp(str(segmented_dir / "feats.scp")).items()}
    logs = sorted((tmp_path / "f2" / "log").glob("*.log"))
    assert len(logs) == 2 and all("# Ended (code 0)" in log.read_text() for log in logs)
    assert main(["fbank", str(segmented_dir), str(tmp_path / "f1")]) == 0
    single = kaldiio.load_scp(str(segmented_dir / "feats.scp"))
    assert parallel.keys() == single.keys()
    for key in parallel:
        np.testing.assert_array_equal(parallel[key], single[key])
    assert validate_data_dir(segmented_dir) == []


def test_failed_job_is_reported(segmented_dir: Path, tmp_path: Path, capfd):
    (segmented_dir / "wav.scp").write_text("ted_00001 exit 1 |\nted_00002 exit 1 |\n")
    assert main(["fbank", "--nj", "2", str(segmented_dir), str(tmp_path / "f")]) != 0
    err = capfd.readouterr().err  # the launcher is a subprocess
    assert "kdst launch: 2 / 2 failed" in err and "raw_fbank_data.1.log" in err
    assert not (segmented_dir / "feats.scp").exists()


def test_global_cmvn_matches_numpy(segmented_dir: Path, tmp_path: Path):
    main(["fbank", str(segmented_dir), str(tmp_path / "f")])
    matrices = [m for _, m in kaldiio.load_scp_sequential(str(segmented_dir / "feats.scp"))]
    stats = compute_global_cmvn(segmented_dir / "feats.scp", tmp_path / "cmvn.ark")
    np.testing.assert_allclose(stats, accumulate_cmvn(matrices))
    everything = np.concatenate(matrices).astype(np.float64)
    cmvn = GlobalCMVN.load(tmp_path / "cmvn.ark")
    np.testing.assert_allclose(cmvn.mean, everything.mean(0), rtol=1e-5)
    normalised = cmvn(everything.astype(np.float32))
    np.testing.assert_allclose(normalised.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(normalised.std(0), 1, atol=1e-3)


@needs["sox"]
def test_speed_perturbation_through_sox_pipes(segmented_dir: Path, tmp_path: Path):
    sp = tmp_path / "sp"
    speed_perturb_data_dir(segmented_dir, sp, [0.9, 1.0, 1.1])
    data = DataDir(sp)
    assert len(data.utterances()) == 12
    assert data.require("wav.scp")["sp0.9-ted_00001"].endswith("speed 0.9 |")
    assert data.require("utt2spk")["sp1.1-ted_00001_0000200_0001400"] == "sp1.1-ted_00001"
    assert data.segments()["sp1.1-ted_00001_0000200_0001400"].end == pytest.approx(1.4 / 1.1, abs=1e-3)
    assert validate_data_dir(sp) == []
    scp = write_fbank_shard(sp, tmp_path / "f", "sp")
    frames = read_utt2num_frames(tmp_path / "f" / "sp.utt2num_frames")
    base = "ted_00001_0000200_0001400"
    assert frames[f"sp0.9-{base}"] > frames[base] > frames[f"sp1.1-{base}"]
    assert scp.is_file()


def test_more_jobs_than_recordings(segmented_dir: Path, tmp_path: Path):
    assert main(["fbank", "--nj", "8", str(segmented_dir), str(tmp_path / "f")]) == 0
    assert len(list((tmp_path / "f" / "log").glob("*.log"))) == 2  # one job per recording
    assert len(kaldiio.load_scp(str(segmented_dir / "feats.scp"))) == 4
