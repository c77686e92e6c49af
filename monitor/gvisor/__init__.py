"""gVisor sandboxes as an event source: runsc's trace session -> monitor Events.

Under gVisor the host kernel (and so the eBPF probes) sees only the Sentry's own syscalls. gVisor's
runtime monitoring streams the sandboxed program's process and syscall events instead: a trace
session configured by a pod-init config (`config.py`) sends each point to a "remote" sink, a unix
SOCK_SEQPACKET socket the monitor serves (`source.TraceSource`, a `monitor.source.Source`). Each datagram is
an 8-byte header (u16 size, u16 type, u32 dropped-so-far) and one protobuf message (`wire.py`,
schema in proto/points.proto); `mapping.EventMapper` turns points into Events shaped exactly like
the eBPF sensor's, with `source="gvisor"` and `event.sandbox.runtime == "gvisor"`.

    monitor run --runtime gvisor -- CMD        run.py (GvisorSandbox + the same pipeline)
    monitor gvisor install                     daemon.json runtime entry for Docker (install.py)
    GvisorSandbox                              runner.py (one command in one sandbox, a Source)
    RunscContainer                             control.py (runsc kill/pause/resume; the enforcer's)

Enforcement: kill -> `runsc kill --all` (exit status 137), kill_process -> `runsc kill --pid`,
freeze -> `runsc pause` (thaw: `runsc resume`). `deny` needs the host kernel to see the act, so
deny rules are refused at load for gVisor sandboxes (unless the run is audit-only).

What gVisor (runsc release 20221219) cannot report, so events from it lack these fields:
  - pids are the sandbox's own PID namespace (pid 1 is CMD); no host pid, `cgroup_id` is 0 and
    `event.sandbox.cgroup_id/cgroup_path` are empty. `process.ppid`/`ancestors` come from the
    session's own clone tracking (complete for `monitor run`, which traces from the first
    instruction). `process.start_time_ns` is absent.
  - unlink/rename/chmod: no `file.path` / `file.new_path` (only raw syscall points exist for
    them and gVisor does not copy their path arguments); `file.mode` of chmod is known.
  - memfd: no `detail.name` (flags only). mount: no source/target/fstype (flags only).
  - dns: no `net.query` / `query_type` (no point carries the payload). A lookup is reported when
    the resolver connect()s a socket to port 53 (glibc does); a bare sendto() to port 53 is not.
  - no `result` for raw-syscall kinds (listen, ptrace, memfd, unlink, rename, chmod, mount, bpf,
    unshare, setns, setreuid/setregid): runsc fills a raw exit point's context from the enter
    point's field set, so those are traced at enter.
  - exec: only successful execs (sentry/execve); no failed or denied exec events.
  - capset is not reported; `event.verdict` is never "denied".
  - drops: gVisor reports its running drop count in the next message's header, so points
    dropped after the session's last message are not counted.
"""

from monitor.gvisor.runner import (
    DENY_REFUSED,
    RUNSC_MISSING,
    GvisorError,
    GvisorSandbox,
)
from monitor.gvisor.source import SinkError, TraceSource

__all__ = ["DENY_REFUSED", "RUNSC_MISSING", "GvisorError", "GvisorSandbox", "SinkError", "TraceSource"]
