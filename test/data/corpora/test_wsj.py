"""WSJ prep on a fixture tree in the LDC disc layout (wsj0 = LDC93S6B, wsj1 = LDC94S13B)."""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path

import kaldiio
import numpy as np
import pytest

from helpers import tone
from kdst.data.audio import read_wav_scp_value
from kdst.data.corpora.wsj import (add_arguments, find_discs, non_linguistic_symbols, normalize_transcript,
                                   parse_dot, parse_ndx, prepare_wsj, run)
from kdst.data.features import compute_fbank, write_fbank_shard
from kdst.data.kaldi_dir import DataDir
from kdst.data.validate import validate_data_dir
from kdst.errors import DataError, KdstError

NDX_HEADER = [";", "; Training data index for WSJ0 SI-84 (7138 utts), wv1 channel", ";", ";     RELEASE 1.0",
              ";"]

# wsj0 on LDC93S6B/<disc>, wsj1 two levels down on LDC94S13B/csr_2/<disc>.
AUDIO = [
    "LDC93S6B/11-1.1/wsj0/si_tr_s/011/011c0201.wv1",
    "LDC93S6B/11-1.1/wsj0/si_tr_s/011/011c0202.wv1",
    "LDC93S6B/11-1.1/wsj0/si_tr_s/012/012c0201.wv1",        # no transcript anywhere
    "LDC93S6B/11-2.1/wsj0/si_tr_s/401/401c0201.wv1",        # Kaldi leaves speaker 401 out
    "LDC93S6B/11-14.1/WSJ0/SI_ET_20/440/440C0201.WV1",      # an upper-case copy of the disc
    "LDC94S13B/csr_2/13-1.1/wsj1/si_tr_s/4a0/4a0c0201.wv1",
    "LDC94S13B/csr_2/13-1.1/wsj1/si_tr_s/4a0/4a0c0202.wv1",
    "LDC94S13B/csr_2/13-16.1/wsj1/si_dt_20/4k0/4k0c0301.wv1",
]
TEXT = {
    "LDC93S6B/11-4.1/wsj0/transcrp/dots/si_tr_s/011/011c0200.dot": [
        "The sale of the hotels [loud_breath] is part of Holiday's <strategy> ,COMMA (011c0201)",
        "\\Mr. Smith's [<door_slam] firm rose %PERCENT .POINT (011c0202)",
        "A third utterance with no audio (011c0203)"],
    "LDC93S6B/11-4.1/wsj0/transcrp/dots/si_tr_s/401/401c0200.dot": ["Speaker four oh one (401c0201)"],
    "LDC93S6B/11-14.1/WSJ0/TRANSCRP/DOTS/SI_ET_20/440/440C0200.DOT": ["PROFITS FELL . SHARPLY ~ (440C0201)"],
    "LDC94S13B/csr_2/13-1.1/wsj1/si_tr_s/4a0/4a0c0200.dot": [
        "[door_slam/] Yields rose --DASH briefly [/door_slam] (4a0c0201)", "*Pricy* stocks (4a0c0202)"],
    "LDC94S13B/csr_2/13-16.1/wsj1/si_dt_20/4k0/4k0c0300.dot": ["Bonds slipped [lip_smack>] today .PERIOD (4k0c0301)"],
}
INDICES = {
    "LDC93S6B/11-13.1/wsj0/doc/indices/train/tr_s_wv1.ndx": NDX_HEADER + [
        "11_1_1:wsj0/si_tr_s/011/011c0201.wv1", "11_1_1:wsj0/si_tr_s/011/011c0202.wv1",
        "11_1_1:wsj0/si_tr_s/011/011c0203.wv1", "11_1_1:wsj0/si_tr_s/012/012c0201.wv1",
        "11_2_1:wsj0/si_tr_s/401/401c0201.wv1"],
    "LDC93S6B/11-13.1/wsj0/doc/indices/test/nvp/si_et_20.ndx": [";", "11_14_1:wsj0/si_et_20/440/440c0201"],
    "LDC94S13B/csr_2/13-34.1/wsj1/doc/indices/si_tr_s.ndx": NDX_HEADER + [
        "13_1_1:wsj1/si_tr_s/4a0/4a0c0201.wv1", "13_1_1:wsj1/si_tr_s/4a0/4a0c0202.wv1"],
    "LDC94S13B/csr_2/13-34.1/wsj1/doc/indices/h1_p0.ndx": [";", "13_16_1:wsj1/si_dt_20/4k0/4k0c0301"],
}
SECONDS = 0.3


