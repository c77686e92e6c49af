"""`monitor sandbox list | thaw ID | kill ID`: see and resolve sandboxes, quarantined ones first.

Idempotent: thawing a running sandbox, killing one already gone, say so and succeed.
"""

from __future__ import annotations

import argparse
import os
import sys

from rich.console import Console
from rich.table import Table

from monitor.sandbox import cgroup as cg


def _find(sandbox_id: str) -> dict[str, object] | None:
    for state in cg.read_states():
        if state.get("id") == sandbox_id or state.get("name") == sandbox_id:
            return state
    return None


def sandbox_command(command: str, sandbox_id: str | None) -> int:
    if os.geteuid() != 0:
        print("monitor: must run as root (cgroups)", file=sys.stderr)
        return 1
    if command == "list":
        table = Table("id", "name", "runtime", "state", "processes", "cgroup")
        for state in cg.read_states():
            path = str(state.get("cgroup_path", ""))
            exists = os.path.isdir(path)
            status = "gone" if not exists else ("FROZEN" if cg.frozen(path) else "running")
            table.add_row(str(state.get("id")), str(state.get("name")), str(state.get("runtime")),
                          status, str(len(cg.pids(path))) if exists else "0", path)
        Console().print(table)
        return 0
    if not sandbox_id:
        print(f"monitor: sandbox {command}: which sandbox? (monitor sandbox list)", file=sys.stderr)
        return 1
    state = _find(sandbox_id)
    if state is None:
        print(f"monitor: sandbox {sandbox_id}: no such sandbox (monitor sandbox list)", file=sys.stderr)
        return 1
    path = str(state.get("cgroup_path", ""))
    if command == "thaw":
        outcome = cg.thaw(path)
        messages = {"done": "thawed", "not_frozen": "was not frozen (nothing to do)",
                    "already_gone": "is gone (nothing to thaw)"}
    else:
        if cg.frozen(path):
            cg.kill(path)
            cg.thaw(path)  # a frozen task dies of SIGKILL only once thawed
            outcome = "done"
        else:
            outcome = cg.kill(path)
        messages = {"done": "killed", "already_gone": "already gone (nothing to kill)"}
        cg.dispose(path, str(state["id"]), 2.0)
    print(f"sandbox {state['id']} {messages.get(outcome, outcome)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sandbox", help="list sandboxes; thaw or kill a frozen (quarantined) one")
    p.add_argument("sandbox_cmd", choices=["list", "thaw", "kill"])
    p.add_argument("id", nargs="?")
    p.set_defaults(handler=lambda args: sandbox_command(args.sandbox_cmd, args.id))
