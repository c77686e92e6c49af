"""Docker benchmark against the private test engine (tests/docker_engine.py): how long until a
started container is a watched sandbox, how long a kill through the engine takes, and the bound
on the cgroup.kill fallback when the engine does not answer.

    .venv/bin/python tests/bench/docker_sandboxes.py            # 20 containers
    .venv/bin/python tests/bench/docker_sandboxes.py --smoke    # 3 containers, seconds
    .venv/bin/python tests/bench/docker_sandboxes.py --json     # one JSON object with the figures

Where no engine can be started it prints why and exits 0 (nothing measured).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from docker_engine import EngineUnavailable, engine_session, wait_for  # noqa: E402

from monitor.actions.docker import kill_container  # noqa: E402
from monitor.sandbox import Sandbox, SandboxRegistry  # noqa: E402
from monitor.sandbox.docker import DockerInventory, _started_ns, cgroup2_root  # noqa: E402

AGENT = {"agent.sandbox": "true"}


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50_ms": ms(statistics.median(ordered)), "max_ms": ms(ordered[-1]), "n": len(ordered)}


def measure(count: int) -> dict[str, Any]:
    started = time.monotonic()
    with engine_session() as engine:
        engine_start_s = time.monotonic() - started
        # Containers run on plain runc: the default runtime of the test engine may be a Python
        # wrapper (see docker_engine.py) whose start-up would be measured with every runc call.
        config = json.loads(engine.config_path.read_text())
        config.setdefault("runtimes", {})["bench-runc"] = {"path": shutil.which("runc")}
        engine.config_path.write_text(json.dumps(config))
        engine.reload()
        registry = SandboxRegistry()
        added_at: dict[str, float] = {}
        watched_ns: dict[int, int] = {}  # cgroup id -> when the probes could first watch it

        def on_added(sandbox: Sandbox) -> None:
            added_at.setdefault(sandbox.id, time.monotonic())
            watched_ns.setdefault(sandbox.cgroup_id, time.time_ns())

        inventory = DockerInventory(registry, base_url=engine.host, selector=dict(AGENT),
                                    on_added=on_added,
                                    on_cgroup_created=lambda c: watched_ns.setdefault(c.id, time.time_ns()))
        inventory.start()
        inventory.connected.wait(15)
        discovery, kill_call, kill_exited, lead = [], [], [], []
        for i in range(count):
            cid = engine.run(["sleep", "300"], name=f"bench-{i}", labels=AGENT, runtime="bench-runc")
            run_returned = time.monotonic()
            wait_for(lambda cid=cid: cid in added_at, 15, f"bench-{i} watched")
            discovery.append(added_at[cid] - run_returned)
            sandbox = registry.by_id(cid)
            engine_started_ns = sandbox.started_ns or _started_ns(
                engine.client.api.inspect_container(cid)["State"]["StartedAt"])
            lead.append((engine_started_ns - watched_ns[sandbox.cgroup_id]) / 1e9)
            t1 = time.monotonic()
            outcome = kill_container(sandbox).outcome
            kill_call.append(time.monotonic() - t1)
            assert outcome == "done", outcome
            container = engine.client.containers.get(cid)
            wait_for(lambda c=container: (c.reload(), c.status)[1] == "exited", 15, "exited")
            kill_exited.append(time.monotonic() - t1)
        inventory.stop()
        engine.remove_all()
    return {"engine_start_s": round(engine_start_s, 2),
            "discovery_after_run_returns": summary(discovery),
            # > 0: the cgroup was watched that long before the engine's StartedAt (early discovery)
            "watched_before_start": summary(lead),
            "kill_through_engine_call": summary(kill_call),
            "kill_to_container_exited": summary(kill_exited),
            "fallback_kill_hung_engine": fallback_bound(0.5)}


def fallback_bound(timeout_s: float) -> dict[str, Any]:
    """kill_container against a socket that accepts and never answers: cgroup.kill after the bound."""
    root = cgroup2_root()
    if root is None:
        return {"skipped": "no cgroup v2"}
    path = Path(root) / "sm-bench-docker"
    path.mkdir(exist_ok=True)
    proc = subprocess.Popen(["sleep", "60"])
    (path / "cgroup.procs").write_text(str(proc.pid))
    with tempfile.TemporaryDirectory() as tmp:
        server = socket.socket(socket.AF_UNIX)
        server.bind(f"{tmp}/hung.sock")
        server.listen(4)
        held: list[socket.socket] = []
        threading.Thread(target=lambda: held.append(server.accept()[0]), daemon=True).start()
        sandbox = Sandbox(id="bench", name="bench", runtime="docker", cgroup_path=str(path))
        t0 = time.monotonic()
        result = kill_container(sandbox, timeout_s=timeout_s, base_url=f"unix://{tmp}/hung.sock")
        elapsed = time.monotonic() - t0
        proc.wait(5)
        server.close()
        for conn in held:
            conn.close()
    for _ in range(50):
        try:
            path.rmdir()
            break
        except OSError:
            time.sleep(0.05)
    return {"bound_s": timeout_s, "elapsed_ms": ms(elapsed), "outcome": result.outcome,
            "message": result.message}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="3 containers, seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--count", type=int, default=20)
    args = parser.parse_args()
    count = 3 if args.smoke else args.count
    try:
        figures = measure(count)
    except EngineUnavailable as exc:
        print(f"docker bench: no engine here ({exc}); nothing measured")
        return 0
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:32} {value}")
        fallback = figures["fallback_kill_hung_engine"]
        print(f"docker: watched {figures['watched_before_start']['p50_ms']} ms before start (p50), "
              f"kill via engine {figures['kill_through_engine_call']['p50_ms']} ms (p50), "
              f"fallback cgroup.kill at {fallback.get('elapsed_ms')} ms for a {fallback.get('bound_s')} s bound")
    return 0


if __name__ == "__main__":
    sys.exit(main())