def write_sphere(path: Path, coding: str = "pcm", seed: int = 0) -> np.ndarray:
    """A WSJ-like .wv1: 1024-byte SPHERE header, then 16-bit little-endian samples (shorten: fake body)."""
    pcm = np.round(tone(SECONDS, seed=seed) * 32767).astype("<i2")
    head = "\n".join(["NIST_1A", "   1024", f"sample_count -i {len(pcm)}", "sample_rate -i 16000",
                      "channel_count -i 1", "sample_n_bytes -i 2", "sample_byte_format -s2 01",
                      f"sample_coding -s{len(coding)} {coding}", "end_head", ""]).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head + b" " * (1024 - len(head)) + (pcm.tobytes() if coding == "pcm" else b"ajkq\x00\x01"))
    return pcm


def make_wsj_tree(root: Path, coding: str = "pcm") -> tuple[Path, Path]:
    for seed, rel in enumerate(AUDIO):
        write_sphere(root / rel, coding, seed)
    for rel, lines in {**TEXT, **INDICES}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        # real indices have DOS line ends
        (root / rel).write_bytes("".join(f"{line}\r\n" for line in lines).encode())
    return root / "LDC93S6B", root / "LDC94S13B"


ALL_SETS = ("train_si84", "train_si284", "test_dev93", "test_eval92")


def test_prep_sets_membership_and_text(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO)
    counts = prepare_wsj(make_wsj_tree(tmp_path / "wsj"), tmp_path / "data", sets=ALL_SETS)
    assert counts == {"train_si84": 2, "train_si284": 4, "test_dev93": 1, "test_eval92": 1}
    si84, si284 = DataDir(tmp_path / "data" / "train_si84"), DataDir(tmp_path / "data" / "train_si284")
    assert si84.utterances() == ["011c0201", "011c0202"]  # 401 excluded, 012c0201 untranscribed
    assert si284.utterances() == ["011c0201", "011c0202", "4a0c0201", "4a0c0202"]  # wsj1 + si84
    assert si284.require("spk2utt") == {"011": "011c0201 011c0202", "4a0": "4a0c0201 4a0c0202"}
    assert si84.require("text") == {
        "011c0201": "THE SALE OF THE HOTELS <NOISE> IS PART OF HOLIDAY'S STRATEGY ,COMMA",
        "011c0202": "MR. SMITH'S FIRM ROSE PERCENT POINT"}
    assert si284.require("text")["4a0c0201"] == "YIELDS ROSE -DASH BRIEFLY"
    eval92 = DataDir(tmp_path / "data" / "test_eval92")
    assert eval92.require("text") == {"440c0201": "PROFITS FELL SHARPLY"}
    assert eval92.require("wav.scp")["440c0201"] == str(tmp_path / "wsj" / AUDIO[4])
    assert DataDir(tmp_path / "data" / "test_dev93").require("utt2spk") == {"4k0c0301": "4k0"}
    assert (tmp_path / "data" / "nlsyms.txt").read_text() == "<NOISE>\n"
    for name in ALL_SETS:  # sorted, unique, consistent, and the SPHERE audio opens
        assert validate_data_dir(tmp_path / "data" / name, check_audio=True) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "train_si84: skipped 1 index entry, no transcript (e.g. 11-1.1/wsj0/si_tr_s/012/012c0201.wv1)" in warnings
    assert "train_si84: skipped 1 index entry, missing audio (e.g. 11-1.1/wsj0/si_tr_s/011/011c0203.wv1)" in warnings
    assert any("train_si284: 4 utterances, 2 speakers, 2 skipped, 1 excluded" in r.getMessage() for r in caplog.records)


