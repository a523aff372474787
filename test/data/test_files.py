"""Temporaries named after their writer, removed when the writer is dead; the exclusive lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdst.data.files import (atomic_path, atomic_write_text, exclusive_lock, remove_stale_temporaries,
                             temporary_dir, this_host)
from kdst.errors import KdstError


def dead_pid() -> int:
    """The pid of a process that has ended (and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporaries_name_their_writer(tmp_path: Path):
    with atomic_path(tmp_path / "last.pt") as tmp:
        assert tmp.name.startswith(f".last.pt.{os.getpid()}@{this_host()}.") and tmp.name.endswith(".tmp")
        tmp.write_text("x")
    assert (tmp_path / "last.pt").read_text() == "x" and not tmp.exists()
    built = temporary_dir(tmp_path / "data")
    assert built.is_dir() and built.name.startswith(f".data.{os.getpid()}@{this_host()}.")


def test_only_dead_writers_temporaries_on_this_host_are_removed(tmp_path: Path):
    host, dead = this_host(), dead_pid()
    stale_file = tmp_path / f".last.pt.{dead}@{host}.k2j_x9ab.tmp"
    stale_dir = tmp_path / f".data.{dead}@{host}.abcdefgh.tmp"
    live = tmp_path / f".epoch-3.pt.{os.getpid()}@{host}.abcdefgh.tmp"  # this process is alive
    other_host = tmp_path / f".last.pt.{dead}@node-7.cluster.local.abcdefgh.tmp"  # its processes are not seen
    unrelated = [tmp_path / ".notes.tmp", tmp_path / "run.tmp", tmp_path / f".x.{dead}@{host}.tmp"]
    for path in [stale_file, live, other_host, *unrelated]:
        path.write_text("")
    (stale_dir / "train").mkdir(parents=True)
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([stale_file, stale_dir])
    assert all(p.exists() for p in [live, other_host, *unrelated])
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_an_interrupted_write_is_removed_by_the_next_writer(tmp_path: Path):
    # A child writes through atomic_path and is killed mid-write (os._exit: no cleanup runs).
    code = ("import os, sys; from kdst.data.files import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_text('half'); os._exit(9)\n")
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path / "last.pt")]).returncode == 9
    left = list(tmp_path.glob(".last.pt.*.tmp"))
    assert len(left) == 1 and not (tmp_path / "last.pt").exists()
    atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
    assert remove_stale_temporaries(tmp_path) == left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_exclusive_lock_names_its_holder(tmp_path: Path):
    lock = tmp_path / ".lock"
    with exclusive_lock(lock, "exp/x is being trained"):
        assert lock.read_text() == f"{os.getpid()} {this_host()}\n"
        # flock belongs to an open file: a second opening, even in this process, is refused
        with pytest.raises(KdstError) as refused:
            with exclusive_lock(lock, "exp/x is being trained"):
                pass
        assert str(refused.value) == f"exp/x is being trained by pid {os.getpid()} on host {this_host()} ({lock})"
    with exclusive_lock(lock, "exp/x is being trained"):  # released at the end of the block
        pass
