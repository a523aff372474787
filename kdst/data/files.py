"""Writing files so that nothing half-written ever looks complete, and nothing a dead writer left stays.

A temporary is named ``.<final name>.<pid>@<host>.<random>.tmp``: whoever writes into a
directory next can tell, with :func:`remove_stale_temporaries`, which temporaries belong to
a writer that died (``kill -9``, a node lost) and remove them, without touching those of a
writer still at work, on this host or another one sharing the file system.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from kdst.errors import KdstError

log = logging.getLogger("kdst.data.files")

# The random part of tempfile's names has no dots, so the host (which may) is read from the right.
_TEMPORARY = re.compile(r"\..+\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9._-]+)\.[A-Za-z0-9_]+\.tmp")


def this_host() -> str:
    # only the characters a temporary's name may hold, so it parses back
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"


def _temporary_affixes(path: Path) -> dict[str, str]:
    return {"prefix": f".{path.name}.{os.getpid()}@{this_host()}.", "suffix": ".tmp", "dir": path.parent}


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name beside ``path`` to write to; renamed to ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(**_temporary_affixes(path))
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private; give it the mode open() would have.
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temporary_dir(path: str | os.PathLike) -> Path:
    """A new empty directory beside ``path`` to build it in, named as this writer's temporary;
    the caller renames it to ``path`` when complete (and removes it on failure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(**_temporary_affixes(path)))
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it private
    return tmp


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so a crash never leaves half of it."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporaries in ``directory`` (not below it) whose writer, on this host, is dead.

    Called where a program starts writing into a directory, so what a killed run left
    goes on the next run.  Another host's temporaries are left alone: its processes
    cannot be seen from here.  Returns what was removed.
    """
    directory, host = Path(directory), this_host()
    removed = []
    try:
        entries = list(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for path in entries:
        match = _TEMPORARY.fullmatch(path.name)
        if match is None or match["host"] != host or process_alive(int(match["pid"])):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) of dead writers in %s: %s", len(removed), directory,
                 " ".join(p.name for p in removed))
    return removed


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a reused pid counts as alive: nothing is removed then)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


@contextmanager
def exclusive_lock(path: str | os.PathLike, busy: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the block, with this process's pid and host in it.

    The kernel releases the lock when the process dies, however it dies, so a lock is
    never stale.  If another process holds it: a KdstError "<busy> by pid N on host H (<path>)".
    """
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            who = f"pid {holder[0]} on host {holder[1]}" if len(holder) == 2 else "another process"
            raise KdstError(f"{busy} by {who} ({path})") from None
        # Truncated only once held: until then the file names the holder for whoever is refused.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {this_host()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def umask() -> int:
    """The process's umask, for files made private by tempfile that should not be."""
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def file_digest(path: str | os.PathLike, length: int = 16) -> str:
    """A short sha256 of a file's bytes: teacher outputs record their teacher checkpoint's."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]