def test_pcm_sphere_audio_end_to_end_to_fbank(tmp_path: Path):
    wsj0, wsj1 = make_wsj_tree(tmp_path / "wsj")
    # the disc dirs themselves, rather than their parents
    prepare_wsj([wsj0 / "11-13.1", wsj0 / "11-14.1", wsj0 / "11-4.1"], tmp_path / "data", sets=["test_eval92"])
    data = tmp_path / "data" / "test_eval92"
    expected = np.round(tone(SECONDS, seed=4) * 32767) / 32768
    samples, rate = read_wav_scp_value(DataDir(data).require("wav.scp")["440c0201"])
    assert rate == 16000
    np.testing.assert_array_equal(samples, expected.astype(np.float32))
    scp = write_fbank_shard(data, tmp_path / "fbank", "eval92")
    feats = kaldiio.load_scp(str(scp))["440c0201"]
    assert feats.shape == (28, 80)
    np.testing.assert_allclose(feats, compute_fbank(samples), rtol=1e-5, atol=1e-4)


def test_shorten_audio_goes_through_sph2pipe(tmp_path: Path, monkeypatch):
    dirs = make_wsj_tree(tmp_path / "wsj", coding="pcm,embedded-shorten-v2.00")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(KdstError, match=r"shorten-compressed .* sph2pipe is not on PATH: .*make sph2pipe"):
        prepare_wsj(dirs, tmp_path / "data", sets=["test_dev93"])
    fake = bin_dir / "sph2pipe"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    prepare_wsj(dirs, tmp_path / "data", sets=["test_dev93"])
    value = DataDir(tmp_path / "data" / "test_dev93").require("wav.scp")["4k0c0301"]
    assert value == f"{fake} -f wav -p -c 1 {tmp_path / 'wsj' / AUDIO[7]} |"


def test_missing_discs_unknown_and_empty_sets(tmp_path: Path):
    wsj0, wsj1 = make_wsj_tree(tmp_path / "wsj")
    with pytest.raises(KdstError, match=rf"disc\(s\) 13-34.1 not found .*searched {re.escape(str(wsj0))}"):
        prepare_wsj([wsj0], tmp_path / "data")
    with pytest.raises(KdstError, match="unknown WSJ set.*test_eval93"):
        prepare_wsj([wsj0], tmp_path / "data", sets=["nope"])
    (tmp_path / "wsj" / AUDIO[7]).unlink()
    with pytest.raises(KdstError, match="test_dev93 is empty"):
        prepare_wsj([wsj0, wsj1], tmp_path / "data", sets=["test_dev93"])


def test_eval93_index_names_the_wrong_disc(tmp_path: Path):
    wsj0, wsj1 = make_wsj_tree(tmp_path / "wsj")
    index = wsj1 / "13-32.1/wsj1/doc/indices/wsj1/eval/h1_p0.ndx"
    index.parent.mkdir(parents=True)
    index.write_text("13_32_1:wsj1/si_et_h1/wsj64k/4k8/4k8c0201\n")
    write_sphere(wsj1 / "13-33.1/wsj1/si_et_h1/wsj64k/4k8/4k8c0201.wv1")
    (wsj1 / "13-33.1/wsj1/si_et_h1/wsj64k/4k8/4k8c0200.dot").write_text("Stocks rose (4k8c0201)\n")
    assert prepare_wsj([wsj0, wsj1], tmp_path / "data", sets=["test_eval93"]) == {"test_eval93": 1}


