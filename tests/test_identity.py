"""monitor/identity.py: the facts enrich derives from the kernel's file identity (real files in a
temporary directory; the kernel side is tests/e2e/test_identity_e2e.py)."""

from __future__ import annotations

import os
import shutil

from monitor import identity as identity_module
from monitor.event import Event
from monitor.identity import Identity, KnownPrograms, ProtectedFiles, resolve_in_root
from monitor.sensor import wire


def test_paths_resolve_inside_a_root_with_its_own_symlinks(tmp_path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "run").mkdir()
    (root / "etc" / "secret").write_text("x")
    (root / "run" / "alias").symlink_to("/etc/secret")  # absolute: inside the root, not the host's
    (root / "run" / "up").symlink_to("../etc")
    (root / "loop").symlink_to("loop")
    assert resolve_in_root(str(root), "/run/alias") == "/etc/secret"
    assert resolve_in_root(str(root), "/run/up/./secret") == "/etc/secret"
    assert resolve_in_root(str(root), "/../../etc/x/../secret") == "/etc/secret"
    assert resolve_in_root(str(root), "/missing/file") == "/missing/file"
    assert resolve_in_root(str(root), "/loop") is None
    assert resolve_in_root(str(tmp_path / "gone"), "/etc") is None


def test_a_copy_of_a_shell_is_known_by_content_once_per_inode_and_mtime(tmp_path, monkeypatch) -> None:
    programs = KnownPrograms()
    bash = os.stat("/usr/bin/bash")
    assert programs.name_of(bash.st_dev, bash.st_ino, "/usr/bin/bash") == "bash"
    copy = tmp_path / "helper"
    shutil.copy("/usr/bin/bash", copy)
    st = copy.stat()
    hashed: list[str] = []
    real_hash = identity_module._sha256
    monkeypatch.setattr(identity_module, "_sha256", lambda path: hashed.append(path) or real_hash(path))
    assert programs.name_of(st.st_dev, st.st_ino, str(copy)) == "bash"
    assert programs.name_of(st.st_dev, st.st_ino, str(copy)) == "bash"
    assert hashed.count(str(copy)) == 1, "the second exec of the same file is not hashed again"
    other = tmp_path / "tool"
    shutil.copy("/usr/bin/true", other)
    ost = other.stat()
    assert programs.name_of(ost.st_dev, ost.st_ino, str(other)) == ""
    assert str(other) not in hashed, "a size no known program has is not hashed"


def test_a_hard_link_to_a_protected_file_is_named_by_the_protected_path(tmp_path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("hash")
    link = tmp_path / "innocent"
    os.link(secret, link)
    identity = Identity()
    identity.protected = ProtectedFiles(paths=(str(secret),), globs=())
    st = link.stat()
    event = Event("open", file={"path": str(link), "dev": st.st_dev, "ino": st.st_ino}, result=3)
    identity.file_facts(event)
    assert event.file["path"] == str(secret) and event.file["hardlink"] == str(link)
    plain = Event("open", file={"path": str(secret), "dev": st.st_dev, "ino": st.st_ino}, result=3)
    identity.file_facts(plain)
    assert "hardlink" not in plain.file


def exec_event(executable: str, exe: tuple[int, int, int, int, str], args: list[str]) -> Event:
    return Event("exec", process={"pid": 1, "executable": executable, "args": args, "uid": 1000},
                 hints={"exe": exe}, result=0)


def test_exec_facts_flag_memfd_fd_exec_deleted_temp_and_the_script(tmp_path) -> None:
    identity = Identity()
    memfd = identity.exec_facts(exec_event("/dev/fd/3", (1, 9, 1, wire.ID_DETACHED, "/memfd:x"), ["x"]),
                                pid=10**7, cwd="/", alive=False)
    assert memfd["memfd"] and memfd["fd_exec"] and memfd["temp"] and memfd["path"] == "/memfd:x"
    assert not memfd["deleted"] and not memfd["resolved"]
    gone = identity.exec_facts(exec_event("/proc/self/fd/4", (1, 9, 0, wire.ID_RESOLVED | wire.ID_UNLINKED,
                                                              "/work/a.out"), ["a.out"]), pid=10**7, cwd="/", alive=False)
    assert gone["deleted"] and gone["temp"] and not gone["memfd"] and "script" not in gone
    script = tmp_path / "build.sh"
    script.write_text("#!/bin/bash\n")
    bash = os.stat("/usr/bin/bash")
    ran = identity.exec_facts(exec_event(str(script), (bash.st_dev, bash.st_ino, 1, wire.ID_RESOLVED,
                                                       "/usr/bin/bash"), ["./build.sh"]), pid=10**7, cwd="/", alive=False)
    assert ran["identity"] == "bash" and ran["script"] == str(script) and not ran["temp"] and not ran["writable"]
    inline = identity.exec_facts(exec_event("/usr/bin/bash", (bash.st_dev, bash.st_ino, 1, wire.ID_RESOLVED,
                                                              "/usr/bin/bash"), ["bash", "-c", "id"]), 10**7, "/", False)
    assert inline["script"] == "-c"
    assert identity.exec_facts(Event("exec", process={"pid": 1}), 1, "/", False) is None


def test_an_exec_of_a_file_the_same_sandbox_wrote_says_so() -> None:
    identity = Identity()
    wrote = Event("open", file={"path": "/work/a.out", "write": True, "dev": 5, "ino": 6}, result=3)
    wrote.cgroup_id = 42
    identity.file_facts(wrote)
    ran = exec_event("/work/a.out", (5, 6, 1, wire.ID_RESOLVED, "/work/a.out"), ["./a.out"])
    ran.cgroup_id = 42
    assert identity.exec_facts(ran, 10**7, "/work", False)["written_in_sandbox"] is True
    elsewhere = exec_event("/work/a.out", (5, 6, 1, wire.ID_RESOLVED, "/work/a.out"), ["./a.out"])
    elsewhere.cgroup_id = 43
    assert identity.exec_facts(elsewhere, 10**7, "/work", False)["written_in_sandbox"] is False


def test_an_unlink_of_a_file_a_process_runs_from_is_flagged_until_that_process_exits() -> None:
    identity = Identity()
    identity.exec_facts(exec_event("/tmp/x", (1, 2, 1, wire.ID_RESOLVED, "/tmp/x"), ["x"]), pid=77, cwd="/",
                        alive=False)
    unlink = Event("unlink", file={"path": "/tmp/x", "write": True}, result=0)
    identity.file_facts(unlink)
    assert unlink.file["is_running_executable"] is True
    identity.forget(77)
    again = Event("unlink", file={"path": "/tmp/x", "write": True}, result=0)
    identity.file_facts(again)
    assert "is_running_executable" not in again.file
