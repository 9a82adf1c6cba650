"""Process-wide memory habits of the streaming stages (beamform, import)."""

from __future__ import annotations


def return_large_buffers_to_os(threshold: int = 1 << 20) -> bool:
    """Make glibc serve buffers above ``threshold`` bytes by mmap (freed back to the OS).

    glibc's default threshold grows as large blocks are freed, after which the
    freed blocks of each movie stay in the process (one heap per thread that
    touched them) and the resident size creeps up with the number of movies
    although live memory does not. A fixed threshold keeps the footprint flat.
    Returns False where this is not glibc. A process-wide choice: the CLI
    makes it, the library functions do not.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False
