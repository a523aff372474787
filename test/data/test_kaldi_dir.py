from pathlib import Path

import pytest

from kdst.data.kaldi_dir import (DataDir, c_sort_key, read_kv, spk2utt_from_utt2spk, split_data_dir,
                                 subset_data_dir, write_kv)
from kdst.errors import DataError


def test_write_sorts_in_c_order_and_reads_back(tmp_path: Path):
    table = {"b": "2", "B": "upper", "a_1": "x y  z", "a": "1", "ä": "umlaut"}
    write_kv(tmp_path / "f", table)
    lines = (tmp_path / "f").read_text(encoding="utf-8").splitlines()
    # C order is byte order: upper case before lower, '_' (0x5f) before 'a', UTF-8 last.
    assert [line.split()[0] for line in lines] == ["B", "a", "a_1", "b", "ä"]
    assert read_kv(tmp_path / "f") == table
    assert sorted(table, key=c_sort_key) == [line.split()[0] for line in lines]


def test_duplicate_key_names_file_and_line(tmp_path: Path):
    (tmp_path / "text").write_text("a one\nb two\na again\n")
    with pytest.raises(DataError, match=r"text:3: duplicate key 'a' \(first on line 1\)"):
        read_kv(tmp_path / "text")


def test_non_utf8_line_is_reported_with_line(tmp_path: Path):
    (tmp_path / "text").write_bytes(b"a fine\nb caf\xe9\n")
    with pytest.raises(DataError, match=r"text:2: not valid UTF-8"):
        read_kv(tmp_path / "text")


def test_missing_value(tmp_path: Path):
    (tmp_path / "utt2spk").write_text("a spk\nb\n")
    with pytest.raises(DataError, match=r"utt2spk:2: no value for key 'b'"):
        read_kv(tmp_path / "utt2spk")


def test_spk2utt_is_derived_sorted():
    assert spk2utt_from_utt2spk({"s2-b": "s2", "s1-b": "s1", "s1-a": "s1"}) == {"s1": "s1-a s1-b", "s2": "s2-b"}


def test_data_dir_reads_segments_and_languages(segmented_dir: Path):
    data = DataDir(segmented_dir)
    assert data.text_languages() == ["de", "en"]
    assert len(data.utterances()) == 4
    segments = data.segments()
    first = data.utterances()[0]
    assert segments[first].recording == "ted_00001" and segments[first].start == pytest.approx(0.2)
    assert set(data.recording_of().values()) == {"ted_00001", "ted_00002"}


def test_subset_keeps_only_used_recordings(segmented_dir: Path, tmp_path: Path):
    data = DataDir(segmented_dir)
    keep = [u for u in data.utterances() if u.startswith("ted_00002")]
    subset_data_dir(segmented_dir, tmp_path / "sub", keep)
    sub = DataDir(tmp_path / "sub")
    assert sub.utterances() == keep
    assert list(sub.require("wav.scp")) == ["ted_00002"]
    assert sub.require("spk2utt") == {"ted_00002": " ".join(keep)}
    assert sub.require("text.en").keys() == set(keep)


def test_split_keeps_recordings_together(segmented_dir: Path):
    out = split_data_dir(segmented_dir, 2)
    parts = [DataDir(out / str(i)) for i in (1, 2)]
    assert [list(p.require("wav.scp")) for p in parts] == [["ted_00001"], ["ted_00002"]]
    assert sum(len(p.utterances()) for p in parts) == 4


def test_written_files_are_readable_by_others(tmp_path: Path):
    write_kv(tmp_path / "text", {"a": "b"})
    assert (tmp_path / "text").stat().st_mode & 0o044 == 0o044


def test_combine_text_dirs(tmp_path: Path):
    from kdst.data.kaldi_dir import combine_text_dirs, write_data_dir
    from kdst.errors import KdstError

    write_data_dir(tmp_path / "a", {"text.en": {"a1": "hello"}, "text": {"a1": "hallo"}, "utt2spk": {"a1": "s"},
                                    "wav.scp": {"a1": "x.wav"}})
    write_data_dir(tmp_path / "b", {"text.en": {"b1": "yes", "b2": "no"}, "text": {"b1": "ja", "b2": "nein"}})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale.txt").write_text("from an earlier run")
    assert combine_text_dirs(tmp_path / "out", [tmp_path / "a", tmp_path / "b"], ["text.en", "text"]) == 3
    out = DataDir(tmp_path / "out")
    assert out.require("text") == {"a1": "hallo", "b1": "ja", "b2": "nein"}
    assert out.require("utt2spk") == {"a1": "s", "b1": "b1", "b2": "b2"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["spk2utt", "text", "text.en", "utt2spk"]
    with pytest.raises(KdstError, match="utterance 'a1' is also in another"):
        combine_text_dirs(tmp_path / "out", [tmp_path / "a", tmp_path / "a"], ["text.en"])
    write_data_dir(tmp_path / "c", {"text.en": {"c1": "x", "c2": "y"}, "text": {"c1": "x"}})
    with pytest.raises(KdstError, match="utterance 'c2' is not in every file"):
        combine_text_dirs(tmp_path / "out", [tmp_path / "c"], ["text.en", "text"])
