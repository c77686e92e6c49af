"""Kernel struct offsets from the running kernel's own BTF (/sys/kernel/btf/vmlinux).

bcc compiles the probes against stand-in headers (Debian's 6.1) whose struct layouts differ from
the running kernel's, so a probe that reads a kernel struct takes each field's offset from here,
as a `-D` define (`OFF_TASK_STRUCT_TGID` ...), never from those headers. The BTF is parsed
directly (header, type section, string section: include/uapi/linux/btf.h); members of anonymous
structs and unions are found through them, as C finds them.

Offsets are cached (a 0600 JSON file) keyed by kernel release and the BTF's SHA-256: a new kernel
or a rebuilt one computes them again. The sensor checks them at load with a self-test program
(monitor/sensor/__init__.py) before any probe trusts them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")
CACHE_DIR = Path("/var/cache/sandbox-monitor")
BTF_MAGIC = 0xEB9F

# BTF kinds (include/uapi/linux/btf.h)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
_MODIFIERS = {TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG}
# bytes that follow the 12-byte btf_type, by kind: fixed, and per vlen entry
_EXTRA = {INT: (4, 0), ARRAY: (12, 0), STRUCT: (0, 12), UNION: (0, 12), ENUM: (0, 8),
          FUNC_PROTO: (0, 8), VAR: (4, 0), DATASEC: (0, 12), DECL_TAG: (4, 0), ENUM64: (0, 12)}

# The fields the probes read: define name -> (struct, dotted member path). A path may go through
# an embedded struct ("f_path.dentry" is the offset of file.f_path plus path.dentry).
FIELDS: dict[str, tuple[str, str]] = {
    "OFF_TASK_TGID": ("task_struct", "tgid"),
    "OFF_TASK_REAL_PARENT": ("task_struct", "real_parent"),
    "OFF_TASK_MM": ("task_struct", "mm"),
    "OFF_TASK_FILES": ("task_struct", "files"),
    "OFF_TASK_FS": ("task_struct", "fs"),
    "OFF_MM_EXE_FILE": ("mm_struct", "exe_file"),
    "OFF_FILES_FDT": ("files_struct", "fdt"),
    "OFF_FDT_MAX_FDS": ("fdtable", "max_fds"),
    "OFF_FDT_FD": ("fdtable", "fd"),
    "OFF_FS_ROOT_MNT": ("fs_struct", "root.mnt"),
    "OFF_FS_ROOT_DENTRY": ("fs_struct", "root.dentry"),
    "OFF_FILE_MNT": ("file", "f_path.mnt"),
    "OFF_FILE_DENTRY": ("file", "f_path.dentry"),
    "OFF_FILE_INODE": ("file", "f_inode"),
    "OFF_DENTRY_PARENT": ("dentry", "d_parent"),
    "OFF_DENTRY_NAME_LEN": ("dentry", "d_name.len"),
    "OFF_DENTRY_NAME": ("dentry", "d_name.name"),
    "OFF_DENTRY_HASH_PPREV": ("dentry", "d_hash.pprev"),
    "OFF_INODE_INO": ("inode", "i_ino"),
    "OFF_INODE_SB": ("inode", "i_sb"),
    "OFF_INODE_NLINK": ("inode", "__i_nlink"),
    "OFF_INODE_MODE": ("inode", "i_mode"),
    "OFF_SB_DEV": ("super_block", "s_dev"),
    "OFF_VFSMOUNT_ROOT": ("vfsmount", "mnt_root"),
    "OFF_MOUNT_MNT": ("mount", "mnt"),
    "OFF_MOUNT_PARENT": ("mount", "mnt_parent"),
    "OFF_MOUNT_MOUNTPOINT": ("mount", "mnt_mountpoint"),
}


class BTFError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    type_id: int
    bit_offset: int


class BTF:
    """The types of one BTF blob. Types are indexed by id as (kind, name offset, size or type,
    position of their members); names and members are decoded only for the types asked about."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BTFError("BTF blob shorter than its header")
        magic, version, _flags, hdr_len = struct.unpack_from("<HBBI", data)
        if magic != BTF_MAGIC or version != 1:
            raise BTFError(f"not BTF v1 (magic {magic:#x}, version {version})")
        type_off, type_len, str_off, str_len = struct.unpack_from("<4I", data, 8)
        self._strings = data[hdr_len + str_off: hdr_len + str_off + str_len]
        self._section = data[hdr_len + type_off: hdr_len + type_off + type_len]
        # per type id: (kind, name offset, size or referenced type, info word, members' position)
        self._types: list[tuple[int, int, int, int, int]] = [(0, 0, 0, 0, 0)]  # id 0 is void
        self._index_types()
        self._by_name: dict[str, int] = {}

    def _string(self, offset: int) -> str:
        end = self._strings.find(b"\0", offset)
        return self._strings[offset:end].decode("utf-8", "replace")

    def _index_types(self) -> None:
        section, pos, unpack = self._section, 0, struct.Struct("<3I").unpack_from
        types, extra = self._types, _EXTRA
        while pos + 12 <= len(section):
            name_off, info, size_or_type = unpack(section, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            pos += 12
            types.append((kind, name_off, size_or_type, info, pos))
            fixed, per_entry = extra.get(kind, (0, 0))
            pos += fixed + per_entry * vlen
        if pos != len(section):
            raise BTFError("BTF type section ends inside a type")

    def kind(self, type_id: int) -> int:
        return self._types[type_id][0]

    def name(self, type_id: int) -> str:
        return self._string(self._types[type_id][1])

    def members(self, type_id: int) -> list[Member]:
        kind, _, _, info, at = self._types[type_id]
        if kind not in (STRUCT, UNION):
            return []
        bitfields = info >> 31
        out = []
        for i in range(info & 0xFFFF):
            name_off, member_type, offset = struct.unpack_from("<3I", self._section, at + 12 * i)
            out.append(Member(self._string(name_off), member_type, offset & 0xFFFFFF if bitfields else offset))
        return out

    def _resolved(self, type_id: int) -> int:
        """Through typedefs and qualifiers to the type they name."""
        while self._types[type_id][0] in _MODIFIERS:
            type_id = self._types[type_id][2]
        return type_id

    def struct_id(self, name: str) -> int:
        """The id of the complete struct (or union) of that name (not a forward declaration)."""
        if not self._by_name:
            for type_id, (kind, name_off, _, info, _) in enumerate(self._types):
                if kind in (STRUCT, UNION) and name_off and info & 0xFFFF:
                    self._by_name.setdefault(self._string(name_off), type_id)
        if name not in self._by_name:
            raise BTFError(f"no struct {name} in the kernel's BTF")
        return self._by_name[name]

    def member_offset(self, type_id: int, name: str) -> tuple[int, int]:
        """(byte offset, member type id) of `name` in a struct or union, looking through
        anonymous members as C does."""
        found = self._find(self._resolved(type_id), name, 0)
        if found is None:
            raise BTFError(f"{self.name(type_id) or type_id} has no member {name}")
        bits, member_type = found
        if bits % 8:
            raise BTFError(f"member {name} is a bit field")
        return bits // 8, member_type

    def _find(self, type_id: int, name: str, base_bits: int) -> tuple[int, int] | None:
        for member in self.members(type_id):
            if member.name == name:
                return base_bits + member.bit_offset, member.type_id
            if not member.name:
                found = self._find(self._resolved(member.type_id), name, base_bits + member.bit_offset)
                if found is not None:
                    return found
        return None

    def offset(self, struct_name: str, path: str) -> int:
        """Byte offset of a dotted member path (through embedded structs) in a struct."""
        type_id, total = self.struct_id(struct_name), 0
        for part in path.split("."):
            at, type_id = self.member_offset(type_id, part)
            total += at
            type_id = self._resolved(type_id)
        return total

    def size(self, struct_name: str) -> int:
        return self._types[self.struct_id(struct_name)][2]


def offsets_from(data: bytes) -> dict[str, int]:
    btf = BTF(data)
    return {define: btf.offset(struct_name, path) for define, (struct_name, path) in FIELDS.items()}


def _cache_file(release: str, digest: str, cache_dir: Path) -> Path:
    return cache_dir / f"btf-offsets-{release}-{digest[:16]}.json"


def kernel_offsets(vmlinux: Path = VMLINUX, cache_dir: Path = CACHE_DIR) -> dict[str, int]:
    """The probes' offsets for the running kernel: from the cache when its release and BTF hash
    match, else parsed and cached (0600). Raises BTFError when the BTF is absent or lacks a field."""
    try:
        data = vmlinux.read_bytes()
    except OSError as exc:
        raise BTFError(f"{vmlinux}: {exc.strerror}") from exc
    digest = hashlib.sha256(data).hexdigest()
    cached = _cache_file(os.uname().release, digest, cache_dir)
    with contextlib.suppress(OSError, ValueError):
        stored = json.loads(cached.read_text())
        if isinstance(stored, dict) and set(stored) == set(FIELDS):
            return {name: int(value) for name, value in stored.items()}
    offsets = offsets_from(data)
    _write_private(cached, json.dumps(offsets, sort_keys=True))
    return offsets


def _write_private(path: Path, text: str) -> None:
    """Write a 0600 file atomically (a cache that cannot be written is only slower next time)."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)


def c_defines(offsets: dict[str, int]) -> str:
    return "".join(f"#define {name} ({value})\n" for name, value in sorted(offsets.items()))


__all__ = ["BTF", "BTFError", "FIELDS", "c_defines", "kernel_offsets", "offsets_from"]
