"""Which mappings monitor/bpf/memory.py may drop after a compile: the compiler libraries'
mappings with no private (copy-on-write) page, never relocated data or other libraries."""

from __future__ import annotations

from monitor.bpf.memory import clean_compiler_mappings, release_compiler_memory

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


def test_release_in_this_process_is_harmless() -> None:
    # no compiler library mapped in a plain test process: nothing dropped, nothing broken
    assert release_compiler_memory() >= 0
