"""Give back what compiling BPF programs left in the monitor's memory.

bcc compiles with clang/LLVM inside the monitor process: afterwards ~80 MB of libLLVM and
libclang-cpp code pages stay mapped (resident, counted in RSS and USS) although no compile runs
again until the next probe set. Pages of a file mapping that holds no private (copy-on-write)
page are exact copies of the file: dropping them (MADV_DONTNEED) is safe, and a later compile
faults them back in from the page cache. Mappings with private pages (relocated data) are left
alone. The freed heap of the compile is returned too (malloc_trim).
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import re

COMPILER_LIBS = ("libLLVM", "libclang")
MADV_DONTNEED = 4
_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+ +(.*)$")


def clean_compiler_mappings(smaps: str) -> list[tuple[int, int]]:
    """(start, length) of the compiler libraries' mappings that hold only clean file pages."""
    found: list[tuple[int, int]] = []
    current: tuple[int, int] | None = None
    for line in smaps.splitlines():
        head = _MAPPING.match(line)
        if head:
            start, end, _perms, path = head.groups()
            named = any(lib in path.rsplit("/", 1)[-1] for lib in COMPILER_LIBS)
            current = (int(start, 16), int(end, 16) - int(start, 16)) if named else None
        elif current is not None and line.startswith("Anonymous:"):
            if int(line.split()[1]) == 0:
                found.append(current)
            current = None
    return found


def release_compiler_memory() -> int:
    """Drop the compiler's clean code pages and trim the heap; returns the bytes unmapped."""
    released = 0
    with contextlib.suppress(OSError, AttributeError):
        libc = ct.CDLL("libc.so.6", use_errno=True)
        libc.malloc_trim(0)
        libc.madvise.argtypes = (ct.c_void_p, ct.c_size_t, ct.c_int)
        with open("/proc/self/smaps") as f:
            mappings = clean_compiler_mappings(f.read())
        for start, length in mappings:
            if libc.madvise(start, length, MADV_DONTNEED) == 0:
                released += length
    return released
