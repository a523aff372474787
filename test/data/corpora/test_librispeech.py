"""LibriSpeech prep on a fixture tree in the layout the openslr tarballs unpack to."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import pytest
import soundfile

from helpers import RATE, tone
from kdst.data.corpora.librispeech import (add_arguments, combined_train_name, prepare_librispeech,
                                           prepare_unlabelled, run)
from kdst.data.kaldi_dir import DataDir
from kdst.data.validate import validate_data_dir
from kdst.errors import DataError, KdstError

# part -> speaker -> chapter -> [(utterance number, transcript)]
CORPUS = {
    "train-clean-100": {
        "103": {"1240": [("0000", "CHAPTER ONE MISSUS RACHEL LYNDE IS SURPRISED"),
                         ("0001", "THAT HAD ITS SOURCE AWAY BACK IN THE WOODS")],
                "1241": [("0000", "CHAPTER TWO MATTHEW CUTHBERT IS SURPRISED")]},
        "19": {"198": [("0000", "NORTHANGER ABBEY")]},
    },
    "dev-clean": {"1272": {"128104": [("0000", "MISTER QUILTER IS THE APOSTLE OF THE MIDDLE CLASSES"),
                                      ("0001", "NOR IS MISTER QUILTER'S MANNER LESS INTERESTING")]}},
}
MORE_TRAIN = {"train-clean-360": {"100": {"121669": [("0000", "TOM THE PIPER'S SON")]}},
              "train-other-500": {"1006": {"135212": [("0000", "FIRST PART")]}}}


def write_flac(path: Path, seed: int = 0, seconds: float = 0.1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, tone(seconds, seed=seed), RATE, format="FLAC", subtype="PCM_16")
    return path


def make_librispeech(root: Path, corpus=CORPUS) -> Path:
    """``root/LibriSpeech/<part>/<speaker>/<chapter>/`` with FLACs and ``<speaker>-<chapter>.trans.txt``."""
    base = root / "LibriSpeech"
    seed = 0
    for part, speakers in corpus.items():
        for speaker, chapters in speakers.items():
            for chapter, utterances in chapters.items():
                chapter_dir = base / part / speaker / chapter
                for number, _ in utterances:
                    seed += 1
                    write_flac(chapter_dir / f"{speaker}-{chapter}-{number}.flac", seed)
                (chapter_dir / f"{speaker}-{chapter}.trans.txt").write_text(
                    "".join(f"{speaker}-{chapter}-{number} {text}\n" for number, text in utterances))
    (base / "SPEAKERS.TXT").write_text("; ID |SEX| SUBSET |MINUTES| NAME\n")  # top-level docs are ignored
    return root


def test_prep_ids_speakers_text_and_valid_dirs(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO)
    root = make_librispeech(tmp_path / "corpus")
    counts = prepare_librispeech(root, tmp_path / "data")
    assert counts == {"train_clean_100": 4, "dev_clean": 2}
    assert sorted(os.listdir(tmp_path / "data")) == ["dev_clean", "train_clean_100"]
    train = DataDir(tmp_path / "data" / "train_clean_100")
    assert train.utterances() == ["103-1240-0000", "103-1240-0001", "103-1241-0000", "19-198-0000"]
    assert train.require("utt2spk") == {"103-1240-0000": "103-1240", "103-1240-0001": "103-1240",
                                        "103-1241-0000": "103-1241", "19-198-0000": "19-198"}
    assert train.require("spk2utt") == {"103-1240": "103-1240-0000 103-1240-0001", "103-1241": "103-1241-0000",
                                        "19-198": "19-198-0000"}
    assert train.require("text")["103-1240-0001"] == "THAT HAD ITS SOURCE AWAY BACK IN THE WOODS"
    assert train.require("wav.scp")["19-198-0000"] == str(
        tmp_path / "corpus/LibriSpeech/train-clean-100/19/198/19-198-0000.flac")
    assert not train.has("utt2dur")
    assert DataDir(tmp_path / "data" / "dev_clean").require("text")["1272-128104-0001"] == \
        "NOR IS MISTER QUILTER'S MANNER LESS INTERESTING"
    for name in counts:  # sorted, consistent, and every flac opens
        assert validate_data_dir(tmp_path / "data" / name, check_audio=True) == []
    assert any(r.getMessage().endswith("train_clean_100: 4 utterances, 3 speakers (speaker-chapter), 0 skipped")
               for r in caplog.records)

    prepare_librispeech(root, tmp_path / "data", parts=["dev_clean"], with_durations=True)
    dev = DataDir(tmp_path / "data" / "dev_clean")
    assert dev.require("utt2dur") == {"1272-128104-0000": "0.100", "1272-128104-0001": "0.100"}
    assert validate_data_dir(dev.path, check_audio=True) == []


def test_root_variants_and_part_selection(tmp_path: Path):
    root = make_librispeech(tmp_path / "corpus")
    # the dir holding LibriSpeech/, LibriSpeech/ itself, and a differently named dir holding the parts
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "dev-clean").symlink_to(root / "LibriSpeech" / "dev-clean")
    for variant in (root, root / "LibriSpeech", tmp_path / "parts"):
        assert prepare_librispeech(variant, tmp_path / "data", parts=["dev-clean"]) == {"dev_clean": 2}
    assert prepare_librispeech(tmp_path / "parts", tmp_path / "data") == {"dev_clean": 2}  # all present
    with pytest.raises(KdstError, match="unknown LibriSpeech part 'dev_cleen'"):
        prepare_librispeech(root, tmp_path / "data", parts=["dev_cleen"])
    with pytest.raises(KdstError, match=r"part\(s\) test-other not in .*present: train-clean-100, dev-clean"):
        prepare_librispeech(root, tmp_path / "data", parts=["test_other"])
    with pytest.raises(KdstError, match="no LibriSpeech part"):
        prepare_librispeech(tmp_path / "data", tmp_path / "out")


def test_combined_train_dir(tmp_path: Path):
    root = make_librispeech(tmp_path / "corpus", {**CORPUS, **MORE_TRAIN})
    counts = prepare_librispeech(root, tmp_path / "data")
    assert counts == {"train_clean_100": 4, "train_clean_360": 1, "train_other_500": 1, "dev_clean": 2,
                      "train_960": 6}
    combined = DataDir(tmp_path / "data" / "train_960")
    assert combined.utterances() == ["100-121669-0000", "1006-135212-0000", "103-1240-0000", "103-1240-0001",
                                     "103-1241-0000", "19-198-0000"]
    assert combined.require("text")["1006-135212-0000"] == "FIRST PART"
    assert combined.require("utt2spk")["100-121669-0000"] == "100-121669"
    assert validate_data_dir(combined.path, check_audio=False) == []

    assert prepare_librispeech(root, tmp_path / "d2", parts=["train-clean-100", "train-clean-360"]) == \
        {"train_clean_100": 4, "train_clean_360": 1, "train_clean_460": 5}
    assert prepare_librispeech(root, tmp_path / "d3", parts=["train-clean-100", "train-other-500"],
                               combine_train="train_mine")["train_mine"] == 5
    assert set(prepare_librispeech(root, tmp_path / "d4", combine_train=None)) == \
        {"train_clean_100", "train_clean_360", "train_other_500", "dev_clean"}
    assert set(prepare_librispeech(root, tmp_path / "d5", parts=["train-clean-100", "dev-clean"])) == \
        {"train_clean_100", "dev_clean"}  # one training part: nothing to combine
    assert combined_train_name(["train-clean-100", "train-other-500"]) == "train_600"


def test_missing_flac_is_skipped_with_a_warning(tmp_path: Path, caplog):
    root = make_librispeech(tmp_path / "corpus")
    chapter = root / "LibriSpeech/train-clean-100/103/1240"
    (chapter / "103-1240-0001.flac").unlink()
    assert prepare_librispeech(root, tmp_path / "data")["train_clean_100"] == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"train_clean_100: skipped 1 transcript line(s) whose flac file is missing "
                        f"(e.g. {chapter / '103-1240.trans.txt'}:2)"]
    for flac in (root / "LibriSpeech/dev-clean").rglob("*.flac"):
        flac.unlink()
    with pytest.raises(DataError, match="dev-clean: no utterance with both a flac file and a transcript line"):
        prepare_librispeech(root, tmp_path / "data")


@pytest.mark.parametrize("line, message", [
    ("103-1240-0001", "expected '<utterance id> <TRANSCRIPT>'"),                # no space, no transcript
    ("103-1241-0001 WRONG CHAPTER", "utterance id '103-1241-0001' is not of chapter 103-1240"),
    ("103-1240- NO NUMBER", "utterance id '103-1240-' is not of chapter 103-1240"),
    ("103-1240-0000 AGAIN", "utterance '103-1240-0000' listed twice \\(first on line 1\\)"),
])
def test_malformed_transcript_line(tmp_path: Path, line: str, message: str):
    root = make_librispeech(tmp_path / "corpus")
    trans = root / "LibriSpeech/train-clean-100/103/1240/103-1240.trans.txt"
    trans.write_text(f"103-1240-0000 CHAPTER ONE\n{line}\n")
    with pytest.raises(DataError, match=rf"103-1240\.trans\.txt:2: {message}"):
        prepare_librispeech(root, tmp_path / "data")


def test_flac_without_transcript(tmp_path: Path):
    root = make_librispeech(tmp_path / "corpus")
    chapter = root / "LibriSpeech/dev-clean/1272/128104"
    write_flac(chapter / "1272-128104-0002.flac")
    with pytest.raises(DataError, match=r"1272-128104\.trans\.txt: no transcript line for 1272-128104-0002\.flac"):
        prepare_librispeech(root, tmp_path / "data")
    (chapter / "1272-128104.trans.txt").unlink()
    with pytest.raises(DataError, match=r"1272-128104\.trans\.txt: missing: the 3 flac file\(s\)"):
        prepare_librispeech(root, tmp_path / "data")


def test_unlabelled_pool(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO)
    pool = tmp_path / "librilight" / "small"
    write_flac(pool / "100/sea_fairies_0812/01_baum.flac", 1)
    write_flac(pool / "100/sea_fairies_0812/02_baum.flac", 2)
    write_flac(pool / "22/my book/chapter 1.FLAC", 3)  # spaces and an upper-case extension
    soundfile.write(pool / "22/my book/x.wav", tone(0.1, seed=4), RATE)
    (pool / "100/sea_fairies_0812/01_baum.json").write_text("{}")  # Libri-Light metadata: not audio
    assert prepare_unlabelled(pool, tmp_path / "data", with_durations=True) == 4
    unlab = DataDir(tmp_path / "data" / "unlab")
    assert unlab.require("utt2spk") == {"100-sea_fairies_0812-01_baum": "100-sea_fairies_0812",
                                        "100-sea_fairies_0812-02_baum": "100-sea_fairies_0812",
                                        "22-my_book-chapter_1": "22-my_book", "22-my_book-x": "22-my_book"}
    assert unlab.require("wav.scp")["22-my_book-chapter_1"] == str(pool / "22/my book/chapter 1.FLAC")
    assert not unlab.has("text")
    assert validate_data_dir(unlab.path, check_audio=True) == []

    write_flac(pool / "100/top.flac")  # audio both in 100/ and in its subdirectory: speakers would interleave
    with pytest.raises(KdstError, match="keep audio files either in a directory or in its subdirectories"):
        prepare_unlabelled(pool, tmp_path / "data")
    write_flac(pool / "22/my book/x.flac")
    with pytest.raises(KdstError, match="would both be utterance 'my_book-x'"):
        prepare_unlabelled(pool / "22", tmp_path / "data")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(KdstError, match="no .flac or .wav file"):
        prepare_unlabelled(tmp_path / "nothing", tmp_path / "data")


def test_command_line(tmp_path: Path):
    root = make_librispeech(tmp_path / "corpus", {**CORPUS, **MORE_TRAIN})
    write_flac(tmp_path / "pool/a/b.flac")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(root), "--out-dir", str(tmp_path / "out"), "--parts",
                              "train_clean_100,train-clean-360", "--combine-train", "train_460",
                              "--unlabelled", str(tmp_path / "pool"), "--unlabelled-name", "pool"])
    assert run(args) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["pool", "train_460", "train_clean_100", "train_clean_360"]
    args = parser.parse_args([str(root), "--out-dir", str(tmp_path / "out2"), "--combine-train", "none"])
    assert run(args) == 0
    assert sorted(os.listdir(tmp_path / "out2")) == ["dev_clean", "train_clean_100", "train_clean_360",
                                                     "train_other_500"]
    defaults = parser.parse_args(["r"])
    assert (defaults.out_dir, defaults.parts, defaults.combine_train, defaults.unlabelled) == \
        (Path("data"), None, "auto", None)