def test_find_discs_is_case_insensitive_and_two_levels_deep(tmp_path: Path):
    for name in ("LDC94S13B/csr_2/13-34.1", "LDC94S13B/csr_2/13-34.1/wsj1", "other/11_13_1", "other/a/b/11-1.1"):
        (tmp_path / name).mkdir(parents=True)
    assert find_discs([tmp_path / "LDC94S13B", tmp_path / "other"]) == {
        "13-34.1": tmp_path / "LDC94S13B/csr_2/13-34.1", "11-13.1": tmp_path / "other/11_13_1"}


def test_parse_ndx(tmp_path: Path):
    path = tmp_path / "x.ndx"
    path.write_bytes(b";\r\n; comment: wsj0 index\r\n\r\n11_1_1:wsj0/si_tr_s/011/011c0201.wv1  \r\n"
                     b"11_14_1:wsj0/si_et_20/440/440c0201\r\n13_16_1: /wsj1/si_dt_20/4k0/4K0C0301.WV1\n")
    assert parse_ndx(path) == [("11_1_1", "wsj0/si_tr_s/011/011c0201.wv1"),
                               ("11_14_1", "wsj0/si_et_20/440/440c0201.wv1"),
                               ("13_16_1", "wsj1/si_dt_20/4k0/4K0C0301.WV1")]
    path.write_text(";\n11_1_1:wsj0/a.wv1\nwsj0/si_tr_s/011/011c0202.wv1\n")
    with pytest.raises(DataError, match=r"x\.ndx:3: expected 'DISC:PATH'"):
        parse_ndx(path)


def test_parse_dot(tmp_path: Path):
    path = tmp_path / "011c0200.dot"
    path.write_bytes(b"The sale (PAREN of hotels )PAREN (011c0201)\r\n\r\nSecond one (011C0202)  \n")
    assert parse_dot(path) == {"011c0201": "The sale (PAREN of hotels )PAREN", "011c0202": "Second one"}
    path.write_text("Good (011c0201)\nno utterance id here\n")
    with pytest.raises(DataError, match=r"011c0200\.dot:2: expected"):
        parse_dot(path)


@pytest.mark.parametrize("raw, expected", [
    ("the Sale", "THE SALE"),                                  # upper case
    ("Mr\\. Smith", "MR. SMITH"),                              # backslashes removed
    ("ten %percent .point five", "TEN PERCENT POINT FIVE"),
    ("rose [<door_slam] sharply [lip_smack>]", "ROSE SHARPLY"),  # noise in the neighbouring word
    ("[door_slam/] yields rose [/door_slam]", "YIELDS ROSE"),    # start/end of a long noise
    ("profits fell . sharp~ ~ ly", "PROFITS FELL SHARP~ LY"),  # lone pause and truncation marks
    ("a [loud_breath] b [uh]", "A <NOISE> B <NOISE>"),         # any other noise
    ("part of his <strategy>", "PART OF HIS STRATEGY"),        # verbal deletion: still spoken
    ("one --dash two", "ONE -DASH TWO"),
    (",comma .period \"double-quote *pricy*", ",COMMA .PERIOD \"DOUBLE-QUOTE *PRICY*"),  # kept as Kaldi does
])
def test_normalize_transcript(raw: str, expected: str):
    assert normalize_transcript(raw) == expected


def test_noise_word_and_nlsyms():
    assert normalize_transcript("a [breath] b", noise_word="<SPOKEN_NOISE>") == "A <SPOKEN_NOISE> B"
    assert non_linguistic_symbols(["A <NOISE> B", "<SPOKEN_NOISE> <NOISE>", "< >"]) == ["<NOISE>", "<SPOKEN_NOISE>"]


def test_command_line(tmp_path: Path):
    wsj0, wsj1 = make_wsj_tree(tmp_path / "wsj")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(wsj0), str(wsj1), "--out-dir", str(tmp_path / "out"), "--sets", "test_eval92,"
                              "test_dev93", "--noise-word", "<N>"])
    assert run(args) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["nlsyms.txt", "test_dev93", "test_eval92"]
    assert parser.parse_args(["d"]).sets == "train_si284,test_dev93,test_eval92"
