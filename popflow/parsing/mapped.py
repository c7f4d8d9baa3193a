"""Reading a memory-mapped spool file without letting the whole file count as resident memory.

The body parser maps a spooled (large) message instead of reading it into memory. Every page the
parser touches stays mapped, and counts in the process's resident set size, until the mapping is
closed: walking a 40 MB attachment to find its closing boundary, then measuring it, made the
whole message resident. These helpers give touched pages back (``MADV_DONTNEED`` on a read-only
shared mapping: the kernel keeps them in the page cache, a later access maps them again) so a
spooled message costs a few MB of resident memory whatever its size. On plain ``bytes`` they
do what ``bytes.find`` does and nothing else.
"""

from __future__ import annotations

import mmap
from contextlib import suppress

WINDOW = 4 * 1024 * 1024
"""Bytes of a mapping searched between two releases."""


def release(data: bytes, start: int, end: int) -> None:
    """Let the pages of ``data[start:end]`` leave the resident set, when ``data`` is an mmap."""
    if not isinstance(data, mmap.mmap) or end <= start:
        return
    first = start - start % mmap.PAGESIZE
    with suppress(OSError, ValueError):  # only an optimisation: the mapping is still readable
        data.madvise(mmap.MADV_DONTNEED, first, min(end, len(data)) - first)


def find(data: bytes, needle: bytes, start: int, end: int) -> int:
    """``data.find(needle, start, end)``; over an mmap, window by window, releasing what it passed."""
    if not isinstance(data, mmap.mmap) or end - start <= WINDOW:
        return data.find(needle, start, end)
    position = start
    while position < end:
        stop = min(end, position + WINDOW + len(needle) - 1)  # overlap: a needle across two windows
        found = data.find(needle, position, stop)
        release(data, position, stop)
        if found >= 0:
            return found
        position += WINDOW
    return -1
