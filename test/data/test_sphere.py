"""NIST SPHERE: header parsing, PCM/ulaw decoding, shorten detection, and kdst.data.audio reading it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import tone
from kdst.data.audio import AudioError, audio_duration, load_recording, read_wav_scp_value
from kdst.data.sphere import SPH2PIPE_HINT, is_shorten, is_sphere_file, read_sphere, read_sphere_header
from kdst.errors import DataError


def sphere_bytes(body: bytes, fields: list[str], size: int = 1024) -> bytes:
    """A SPHERE file as WSJ discs have them: the header padded to ``size`` bytes, then the samples."""
    head = "\n".join(["NIST_1A", f"{size:7d}", *fields, "end_head", ""]).encode("ascii")
    return head + b" " * (size - len(head)) + body


def write_sphere(path: Path, samples: np.ndarray, rate: int = 16000, byte_format: str = "01",
                 coding: str = "pcm", size: int = 1024) -> Path:
    """16-bit samples (int16, shape (n,) or (n, channels)) in the given byte order."""
    samples = samples if samples.ndim == 2 else samples[:, None]
    dtype = "<i2" if byte_format == "01" else ">i2"
    fields = ["database_id -s7 WSJ0 x1", f"sample_count -i {len(samples)}", f"sample_rate -i {rate}",
              f"channel_count -i {samples.shape[1]}", "sample_n_bytes -i 2",
              f"sample_byte_format -s2 {byte_format}", f"sample_coding -s{len(coding)} {coding}",
              "sample_sig_bits -i 16", "speaking_mode -s14 read-document", "utterance_id -s8 011c0201",
              "sample_max -i 1234", "recording_date -s11 03-Nov-1991", "sample_checksum -i 1"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(sphere_bytes(samples.astype(dtype).tobytes(), fields, size))
    return path


def int16_tone(seconds: float = 0.25, rate: int = 16000) -> np.ndarray:
    return np.round(tone(seconds, rate) * 32767).astype(np.int16)


@pytest.mark.parametrize("byte_format", ["01", "10"])
def test_header_and_samples_in_both_byte_orders(tmp_path: Path, byte_format: str):
    pcm = int16_tone()
    path = write_sphere(tmp_path / "a.wv1", pcm, byte_format=byte_format)
    header = read_sphere_header(path)
    assert (header.header_bytes, header.sample_rate, header.channel_count, header.sample_count,
            header.sample_n_bytes, header.byte_format, header.coding) == (1024, 16000, 1, len(pcm), 2,
                                                                          byte_format, "pcm")
    # strings keep their inner spaces; every field is kept raw
    assert header.fields["speaking_mode"] == "read-document" and header.fields["database_id"] == "WSJ0 x1"
    assert header.fields["utterance_id"] == "011c0201" and header.fields["sample_sig_bits"] == 16
    assert is_sphere_file(path) and not is_shorten(header)
    samples, rate = read_sphere(path)
    assert rate == 16000 and samples.dtype == np.float32
    np.testing.assert_array_equal(samples, pcm.astype(np.float32) / 32768)


def test_first_channel_and_a_large_header(tmp_path: Path):
    stereo = np.stack([int16_tone(), -int16_tone()], axis=1)
    path = write_sphere(tmp_path / "s.sph", stereo, rate=8000, byte_format="10", size=2048)
    assert read_sphere_header(path).header_bytes == 2048
    samples, rate = read_sphere(path)
    assert rate == 8000
    np.testing.assert_array_equal(samples, stereo[:, 0].astype(np.float32) / 32768)


def test_ulaw(tmp_path: Path):
    path = tmp_path / "u.sph"
    fields = ["sample_count -i 4", "sample_rate -i 8000", "sample_n_bytes -i 1", "sample_coding -s4 ulaw"]
    path.write_bytes(sphere_bytes(bytes([0xFF, 0x7F, 0x80, 0x00]), fields))
    samples, _ = read_sphere(path)
    np.testing.assert_array_equal(samples * 32768, [0, 0, 32124, -32124])


def test_shorten_is_detected_and_points_to_sph2pipe(tmp_path: Path):
    path = write_sphere(tmp_path / "s.wv1", int16_tone(), coding="pcm,embedded-shorten-v2.00")
    header = read_sphere_header(path)
    assert header.coding == "pcm,embedded-shorten-v2.00" and is_shorten(header)
    with pytest.raises(DataError, match="shorten-compressed.*sph2pipe"):
        read_sphere(path)
    assert "make sph2pipe" in SPH2PIPE_HINT and "gcc -o sph2pipe *.c -lm" in SPH2PIPE_HINT
    for read in (read_wav_scp_value, audio_duration):
        with pytest.raises(AudioError, match=r"shorten-compressed.*tools/sph2pipe_v2\.5/sph2pipe"):
            read(str(path))


@pytest.mark.parametrize("fields, message", [
    (["sample_rate -x 16000"], "malformed SPHERE header field"),
    (["sample_rate -i sixteen"], "malformed SPHERE header field"),
    (["sample_count -i 10"], "no positive sample_rate"),
])
def test_malformed_headers(tmp_path: Path, fields: list[str], message: str):
    path = tmp_path / "bad.sph"
    path.write_bytes(sphere_bytes(b"", fields))
    with pytest.raises(DataError, match=message):
        read_sphere_header(path)


def test_not_sphere_missing_end_and_truncated(tmp_path: Path):
    (tmp_path / "a").write_bytes(b"RIFF....")
    with pytest.raises(DataError, match="not a NIST SPHERE file"):
        read_sphere_header(tmp_path / "a")
    (tmp_path / "b").write_bytes(b"NIST_1A\n   1024\nsample_rate -i 16000\n" + b" " * 1000)
    with pytest.raises(DataError, match="no 'end_head'"):
        read_sphere_header(tmp_path / "b")
    (tmp_path / "c").write_bytes(b"NIST_1A\n  big\n")
    with pytest.raises(DataError, match="header size is not a number"):
        read_sphere_header(tmp_path / "c")
    path = write_sphere(tmp_path / "d.sph", int16_tone())
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_sphere(path)


def test_audio_module_reads_sphere(tmp_path: Path):
    pcm = int16_tone(0.5, rate=8000)
    path = write_sphere(tmp_path / "a.wv1", pcm, rate=8000, byte_format="10")
    samples, rate = read_wav_scp_value(str(path))
    assert rate == 8000
    np.testing.assert_array_equal(samples, pcm.astype(np.float32) / 32768)
    assert audio_duration(str(path)) == pytest.approx(0.5)
    assert len(load_recording(str(path))) == 8000  # resampled to 16 kHz
    empty = write_sphere(tmp_path / "e.wv1", np.zeros(0, np.int16))
    with pytest.raises(AudioError, match="empty"):
        audio_duration(str(empty))
