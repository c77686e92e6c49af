"""One host-capability check, as `monitor doctor` prints it. Sources (eBPF, gVisor, TLS) each
offer their own list of these; the doctor gathers them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True
