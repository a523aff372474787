"""NIST SPHERE audio (WSJ, TIMIT, Switchboard): header parsing and plain PCM/ulaw decoding.

A SPHERE file is an ASCII header followed by raw samples::

    NIST_1A
       1024                              header size in bytes, header included
    sample_rate -i 16000                 name -type value; -i int, -r real,
    sample_coding -s3 pcm                -sN a string of N characters (may hold spaces)
    end_head
    <padding up to the header size, then the samples>

Shorten-compressed files (``sample_coding`` ``pcm,embedded-shorten-v...``: every
WSJ disc as LDC ships it) are not decoded here: ``sph2pipe`` does that, in a
``wav.scp`` pipe, as in Kaldi.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from kdst.errors import DataError

MAGIC = b"NIST_1A"
SPH2PIPE_HINT = (
    "sph2pipe (v2.5) decodes it; get it from Kaldi's tools/ ('make sph2pipe'; the binary lands in "
    "tools/sph2pipe_v2.5/sph2pipe) or build LDC's sph2pipe v2.5 sources ('gcc -o sph2pipe *.c -lm'), "
    "then put it on PATH"
)
# Enough for the usual header; a larger one is read in full once its size is known.
_FIRST_READ = 1024
_BYTE_ORDERS = {"01": "<", "10": ">", "1": "|"}


@dataclass(frozen=True)
class SphereHeader:
    header_bytes: int
    sample_rate: int
    channel_count: int
    sample_count: int | None  # per channel; None when the header does not say (rare)
    sample_n_bytes: int
    byte_format: str  # '01' little endian, '10' big endian, '1' one byte per sample
    coding: str  # 'pcm', 'ulaw', 'pcm,embedded-shorten-v2.00', ...
    fields: dict[str, int | float | str]


def is_sphere_file(path: str | os.PathLike) -> bool:
    """True when the file starts with the SPHERE magic (cheap: reads 7 bytes)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def is_shorten(header: SphereHeader) -> bool:
    return "shorten" in header.coding


def read_sphere_header(path: str | os.PathLike) -> SphereHeader:
    """Parse the header only (one small read), so a corpus's headers can all be checked fast."""
    with open(path, "rb") as f:
        head = f.read(_FIRST_READ)
        lines = head.split(b"\n", 2)
        if len(lines) < 3 or lines[0].rstrip(b"\r") != MAGIC:
            raise DataError(path, "not a NIST SPHERE file (no 'NIST_1A' on the first line)")
        try:
            size = int(lines[1])
        except ValueError:
            raise DataError(path, f"SPHERE header size is not a number: {lines[1][:20]!r}") from None
        if size < 16:
            raise DataError(path, f"SPHERE header size {size} is too small")
        if size > len(head):
            head += f.read(size - len(head))
            if len(head) < size:
                raise DataError(path, f"file ends inside its {size}-byte SPHERE header")
    fields = _parse_fields(path, head[:size].split(b"\n")[2:])
    return _header_from_fields(path, size, fields)


def _parse_fields(path: str | os.PathLike, lines: list[bytes]) -> dict[str, int | float | str]:
    fields: dict[str, int | float | str] = {}
    for raw in lines:
        line = raw.decode("ascii", "replace").rstrip("\r")
        if line.strip() == "end_head":
            return fields
        if not line.strip() or line.startswith(";"):  # blank or a comment
            continue
        name, _, rest = line.strip().partition(" ")
        kind, _, value = rest.lstrip().partition(" ")
        try:
            if kind == "-i":
                fields[name] = int(value)
            elif kind == "-r":
                fields[name] = float(value)
            elif kind.startswith("-s") and kind[2:].isdigit():
                # The declared length counts the characters, spaces included; some
                # writers miscount, so a shorter rest of line is taken as it is.
                fields[name] = value[: int(kind[2:])]
            else:
                raise ValueError
        except ValueError:
            raise DataError(path, f"malformed SPHERE header field: {line.strip()!r}") from None
    raise DataError(path, "SPHERE header has no 'end_head' within its declared size")


def _header_from_fields(path: str | os.PathLike, size: int, fields: dict[str, int | float | str]) -> SphereHeader:
    def integer(name: str, default: int | None) -> int | None:
        value = fields.get(name, default)
        if value is not None and not isinstance(value, int):
            raise DataError(path, f"SPHERE field {name} is not an integer: {value!r}")
        return value

    rate = integer("sample_rate", None)
    if rate is None or rate <= 0:
        raise DataError(path, "SPHERE header has no positive sample_rate")
    coding = str(fields.get("sample_coding", "pcm")).strip().lower()
    n_bytes = integer("sample_n_bytes", 1 if coding.startswith(("ulaw", "mu-law")) else 2)
    default_order = "1" if n_bytes == 1 else "01"
    return SphereHeader(
        header_bytes=size,
        sample_rate=rate,
        channel_count=integer("channel_count", 1),
        sample_count=integer("sample_count", None),
        sample_n_bytes=n_bytes,
        byte_format=str(fields.get("sample_byte_format", default_order)).strip(),
        coding=coding,
        fields=fields,
    )


def _ulaw_table() -> np.ndarray:
    """G.711 mu-law byte -> linear 16-bit value (the bits are stored inverted)."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    magnitude = ((((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.float32) / 32768.0


def read_sphere(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(float32 samples in [-1, 1] of the first channel, sample rate) of a PCM or ulaw SPHERE file."""
    header = read_sphere_header(path)
    if is_shorten(header):
        raise DataError(path, f"SPHERE file is shorten-compressed ({header.coding}); {SPH2PIPE_HINT}")
    channels, n_bytes = header.channel_count, header.sample_n_bytes
    if channels < 1:
        raise DataError(path, f"SPHERE channel_count is {channels}")
    with open(path, "rb") as f:
        f.seek(header.header_bytes)
        data = f.read()
    frame = channels * n_bytes
    count = header.sample_count if header.sample_count is not None else len(data) // frame
    if len(data) < count * frame:
        raise DataError(path, f"truncated: the SPHERE header says {count} samples, the file holds "
                              f"{len(data) // frame}")
    data = data[: count * frame]
    if header.coding.startswith(("ulaw", "mu-law")) and n_bytes == 1:
        samples = _ulaw_table()[np.frombuffer(data, dtype=np.uint8)]
    elif header.coding == "pcm" and n_bytes in (1, 2):
        order = _BYTE_ORDERS.get(header.byte_format)
        if order is None or (n_bytes == 2 and order == "|"):
            raise DataError(path, f"unsupported SPHERE sample_byte_format '{header.byte_format}' for "
                                  f"{n_bytes}-byte samples")
        dtype = np.dtype(f"{order}i{n_bytes}")
        samples = np.frombuffer(data, dtype=dtype).astype(np.float32) / float(2 ** (8 * n_bytes - 1))
    else:
        raise DataError(path, f"unsupported SPHERE sample coding '{header.coding}' with {n_bytes}-byte "
                              f"samples (kdst reads pcm with 1 or 2 bytes, and ulaw)")
    return np.ascontiguousarray(samples.reshape(-1, channels)[:, 0]), header.sample_rate
