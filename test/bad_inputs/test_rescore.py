"""A cut n-best file (its last line without a newline, maybe cut mid-word) is refused, not rescored."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdst.cli import main

NBEST = ("utt1-1 -0.10 -0.80 the cat sat on the mat\n"
         "utt1-2 -0.20 -1.40 the cat is on the mat\n"
         "utt2-1 -0.30 -0.90 hello world\n")


def cut(path: Path) -> Path:
    """The file as a killed job leaves it: the last line cut in the middle of a word."""
    path.write_text(NBEST[:-4])
    return path


def only_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_rescore_refuses_a_cut_nbest(tmp_path: Path, capsys):
    nbest = cut(tmp_path / "nbest.txt")
    assert main(["rescore", "--nbest", str(nbest), "--out", str(tmp_path / "text.seqkd")]) == 1
    assert only_line(capsys.readouterr().err) == (f"kdst rescore: error: {nbest}:3: the last line has no newline: "
                                                  "the file was cut short (re-run the decoding)")
    assert not (tmp_path / "text.seqkd").exists()


def test_pseudo_labels_refuses_a_cut_nbest(tmp_path: Path, capsys):
    nbest = cut(tmp_path / "nbest.txt")
    assert main(["pseudo-labels", "--nbest", str(nbest), "--out-dir", str(tmp_path / "d"), "--n", "2"]) == 1
    assert only_line(capsys.readouterr().err).startswith(f"kdst pseudo-labels: error: {nbest}:3: the last line")
    assert not (tmp_path / "d").exists()


def test_missing_nbest_is_one_line(tmp_path: Path, capsys):
    assert main(["rescore", "--nbest", str(tmp_path / "none.txt"), "--out", str(tmp_path / "out")]) == 1
    assert only_line(capsys.readouterr().err) == f"kdst rescore: error: {tmp_path / 'none.txt'}: missing"


@pytest.mark.parametrize("text", [NBEST, ""])
def test_complete_and_empty_files_are_read(tmp_path: Path, text: str, capsys):
    """Only a missing final newline is refused; an empty file stays 'no hypotheses'."""
    nbest = tmp_path / "nbest.txt"
    nbest.write_text(text)
    status = main(["rescore", "--nbest", str(nbest), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    if text:
        assert status == 0 and (tmp_path / "out").read_text() == "utt1 the cat sat on the mat\nutt2 hello world\n"
    else:
        assert status == 1 and only_line(err) == f"kdst rescore: error: {nbest}: no hypotheses"
