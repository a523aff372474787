"""Split Kaldi ``key value`` files into parts for parallel jobs, and merge job outputs back.

Parts are contiguous and keep the input order, so each part of a sorted file
is itself sorted.  Keys can be grouped (e.g. the utterances of one recording)
so that a group never spans two parts: a job then reads each talk-level audio
file once.  Merged output is sorted by key in ``LC_ALL=C`` order.
"""

from __future__ import annotations

import bisect
import os
from pathlib import Path
from typing import Callable, Sequence

from kdst.data.files import atomic_write_text
from kdst.errors import DataError, KdstError

PathLike = str | os.PathLike


def line_key(line: str) -> str:
    """The key of a Kaldi line: the text up to the first whitespace."""
    fields = line.split(None, 1)
    return fields[0] if fields else ""


class _GroupSplitError(KdstError):
    """A group problem found at a 0-based line index, so split_scp can name the file and line."""

    def __init__(self, index: int, message: str):
        self.index = index
        self.message = message
        super().__init__(f"line {index + 1}: {message}")


def _group_sizes(keys: Sequence[str], group_of: Callable[[str], str] | None) -> list[int]:
    """Sizes of the runs of consecutive lines with the same group, in order."""
    if group_of is None:
        return [1] * len(keys)
    sizes: list[int] = []
    closed: set[str] = set()  # groups already left behind; seeing one again means it is split up
    current: str | None = None
    for index, key in enumerate(keys):
        try:
            group = group_of(key)
        except KeyError:
            raise _GroupSplitError(index, f"no group for key '{key}'") from None
        if sizes and group == current:
            sizes[-1] += 1
            continue
        if group in closed:
            # Keeping the order and keeping the group together are then incompatible.
            raise _GroupSplitError(index, f"lines of group '{group}' are not contiguous (key '{key}')")
        if current is not None:
            closed.add(current)
        current = group
        sizes.append(1)
    return sizes


def _boundaries(sizes: Sequence[int], n: int) -> list[int]:
    """Group indices where the n parts start (plus the end): cuts as close as possible to k/n of the lines.

    Each cut is the group boundary nearest its ideal line count, held between
    the previous cut and the last position that still leaves a group for every
    remaining part; with groups of one line the parts differ by at most one line.
    """
    prefix = [0]
    for size in sizes:
        prefix.append(prefix[-1] + size)
    total, count = prefix[-1], len(sizes)
    cuts = [0]
    for k in range(1, n):
        target = k * total / n
        low, high = cuts[-1] + 1, count - (n - k)
        j = bisect.bisect_left(prefix, target, low, high + 1)
        # prefix[j] >= target (or j is past high); the boundary just before may be nearer.
        best = min(j, high)
        if best > low and target - prefix[best - 1] <= prefix[best] - target:
            best -= 1
        cuts.append(best)
    cuts.append(count)
    return cuts


def split_lines(lines: Sequence[str], n: int,
                group_of: Callable[[str], str] | None = None) -> list[list[str]]:
    """Split lines (``key value`` or bare keys) into n contiguous, near-equal parts, keeping order.

    With ``group_of`` (key -> group id), the lines of one group stay in one
    part and parts are balanced by lines; a group must be contiguous.
    """
    if n < 1:
        raise KdstError(f"cannot split into {n} parts")
    keys = [line_key(line) for line in lines]
    sizes = _group_sizes(keys, group_of)
    if n > len(sizes):
        what = "groups" if group_of is not None else "lines"
        raise KdstError(f"cannot split {len(sizes)} {what} into {n} parts")
    cuts = _boundaries(sizes, n)
    line_at = [0]  # line index where each group starts
    for size in sizes:
        line_at.append(line_at[-1] + size)
    return [list(lines[line_at[a]:line_at[b]]) for a, b in zip(cuts, cuts[1:])]


def _read_lines(path: PathLike) -> list[str]:
    """All lines of a UTF-8 text file, each ending in a newline; an empty line is a DataError."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(path, "no such file") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(path, f"not valid UTF-8 (byte {e.start})", data.count(b"\n", 0, e.start) + 1) from None
    # Split on "\n" only: str.splitlines() would also break on \x1c, \u2028 and friends.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise DataError(path, "empty line", number)
    return [line + "\n" for line in lines]


def split_scp(path: PathLike, n: int, out_paths: Sequence[PathLike],
              group_of: Callable[[str], str] | None = None) -> list[int]:
    """Split the Kaldi file ``path`` into ``n`` parts written to ``out_paths``; returns the line counts."""
    if len(out_paths) != n:
        raise KdstError(f"split of {path} into {n} parts needs {n} output paths, got {len(out_paths)}")
    lines = _read_lines(path)
    try:
        parts = split_lines(lines, n, group_of)
    except _GroupSplitError as e:
        raise DataError(path, e.message, e.index + 1) from None
    except KdstError as e:
        raise DataError(path, str(e)) from None
    for out, part in zip(out_paths, parts):
        atomic_write_text(out, "".join(part))
    return [len(part) for part in parts]


def merge_scp(in_paths: Sequence[PathLike], out_path: PathLike) -> int:
    """Concatenate Kaldi files, sort by key in C order and write ``out_path`` atomically.

    A key that occurs twice is a DataError at its second occurrence (in input
    order), naming the first.  Returns the number of lines written.
    """
    # (key, file index, line number, line): ties on the key fall back to input
    # order, so the sort is stable without ever comparing whole lines.
    rows: list[tuple[str, int, int, str]] = []
    for file_index, path in enumerate(in_paths):
        for number, line in enumerate(_read_lines(path), start=1):
            rows.append((line_key(line), file_index, number, line))
    # Python orders str by code point, which for UTF-8 is byte order: LC_ALL=C sort.
    rows.sort()
    for previous, row in zip(rows, rows[1:]):
        if previous[0] == row[0]:
            first = f"{os.fspath(in_paths[previous[1]])}:{previous[2]}"
            raise DataError(in_paths[row[1]], f"duplicate key '{row[0]}' (first at {first})", row[2])
    atomic_write_text(out_path, "".join(row[3] for row in rows))
    return len(rows)
