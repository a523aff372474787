"""Splitting Kaldi files into job parts and merging job outputs back."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from kdst.data.split import merge_scp, split_lines, split_scp
from kdst.errors import DataError, KdstError


def test_split_lines_contiguous_near_equal():
    lines = [f"u{i:02d} v{i}" for i in range(10)]
    parts = split_lines(lines, 3)
    assert [line for part in parts for line in part] == lines
    assert [len(p) for p in parts] == [3, 4, 3]
    assert [len(p) for p in split_lines(lines, 10)] == [1] * 10
    sizes = [len(p) for p in split_lines([str(i) for i in range(1000)], 7)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 1000


def test_grouping_keeps_groups_together():
    # Recordings of 1, 7, 2, 2, 5, 1, 3 utterances; keys are bare utterance ids.
    sizes = [1, 7, 2, 2, 5, 1, 3]
    lines = [f"rec{r}-utt{u}" for r, size in enumerate(sizes) for u in range(size)]
    group_of = lambda key: key.split("-")[0]  # noqa: E731
    parts = split_lines(lines, 3, group_of=group_of)
    assert [line for part in parts for line in part] == lines
    owner = {}
    for index, part in enumerate(parts):
        assert part
        for line in part:
            assert owner.setdefault(group_of(line), index) == index
    # 21 lines: the group boundaries nearest 7 and 14 lines come after 8 (rec1) and 12 (rec3) lines.
    assert [len(p) for p in parts] == [8, 4, 9]


def test_too_many_parts():
    with pytest.raises(KdstError, match="cannot split 2 lines into 3 parts"):
        split_lines(["a 1", "b 2"], 3)
    with pytest.raises(KdstError, match="cannot split 1 groups into 2 parts"):
        split_lines(["r1-a", "r1-b"], 2, group_of=lambda k: k[:2])
    with pytest.raises(KdstError):
        split_lines(["a 1"], 0)


def test_non_contiguous_group_is_located(tmp_path):
    scp = tmp_path / "wav.scp"
    scp.write_text("a1 x\nb1 x\na2 x\n")
    with pytest.raises(DataError) as e:
        split_scp(scp, 2, [tmp_path / "1", tmp_path / "2"], group_of=lambda k: k[0])
    assert e.value.line == 3 and "not contiguous" in str(e.value)
    with pytest.raises(DataError, match=r"wav.scp:1: no group for key 'a1'"):
        split_scp(scp, 2, [tmp_path / "1", tmp_path / "2"], group_of={}.__getitem__)


def test_split_scp_then_merge_round_trip(tmp_path):
    scp = tmp_path / "feats.scp"
    text = "".join(f"utt{i:03d} ark:/x/raw.ark:{i * 17}\n" for i in range(25))
    scp.write_text(text)
    outs = [tmp_path / "split4" / str(i) / "feats.scp" for i in range(1, 5)]
    assert split_scp(scp, 4, outs) == [6, 6, 7, 6]
    assert "".join(p.read_text() for p in outs) == text
    merged = tmp_path / "merged.scp"
    assert merge_scp(list(reversed(outs)), merged) == 25
    assert merged.read_text() == text
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_split_scp_errors(tmp_path):
    scp = tmp_path / "text"
    scp.write_text("a x\nb y\n")
    with pytest.raises(DataError, match="cannot split 2 lines into 3 parts"):
        split_scp(scp, 3, [tmp_path / str(i) for i in range(3)])
    with pytest.raises(KdstError, match="needs 2 output paths"):
        split_scp(scp, 2, [tmp_path / "1"])
    scp.write_text("a x\n\nb y\n")
    with pytest.raises(DataError, match=r"text:2: empty line"):
        split_scp(scp, 2, [tmp_path / "1", tmp_path / "2"])


def test_merge_sorts_in_c_order_keeping_whole_lines(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("b x y\nZ9 1\né 2\n")
    b.write_text("a-b 3\na 4\n_ 5\nZ10\tt\n")
    out = tmp_path / "out"
    merge_scp([a, b], out)
    lines = out.read_text().splitlines()
    assert lines == ["Z10\tt", "Z9 1", "_ 5", "a 4", "a-b 3", "b x y", "é 2"]
    if shutil.which("sort"):
        c_sorted = subprocess.run(["sort"], input=(a.read_bytes() + b.read_bytes()), capture_output=True,
                                  env={"LC_ALL": "C"}, check=True).stdout
        assert out.read_bytes() == c_sorted


def test_merge_in_place(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("c 1\n")
    b.write_text("a 2\nb 3")  # no final newline
    merge_scp([a, b], a)
    assert a.read_text() == "a 2\nb 3\nc 1\n"


def test_merge_duplicate_key_names_file_and_line(tmp_path):
    a, b = tmp_path / "a.scp", tmp_path / "b.scp"
    a.write_text("k1 x\nk2 y\n")
    b.write_text("k0 z\nk3 w\nk2 again\n")
    out = tmp_path / "out.scp"
    with pytest.raises(DataError) as e:
        merge_scp([a, b], out)
    assert (e.value.path, e.value.line) == (str(b), 3)
    assert str(e.value) == f"{b}:3: duplicate key 'k2' (first at {a}:2)"
    assert not out.exists()


def test_merge_missing_input(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        merge_scp([tmp_path / "nope"], tmp_path / "out")
