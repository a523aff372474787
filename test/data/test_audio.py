from pathlib import Path

import numpy as np
import pytest
import soundfile

from helpers import needs, tone, write_wav
from kdst.data.audio import AudioError, audio_duration, iter_utterances, load_recording, read_wav_scp_value
from kdst.data.kaldi_dir import DataDir
from kdst.errors import DataError


def test_reads_wav_as_float(tmp_path: Path):
    path = write_wav(tmp_path / "a.wav", 0.5)
    samples, rate = read_wav_scp_value(str(path))
    assert rate == 16000 and samples.dtype == np.float32 and len(samples) == 8000
    np.testing.assert_allclose(samples, tone(0.5), atol=1 / 32768 + 1e-6)


@needs["flac"]
def test_flac_file_and_pipe_agree_with_wav(tmp_path: Path):
    wav = write_wav(tmp_path / "a.wav", 0.5)
    flac = tmp_path / "a.flac"
    soundfile.write(flac, *soundfile.read(wav), subtype="PCM_16")
    expected, _ = read_wav_scp_value(str(wav))
    np.testing.assert_array_equal(read_wav_scp_value(str(flac))[0], expected)
    np.testing.assert_array_equal(read_wav_scp_value(f"flac -c -d -s {flac} |")[0], expected)


@needs["sox"]
def test_sox_pipe_with_streaming_header(tmp_path: Path):
    wav = write_wav(tmp_path / "a.wav", 1.0)
    samples, rate = read_wav_scp_value(f"sox {wav} -t wav - speed 0.9 |")
    assert rate == 16000 and abs(len(samples) / rate - 1.0 / 0.9) < 0.01


def test_resamples_to_16k(tmp_path: Path):
    path = write_wav(tmp_path / "a.wav", 1.0, rate=22050)
    assert len(load_recording(str(path))) == 16000
    assert audio_duration(str(path)) == pytest.approx(1.0)


def test_errors_say_what_is_wrong(tmp_path: Path):
    with pytest.raises(AudioError, match="audio file not found"):
        read_wav_scp_value(str(tmp_path / "missing.wav"))
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match="cannot decode audio"):
        read_wav_scp_value(str(tmp_path / "bad.wav"))
    with pytest.raises(AudioError, match=r"command failed \(exit 1\): boom"):
        read_wav_scp_value("echo boom >&2; exit 1 |")


def test_segments_are_cut_from_each_recording_once(segmented_dir: Path):
    data = DataDir(segmented_dir)
    utterances = list(iter_utterances(data.require("wav.scp"), data.segments()))
    assert [u.key for u in utterances] == data.utterances()
    first = utterances[0]  # 0.2 - 1.4 s of talk 1
    whole = load_recording(data.require("wav.scp")["ted_00001"])
    np.testing.assert_array_equal(first.samples, whole[3200:22400])


def test_segment_outside_recording_is_a_data_error(segmented_dir: Path):
    data = DataDir(segmented_dir)
    segments = data.segments()
    key = next(iter(segments))
    segments[key] = type(segments[key])("ted_00001", 5.0, 6.0)
    with pytest.raises(DataError, match="outside recording 'ted_00001'"):
        list(iter_utterances(data.require("wav.scp"), segments, data.file("wav.scp")))
