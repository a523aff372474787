"""MuST-C prep on a fixture tree in the real release layout."""

from pathlib import Path

import pytest

from helpers import write_wav
from kdst.cli import main
from kdst.data.corpora.mustc import prepare_mustc, read_segment_yaml, recording_id
from kdst.data.kaldi_dir import DataDir
from kdst.data.validate import validate_data_dir
from kdst.errors import DataError

# (talk, [(offset, duration, english, german)]), as in the released yaml/en/de files
TALKS = {
    "train": [(767, [(0.51, 1.2, "Thank you so much, Chris.", "Vielen Dank, Chris."),
                     (2.0, 0.9, "(Laughter)", "(Lachen)")]),
              (67, [(0.1, 2.1, "And it's truly a great honor.", "Es ist mir wirklich eine Ehre.")])],
    "dev": [(1, [(0.3, 1.0, "Hello.", "Hallo.")])],
    "tst-COMMON": [(1115, [(0.0, 1.5, "It was a  test.", "Es war ein Test.")])],
}


def make_mustc_tree(root: Path, talks=TALKS) -> Path:
    """Write en-de/data/<split>/{wav,txt} exactly as the MuST-C v1.0 release has them."""
    for split, split_talks in talks.items():
        base = root / "en-de" / "data" / split
        yaml_lines, en, de = [], [], []
        for talk, segments in split_talks:
            write_wav(base / "wav" / f"ted_{talk}.wav", 3.5, seed=talk)
            for offset, duration, source, target in segments:
                yaml_lines.append(f"- {{duration: {duration:.6f}, offset: {offset:.6f}, rW: {len(source.split())}, "
                                  f"uW: 0, speaker_id: spk.{talk}, wav: ted_{talk}.wav}}")
                en.append(source)
                de.append(target)
        (base / "txt").mkdir(parents=True, exist_ok=True)
        for suffix, lines in (("yaml", yaml_lines), ("en", en), ("de", de)):
            (base / "txt" / f"{split}.{suffix}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_prep_produces_valid_kaldi_dirs(tmp_path: Path):
    corpus = make_mustc_tree(tmp_path / "mustc")
    stats = prepare_mustc(corpus, tmp_path / "data")
    assert stats == {"train": {"kept": 3}, "dev": {"kept": 1}, "tst-COMMON": {"kept": 1}}
    for split in ("train", "dev", "tst-COMMON"):
        assert validate_data_dir(tmp_path / "data" / split) == []
    train = DataDir(tmp_path / "data" / "train")
    # talk 67 sorts before talk 767 because ids are zero-padded; ids start with the speaker (= talk)
    assert train.utterances() == ["ted_00067_0000100_0002200", "ted_00767_0000510_0001710",
                                  "ted_00767_0002000_0002900"]
    assert train.require("text.en")["ted_00767_0000510_0001710"] == "Thank you so much, Chris."
    assert train.require("text")["ted_00767_0000510_0001710"] == "Vielen Dank, Chris."
    assert train.require("segments")["ted_00067_0000100_0002200"] == "ted_00067 0.100 2.200"
    assert Path(train.require("wav.scp")["ted_00767"]).is_absolute()
    assert DataDir(tmp_path / "data" / "tst-COMMON").require("text.en")["ted_01115_0000000_0001500"] == \
        "It was a test."


def test_accepts_the_en_de_dir_itself_and_selected_splits(tmp_path: Path):
    corpus = make_mustc_tree(tmp_path / "mustc")
    assert list(prepare_mustc(corpus / "en-de", tmp_path / "data", splits=("dev",))) == ["dev"]


def test_drops_empty_and_overlong_segments(tmp_path: Path):
    talks = {"train": [(5, [(0.0, 1.0, "One.", "Eins."), (1.0, 1.0, "", "Leer."), (3.0, 2.0, "Late.", "Spät.")])]}
    corpus = make_mustc_tree(tmp_path / "mustc", talks)
    stats = prepare_mustc(corpus, tmp_path / "data")
    assert stats["train"] == {"kept": 1, "dropped (empty text)": 1, "dropped (past the end of the talk)": 1}


def test_line_count_mismatch_names_the_file(tmp_path: Path):
    corpus = make_mustc_tree(tmp_path / "mustc")
    de = corpus / "en-de" / "data" / "train" / "txt" / "train.de"
    de.write_text("Vielen Dank, Chris.\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.de: 1 lines but train\.yaml has 3 segments"):
        prepare_mustc(corpus, tmp_path / "data")


def test_malformed_yaml_line_is_reported_with_its_line(tmp_path: Path):
    corpus = make_mustc_tree(tmp_path / "mustc")
    yaml_path = corpus / "en-de" / "data" / "train" / "txt" / "train.yaml"
    lines = yaml_path.read_text().splitlines()
    lines[1] = lines[1].replace("offset: 2.000000, ", "")
    yaml_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train\.yaml:2: missing field\(s\) offset"):
        read_segment_yaml(yaml_path)
    lines[1] = "- duration 3"
    yaml_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train\.yaml:2: expected"):
        read_segment_yaml(yaml_path)


def test_block_style_yaml_also_parses(tmp_path: Path):
    path = tmp_path / "x.yaml"
    path.write_text("- {duration: 1.5, offset: 2, speaker_id: 'spk.1', wav: 'ted_1.wav'}\n")
    [segment] = read_segment_yaml(path)
    assert (segment.wav, segment.offset, segment.duration, segment.line) == ("ted_1.wav", 2.0, 1.5, 1)


def test_missing_audio_and_not_a_corpus(tmp_path: Path, capsys):
    corpus = make_mustc_tree(tmp_path / "mustc")
    (corpus / "en-de" / "data" / "dev" / "wav" / "ted_1.wav").unlink()
    assert main(["prep-mustc", str(corpus), str(tmp_path / "data"), "--splits", "dev"]) == 1
    err = capsys.readouterr().err.strip()
    assert "dev.yaml:1: audio not found" in err and "\n" not in err
    with pytest.raises(DataError, match="not a MuST-C en-de directory"):
        prepare_mustc(tmp_path, tmp_path / "data")


def test_recording_ids():
    assert recording_id("ted_767.wav") == "ted_00767"
    assert recording_id("other_talk.wav") == "other_talk"
