"""Canonical file and executable identity under the real probes (`monitor run`, default pack):
a protected file read the plain way and the hiding ways (a symlink, `..`, openat on a directory
fd, a hard link) is the same file with the same rule firing; a deleted binary, a memfd and a copy
of a shell under another name are flagged at exec; a binary that unlinks itself is seen doing
it; a path the kernel walk cannot finish is a defined, counted event; a chroot resolves inside
its own root."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.monitor_run import ROOT, RunResult, monitor_run, needs_root

pytestmark = needs_root
PACK = str(ROOT / "rules")
SHADOW = "/etc/shadow"
SHADOW_RULE = "Shadow password file read"
MEMORY_RULE = "Program run from memory or a file descriptor"


def opens_of(result: RunResult, comm: str) -> list[dict[str, Any]]:
    return [e for e in result.events("open") if e["process"]["comm"] == comm and e.get("result", 0) >= 0]


def shadow_alerts(result: RunResult) -> list[dict[str, Any]]:
    return [a for a in result.alerts if a["rule"] == SHADOW_RULE]


def reader(tmp_path: Path, name: str, body: str) -> str:
    """A small C program named `name` (its comm tells its events apart) that opens as `body` says."""
    source = tmp_path / f"{name}.c"
    source.write_text("#define _GNU_SOURCE\n#include <fcntl.h>\n#include <unistd.h>\n#include <stdio.h>\n"
                      "int main(int argc, char **argv) {\n" + textwrap.indent(body, "    ") + "\n    return 0;\n}\n")
    binary = tmp_path / name
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(source)], check=True)
    return str(binary)


@pytest.fixture(scope="module")
def shadow_identity() -> tuple[int, int]:
    st = os.stat(SHADOW)
    return st.st_dev, st.st_ino


@pytest.fixture
def hard_link() -> Any:
    """A hard link to the shadow file on its own file system (removed afterwards)."""
    link = Path(SHADOW).parent / ".smtest-shadow-link"
    try:
        os.link(SHADOW, link)
    except OSError as exc:  # /etc on another file system than any writable dir would be a setup fault
        pytest.fail(f"cannot hard-link {SHADOW}: {exc}")
    yield str(link)
    link.unlink(missing_ok=True)


def test_the_shadow_file_read_plainly_and_through_every_hiding_path_is_the_same_file(
        tmp_path, shadow_identity, hard_link) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    symlink = tmp_path / "innocent.txt"
    symlink.symlink_to(SHADOW)
    dotdot = f"{tmp_path}/a/b/../../../../../../etc/./shadow"
    plain = reader(tmp_path, "rd_plain", 'close(open("/etc/shadow", O_RDONLY));')
    via_link = reader(tmp_path, "rd_symlink", f'close(open("{symlink}", O_RDONLY));')
    via_dotdot = reader(tmp_path, "rd_dotdot", f'close(open("{dotdot}", O_RDONLY));')
    via_dirfd = reader(tmp_path, "rd_dirfd", 'int d = open("/etc", O_RDONLY | O_DIRECTORY);\n'
                                             'close(openat(d, "shadow", O_RDONLY));')
    via_hardlink = reader(tmp_path, "rd_hardlink", f'close(open("{hard_link}", O_RDONLY));')
    result = monitor_run(f"{plain}; {via_link}; {via_dotdot}; {via_dirfd}; {via_hardlink}", "--rules", PACK)
    assert result.returncode == 0, result.stderr
    requested = {"rd_plain": None, "rd_symlink": str(symlink), "rd_dotdot": dotdot, "rd_dirfd": "shadow",
                 "rd_hardlink": None}
    dev, ino = shadow_identity
    for comm, asked in requested.items():
        (event,) = [e for e in opens_of(result, comm) if e["file"].get("ino") == ino]
        file = event["file"]
        assert file["path"] == SHADOW, (comm, file)
        assert (file["dev"], file["ino"], file["resolved"]) == (dev, ino, True), (comm, file)
        assert file.get("requested") == asked, (comm, file)
    assert opens_of(result, "rd_hardlink")[-1]["file"]["hardlink"] == hard_link
    fired = {a["event"]["process"]["comm"] for a in shadow_alerts(result)}
    assert fired == set(requested), f"the rule missed {set(requested) - fired}"
    assert all(a["event"]["file"]["path"] == SHADOW for a in shadow_alerts(result))


def test_an_ordinary_file_keeps_its_own_path_and_no_rule_fires(tmp_path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("hello\n")
    (tmp_path / "dir").mkdir()
    result = monitor_run(["cat", f"{tmp_path}/dir/../notes.txt"], "--rules", PACK)
    assert result.returncode == 0 and result.stdout == "hello\n"
    (event,) = [e for e in opens_of(result, "cat") if e["file"].get("ino") == target.stat().st_ino]
    assert event["file"]["path"] == str(target) and event["file"]["requested"] == f"{tmp_path}/dir/../notes.txt"
    assert not result.alerts


def test_a_deleted_binary_a_memfd_and_an_fexecve_are_flagged_at_exec(tmp_path) -> None:
    script = tmp_path / "fileless.py"
    script.write_text(textwrap.dedent(f"""
        import os, shutil, subprocess
        shutil.copy("/usr/bin/true", "{tmp_path}/gone")
        fd = os.open("{tmp_path}/gone", os.O_RDONLY)
        os.unlink("{tmp_path}/gone")
        subprocess.run([f"/proc/self/fd/{{fd}}"], pass_fds=(fd,), check=True)
        mem = os.memfd_create("payload", 0)
        os.write(mem, open("/usr/bin/true", "rb").read())
        pid = os.fork()
        if pid == 0:
            os.execve(mem, ["innocent"], {{}})
        os.waitpid(pid, 0)
    """))
    result = monitor_run(["/usr/bin/python3", str(script)], "--rules", PACK)
    assert result.returncode == 0, result.stderr
    execs = {e["process"]["executable"]: e["process"]["exe"] for e in result.events("exec")
             if e["process"]["executable"].startswith(("/proc/", "/dev/fd/"))}
    deleted = next(exe for path, exe in execs.items() if path.startswith("/proc/"))
    assert deleted["deleted"] is True and deleted["path"] == f"{tmp_path}/gone" and not deleted["memfd"]
    assert deleted["written_in_sandbox"] is True, "the sandbox wrote that file (by inode) before running it"
    memfd = next(exe for path, exe in execs.items() if path.startswith("/dev/fd/"))
    assert memfd["memfd"] is True and memfd["fd_exec"] is True and memfd["path"] == "/memfd:payload"
    flagged = [a["event"]["process"]["executable"] for a in result.alerts if a["rule"] == MEMORY_RULE]
    assert len(flagged) == 2 and set(flagged) == set(execs)


def test_a_copy_of_a_shell_under_another_name_is_a_shell(tmp_path) -> None:
    disguised = tmp_path / "update-helper"
    shutil.copy("/usr/bin/bash", disguised)
    script = tmp_path / "build.sh"
    script.write_text("#!/bin/bash\ntrue\n")
    script.chmod(0o755)
    result = monitor_run(f"{disguised} -c true; {script}", "--rules", PACK)
    assert result.returncode == 0, result.stderr
    (copy,) = result.execs("/update-helper")
    assert copy["process"]["exe"]["identity"] == "bash" and copy["process"]["exe"]["path"] == str(disguised)
    (run_script,) = result.execs("/build.sh")
    assert run_script["process"]["exe"]["script"] == str(script) and run_script["process"]["exe"]["identity"] == "bash"
    disguised_alerts = [a["event"]["process"]["executable"] for a in result.alerts
                        if a["rule"] == "Renamed or disguised shell"]
    assert disguised_alerts == [str(disguised)], "the copy is flagged, the #! script is not"


def test_a_binary_that_deletes_itself_is_seen_doing_it(tmp_path) -> None:
    binary = reader(tmp_path, "selfdel", 'char self[512];\nssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);\n'
                                         'self[n] = 0;\nunlink(self);\nusleep(50000);')
    copy = tmp_path / "dropper"
    shutil.copy(binary, copy)
    result = monitor_run([str(copy)], "--rules", PACK)
    assert result.returncode == 0, result.stderr
    (unlink,) = [e for e in result.events("unlink") if e["file"]["path"] == str(copy)]
    assert unlink["file"]["is_running_executable"] is True
    assert [a["event"]["file"]["path"] for a in result.alerts if a["rule"] == "Running executable deleted"] == [str(copy)]
    assert not copy.exists()


def test_an_unlink_of_another_file_is_not_a_running_executable(tmp_path) -> None:
    victim = tmp_path / "scratch.o"
    victim.write_bytes(b"\0")
    result = monitor_run(["rm", str(victim)], "--rules", PACK)
    (unlink,) = [e for e in result.events("unlink") if e["file"]["path"] == str(victim)]
    assert "is_running_executable" not in unlink["file"]
    assert "Running executable deleted" not in result.alert_rules()


def test_a_path_too_deep_to_walk_is_a_defined_unresolved_event_counted_in_the_summary(tmp_path) -> None:
    deep = tmp_path.joinpath(*["d"] * 40)
    deep.mkdir(parents=True)
    (deep / "f").write_text("x")
    # the shell outlives the walk's fallback: its cwd, read from /proc, resolves cat's relative path
    result = monitor_run("cat f; sleep 1", "--rules", PACK, cwd=str(deep))
    assert result.returncode == 0, result.stderr
    (event,) = [e for e in opens_of(result, "cat") if e["file"].get("ino") == (deep / "f").stat().st_ino]
    assert event["file"]["resolved"] is False and event["file"]["path"] == f"{deep}/f"
    assert result.summary["sources"]["ebpf"]["identity"]["unresolved"] >= 1


def test_a_chroot_resolves_inside_its_own_root(tmp_path) -> None:
    root = tmp_path / "jail"
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    (root / "etc" / "shadow").write_text("jail-only\n")
    result = monitor_run(["chroot", str(root), "/bin/busybox", "cat", "/etc/shadow"], "--rules", PACK)
    assert result.returncode == 0 and result.stdout == "jail-only\n", result.stderr
    (event,) = [e for e in opens_of(result, "busybox") if e["file"].get("ino") == (root / "etc" / "shadow").stat().st_ino]
    assert event["file"]["path"] == "/etc/shadow" and event["file"]["resolved"] is True


def test_a_unix_socket_reached_through_a_symlink_is_named_by_its_real_path(tmp_path) -> None:
    server = tmp_path / "real.sock"
    link = tmp_path / "alias.sock"
    link.symlink_to(server)
    script = textwrap.dedent(f"""
        import socket, time
        s = socket.socket(socket.AF_UNIX); s.bind("{server}"); s.listen(1)
        c = socket.socket(socket.AF_UNIX); c.connect("{link}"); c.close()
        time.sleep(1)  # the path is resolved in user space inside this process's root: alive
    """)
    result = monitor_run(["/usr/bin/python3", "-c", script], "--rules", PACK)
    assert result.returncode == 0, result.stderr
    (connect,) = [e for e in result.events("connect") if e["net"].get("family") == "unix"
                  and e["net"].get("requested") == str(link)]
    assert connect["net"]["address"] == str(server)
