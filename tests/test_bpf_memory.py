"""Which mappings monitor/bpf/memory.py may drop after a compile: the compiler libraries'
mappings with no private (copy-on-write) page, never relocated data or other libraries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from monitor.bpf.memory import clean_compiler_mappings, release_compiler_memory

LIBLLVM = sorted(Path("/usr/lib/x86_64-linux-gnu").glob("libLLVM*.so*"))

SMAPS = """\
7f0000000000-7f0000100000 r-xp 00000000 08:01 12 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
Rss:                 900 kB
Anonymous:             0 kB
7f0000100000-7f0000200000 r--p 00100000 08:01 12 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
Rss:                 400 kB
Anonymous:           300 kB
7f0000300000-7f0000380000 r-xp 00000000 08:01 13 /usr/lib/llvm-14/lib/libclang-cpp.so.14
Anonymous:             0 kB
7f0000400000-7f0000480000 r-xp 00000000 08:01 14 /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7f0000500000-7f0000580000 rw-p 00000000 00:00 0
Anonymous:           512 kB
"""


def test_only_clean_compiler_mappings() -> None:
    assert clean_compiler_mappings(SMAPS) == [(0x7F0000000000, 0x100000), (0x7F0000300000, 0x80000)]


def _clean_compiler_bytes() -> int:
    with open("/proc/self/smaps") as f:
        return sum(length for _start, length in clean_compiler_mappings(f.read()))


def test_release_in_this_process_drops_exactly_the_clean_compiler_mappings() -> None:
    # a plain test process maps no compiler library unless an earlier test loaded bcc
    assert release_compiler_memory() == _clean_compiler_bytes()


RELEASE_AFTER_LOADING_LLVM = """
import ctypes, sys
from monitor.bpf.memory import clean_compiler_mappings, release_compiler_memory
ctypes.CDLL(sys.argv[1])
with open("/proc/self/smaps") as f:
    clean = sum(length for _start, length in clean_compiler_mappings(f.read()))
print(clean, release_compiler_memory())
"""


def test_release_after_loading_libllvm_drops_its_clean_pages() -> None:
    """A process that mapped libLLVM (as bcc's compile does) gets back every clean code page."""
    assert LIBLLVM, "libLLVM is installed with bcc"
    out = subprocess.run([sys.executable, "-c", RELEASE_AFTER_LOADING_LLVM, str(LIBLLVM[0])],
                         capture_output=True, text=True, check=True).stdout.split()
    clean, released = int(out[0]), int(out[1])
    assert clean > 0 and released == clean
