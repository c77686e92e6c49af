"""Start-up and exit of `monitor run -- CMD`, standalone and through a resident daemon.

    python -m tests.bench.startup [--smoke] [--n 20]

For each way (resident; standalone with TLS capture on; standalone with it off), in one run and
interleaved: the wall time of `monitor run -- bash -c 'echo $EPOCHREALTIME'`, the command start
latency (run invoked -> CMD's first line, bash's own start-up included), and the exit latency
(the summary line read on the pipe -> the exit status), p50 / p95 over N runs each.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench.common import MONITOR, median, p, save

TARGET_RESIDENT_S = 0.3
TARGET_STANDALONE_S = 2.5
CMD = ["bash", "-c", "echo $EPOCHREALTIME"]


def one_run(options: list[str]) -> dict[str, float]:
    """Wall, start and exit latency (s) of one `monitor run`, its JSON on stdout and CMD's on stderr."""
    invoked = time.time()
    proc = subprocess.Popen([MONITOR, "run", "-q", "--json", "-", *options, "--", *CMD],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    summary_at = None
    for line in proc.stdout:
        if line.startswith('{"type":"summary"') or line.startswith('{"type": "summary"'):
            summary_at = time.time()
    status = proc.wait()
    exited = time.time()
    first_line = next((line for line in proc.stderr.read().splitlines()
                       if line.replace(".", "", 1).isdigit()), None)
    if status != 0 or first_line is None or summary_at is None:
        raise RuntimeError(f"monitor run {' '.join(options)} failed ({status})")
    return {"wall_s": exited - invoked, "start_s": float(first_line) - invoked, "exit_s": exited - summary_at}


def start_daemon(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    socket_path = tmp / "monitor.sock"
    config = tmp / "daemon.yaml"
    config.write_text(f"docker: {{enabled: false}}\ngvisor: {{enabled: false}}\n"
                      f"metrics: {{address: '127.0.0.1:0'}}\nsocket: {socket_path}\n")
    log = open(tmp / "daemon.log", "w")  # noqa: SIM115 - the daemon's, closed with it
    daemon = subprocess.Popen([MONITOR, "daemon", "--config", str(config)], stderr=log, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while "resident: `monitor run` sandboxes on" not in (tmp / "daemon.log").read_text():
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"daemon did not start: {(tmp / 'daemon.log').read_text()[-500:]}")
        time.sleep(0.1)
    return daemon, str(socket_path)


def figures(runs: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in ("wall_s", "start_s", "exit_s"):
        values = [r[key] for r in runs]
        out[f"{key[:-2]}_p50_s"] = round(median(values), 3)
        out[f"{key[:-2]}_p95_s"] = round(p(values, 0.95), 3)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--n", type=int, default=20)
    args = parser.parse_args(argv)
    n = 2 if args.smoke else args.n
    ways: dict[str, list[str]] = {"standalone_tls_on": ["--standalone"],
                                  "standalone_tls_off": ["--standalone", "--llm-capture", "off"]}
    runs: dict[str, list[dict[str, float]]] = {"resident": [], **{w: [] for w in ways}}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        daemon, socket_path = start_daemon(Path(tmp))
        ways = {"resident": ["--connect", socket_path], **ways}
        try:
            for _ in range(n):
                for way, options in ways.items():
                    runs[way].append(one_run(options))
        finally:
            daemon.terminate()
            daemon.wait(60)
    result: dict[str, Any] = {"n": n, "cpus": os.cpu_count(), **{way: figures(r) for way, r in runs.items()}}
    result["targets"] = {"resident_wall_p50_s": TARGET_RESIDENT_S, "standalone_tls_on_wall_p50_s": TARGET_STANDALONE_S}
    save("startup", result)
    for way in runs:
        f = result[way]
        print(f"{way}: wall p50 {f['wall_p50_s']} s (p95 {f['wall_p95_s']}), start p50 {f['start_p50_s']} s "
              f"(p95 {f['start_p95_s']}), exit p50 {f['exit_p50_s']} s (p95 {f['exit_p95_s']})")
    print(f"startup: resident {result['resident']['wall_p50_s']} s (target <= {TARGET_RESIDENT_S}), standalone "
          f"{result['standalone_tls_on']['wall_p50_s']} s with TLS (target <= {TARGET_STANDALONE_S})")
    return result


if __name__ == "__main__":
    main()
