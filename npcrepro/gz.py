"""gzip streams of image files: ISA-L's deflate where the ``isal`` package is installed, else zlib's.

The format is the same either way, so any gzip reader reads both. ISA-L compresses noisy int16 images
about 4x as fast as zlib at level 1, masks about 10x, and decompresses float noise about 3x as fast.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Sequence

from npcrepro.errors import DataError

try:
    from isal import igzip as _igzip, isal_zlib as _isal
except ImportError:  # a platform without its wheel
    _igzip = _isal = None

#: What a damaged or cut-short stream raises while it is read.
ERRORS = (OSError, EOFError, zlib.error) + (() if _isal is None else (_isal.error,))


def compressor() -> str:
    """``"ISA-L"`` or ``"zlib"``: what :func:`write` compresses with."""
    return "zlib" if _isal is None else "ISA-L"


def open_read(path: str | os.PathLike):
    """``path`` opened for reading its uncompressed bytes (a binary file object)."""
    return (gzip.open if _igzip is None else _igzip.open)(path, "rb")


def write(parts: Sequence, dst: Path, chunk: int = 1 << 24) -> None:
    """The bytes of ``parts`` (bytes or C-contiguous arrays, in order) gzipped into ``dst`` at level 1:
    ISA-L's, or zlib's with run-length matching only (``Z_RLE``, for images with noise and for masks a
    third quicker than the default matching at about the same size). No name or time in the header,
    so equal inputs give equal bytes."""
    if _isal is not None:
        z = _isal.compressobj(1, _isal.DEFLATED, 16 + _isal.MAX_WBITS)
    else:
        z = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 9, zlib.Z_RLE)
    with open(dst, "wb") as out:
        for part in parts:
            view = memoryview(part).cast("B")
            for a in range(0, len(view), chunk):
                out.write(z.compress(view[a:a + chunk]))
        out.write(z.flush())


def uncompressed_size(path: Path, expected: int) -> int:
    """How many bytes ``path`` holds uncompressed, where ``expected`` is how many it should hold: read
    from the trailer when it says ``expected``, else counted (a cut-short file counts what it has).
    Raises DataError for a damaged stream."""
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        if struct.unpack("<I", fh.read(4))[0] == expected % 2**32:  # the size, mod 2**32
            return expected
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 16):
                total += len(chunk)
    except EOFError:
        pass  # cut short: the caller reports how much could be read
    except (OSError, zlib.error) as exc:  # a damaged stream (bad CRC, invalid deflate data), not a short one
        raise damaged(path, exc, f" after {total} of {expected} bytes") from None
    return total


def damaged(path: Path, exc: BaseException, where: str = "") -> DataError:
    """The error for a compressed file whose data are corrupt (not merely cut short)."""
    return DataError(f"{path}: corrupt gzip data{where} ({exc.__class__.__name__}: {exc}); the file is "
                     "damaged, not only cut short")
