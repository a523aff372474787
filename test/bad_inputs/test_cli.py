"""kdst --version, and every option's --help saying its default."""

from __future__ import annotations

import argparse
import importlib.metadata
import re

import pytest

import kdst
from kdst.cli import all_parsers, build_parser, main


def test_version(capsys):
    try:
        expected = importlib.metadata.version("kdst")
    except importlib.metadata.PackageNotFoundError:  # run from the source tree, not installed
        expected = kdst.__version__
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"kdst {expected}\n"


def option_blocks(help_text: str) -> dict[str, str]:
    """Option string -> its entry in ``--help`` (the option line and the help lines under it), one line."""
    blocks: dict[str, str] = {}
    names: list[str] = []
    for line in help_text.splitlines():
        if re.match(r"  -", line):
            head, _, rest = line.strip().partition("  ")
            names = [word.rstrip(",") for word in head.split() if word.startswith("-")]
            for name in names:
                blocks[name] = rest.strip()
        elif names and line.startswith("   "):
            for name in names:
                blocks[name] += " " + line.strip()
        else:
            names = []
    return blocks


def worth_saying(default) -> bool:
    return not (default is None or default is False or default is argparse.SUPPRESS
                or (isinstance(default, (str, list, tuple)) and not default))


def test_every_option_help_says_its_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # wrapped as on a terminal: the blocks are joined again
    checked = 0
    for parser in all_parsers(build_parser()):
        blocks = option_blocks(parser.format_help())
        for action in parser._actions:
            if not action.option_strings or action.help is argparse.SUPPRESS or not worth_saying(action.default):
                continue
            entry = blocks[action.option_strings[0]]
            assert str(action.default) in entry, f"{parser.prog} {action.option_strings[0]}: '{entry}'"
            checked += 1
    assert checked > 50
