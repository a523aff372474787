"""kdst tokenizer encode/decode on bad input: one line naming the file and line, and nothing printed."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("ids, what", [("4 5 999", "token id 999 is out of range"),
                                       ("4 -1", "token id -1 is out of range"),
                                       ("4 x 5", "'x' is not a token id"),
                                       ("4 5.0", "'5.0' is not a token id")])
def test_decode_bad_ids(models, fails, capsys, tmp_path: Path, ids: str, what: str):
    source = tmp_path / "ids.txt"
    source.write_text(f"4 5\n{ids}\n")
    fails(["tokenizer", "decode", models.mt / "tok_de", source], f"{source}:2", what)
    assert capsys.readouterr().out == ""  # not even the good first line: no partial output


def test_decode_keyed(models, capsys, tmp_path: Path):
    from kdst.cli import main

    source = tmp_path / "ids.txt"
    source.write_text("u1 4 5\nu2\n")
    assert main(["tokenizer", "decode", str(models.mt / "tok_de"), str(source), "--keyed"]) == 0
    assert [line.split(" ", 1)[0] for line in capsys.readouterr().out.splitlines()] == ["u1", "u2"]


def test_encode_non_utf8_file(models, fails, capsys, tmp_path: Path):
    source = tmp_path / "text.txt"
    source.write_bytes(b"hallo welt\n\xff\xfe kaputt\n")
    fails(["tokenizer", "encode", models.mt / "tok_de", source], f"{source}:2", "UTF-8")
    assert capsys.readouterr().out == ""


def test_encode_non_utf8_stdin(models, fails, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\xc3\x28 broken\n")))
    fails(["tokenizer", "encode", models.mt / "tok_de"], "<stdin>:1", "UTF-8")


def test_encode_missing_file(models, fails, tmp_path: Path):
    fails(["tokenizer", "encode", models.mt / "tok_de", tmp_path / "none.txt"], tmp_path / "none.txt", "missing")
