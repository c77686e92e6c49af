"""monitor/sensor/btf.py: kernel struct offsets parsed from the running kernel's BTF, checked
against a second method (bpftool's vmlinux.h compiled by gcc, printing offsetof), cached 0600 by
kernel release and BTF hash, and refused by the sensor's self-test when they read wrong."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from monitor.sensor import btf


@pytest.fixture(scope="module")
def parsed() -> dict[str, int]:
    return btf.offsets_from(btf.VMLINUX.read_bytes())


def offsets_by_gcc(tmp: Path) -> dict[str, int]:
    """The same fields through bpftool's C dump of the BTF and gcc's offsetof."""
    header = tmp / "vmlinux.h"
    with header.open("w") as out:
        subprocess.run(["bpftool", "btf", "dump", "file", str(btf.VMLINUX), "format", "c"], stdout=out, check=True)
    lines = [f'    printf("{name} %lu\\n", (unsigned long)__builtin_offsetof(struct {struct_name}, {path}));'
             for name, (struct_name, path) in btf.FIELDS.items()]
    source = tmp / "offsets.c"
    # no libc headers: their types clash with the kernel's in vmlinux.h
    source.write_text('#include "vmlinux.h"\nint printf(const char *format, ...);\nint main(void) {\n'
                      + "\n".join(lines) + "\n    return 0;\n}\n")
    binary = tmp / "offsets"
    subprocess.run(["gcc", "-w", "-o", str(binary), str(source)], check=True, cwd=tmp)
    out = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


def test_every_offset_matches_what_gcc_computes_from_bpftools_dump(parsed, tmp_path) -> None:
    assert set(parsed) == set(btf.FIELDS)
    assert parsed == offsets_by_gcc(tmp_path)


def test_members_of_anonymous_structs_and_embedded_paths_are_found(parsed) -> None:
    data = btf.BTF(btf.VMLINUX.read_bytes())
    # a path through an embedded struct is the sum of its parts
    assert parsed["OFF_FILE_DENTRY"] == data.offset("file", "f_path") + data.offset("path", "dentry")
    assert parsed["OFF_DENTRY_NAME"] == data.offset("dentry", "d_name") + data.offset("qstr", "name")
    assert data.offset("path", "mnt") == 0 and data.offset("path", "dentry") == 8
    with pytest.raises(btf.BTFError, match="no member"):
        data.offset("file", "no_such_member")
    with pytest.raises(btf.BTFError, match="no struct"):
        data.offset("no_such_struct_here", "x")


def test_a_blob_that_is_not_btf_is_refused() -> None:
    with pytest.raises(btf.BTFError, match="not BTF"):
        btf.BTF(b"\x7fELF" + bytes(40))
    with pytest.raises(btf.BTFError, match="shorter"):
        btf.BTF(b"\x9f\xeb")
    header = struct.pack("<HBBIIIII", btf.BTF_MAGIC, 1, 0, 24, 0, 13, 13, 1)
    with pytest.raises(btf.BTFError, match="ends inside a type"):
        btf.BTF(header + struct.pack("<3I", 0, btf.STRUCT << 24 | 1, 8) + b"\0")  # a member promised, none there


def test_offsets_are_cached_0600_by_release_and_btf_hash(parsed, tmp_path) -> None:
    cache = tmp_path / "cache"
    assert btf.kernel_offsets(cache_dir=cache) == parsed
    (stored,) = cache.iterdir()
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert os.uname().release in stored.name
    stored.write_text(stored.read_text().replace(str(parsed["OFF_TASK_TGID"]), "1"))  # the cache is read back
    assert btf.kernel_offsets(cache_dir=cache)["OFF_TASK_TGID"] == 1
    other = tmp_path / "other-btf"
    other.write_bytes(btf.VMLINUX.read_bytes() + b"\0")  # another BTF hash: computed again, not the cache's
    assert btf.kernel_offsets(vmlinux=other, cache_dir=cache) == parsed
    assert len(list(cache.iterdir())) == 2


def test_an_absent_btf_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(btf.BTFError, match="No such file"):
        btf.kernel_offsets(vmlinux=tmp_path / "missing", cache_dir=tmp_path)


def test_the_sensor_checks_the_offsets_and_refuses_wrong_ones(monkeypatch) -> None:
    """Real probes: with the kernel's offsets the self-test passes; with tgid's offset moved, the
    self-test reads a wrong tgid and the probes send no identity."""
    import monitor.sensor as sensor_module
    from monitor.sensor import Sensor

    good = Sensor()
    try:
        assert good.identity_on and good.stats()["identity"]["kernel"] == "btf offsets checked"
    finally:
        good.close()
    right = btf.kernel_offsets()
    monkeypatch.setattr(sensor_module, "kernel_offsets", lambda: ({**right, "OFF_TASK_TGID": right["OFF_TASK_TGID"] + 4}, ""))
    bad = Sensor()
    try:
        assert not bad.identity_on
        assert "self-test" in bad.stats()["identity"]["kernel"]
    finally:
        bad.close()
