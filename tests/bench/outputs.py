"""Alert outputs benchmark: alerts/s each output delivers to a local receiver on 127.0.0.1, the
cost of an output on the judging thread (on_alert, mean), and the exec storm's overhead with an
alert on every exec, with and without outputs configured (interleaved in one run).

    python -m tests.bench.outputs            # 5,000 alerts per output, 5 storm repeats
    python -m tests.bench.outputs --smoke    # 300 alerts, 1 repeat, seconds

Receivers run in this process (HTTP, syslog) or as Debian's prometheus-alertmanager; they share
the GIL with the outputs' workers, so the rates are a floor for an out-of-process receiver.
"""

from __future__ import annotations

import argparse
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trustme

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from monitor.outputs import build_outputs, load_outputs  # noqa: E402
from monitor.outputs.delivery import OutputSink  # noqa: E402
from tests.alert_receivers import ALERTMANAGER, Alertmanager, HttpReceiver, SyslogListener  # noqa: E402
from tests.bench.common import build_workload, median, run_bare, run_monitored, save  # noqa: E402
from tests.test_outputs import make_alert, sandbox  # noqa: E402

ALERT_EVERY_EXEC = """\
- rule: Bench exec marker
  when: [exec]
  condition: event.process.executable.endsWith("/true")
  severity: high
  tags: [execution]
"""


def delivered_per_s(sink: OutputSink, count: int) -> dict[str, Any]:
    alerts = [make_alert(path=f"/bench/{i}", sb=sandbox(f"sb-{i % 50}")) for i in range(count)]
    started = time.perf_counter()
    for alert in alerts:
        sink.on_alert(alert)
    fed = time.perf_counter() - started
    sink.close({})
    elapsed = time.perf_counter() - started
    stats = sink.stats()
    return {"alerts": count, "sent": stats["sent"], "undelivered": stats["undelivered"],
            "alerts_per_s": round(stats["sent"] / elapsed), "on_alert_us": round(fed / count * 1e6, 2)}


def output_configs(base: Path) -> tuple[dict[str, str], list[Any]]:
    """name -> one outputs-file entry, and the receivers to close."""
    ca = trustme.CA()
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    ca_file = base / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    http = HttpReceiver()
    https = HttpReceiver(tls=server_tls)
    listeners = {p: SyslogListener(p, server_tls if p == "tls" else None) for p in ("udp", "tcp", "tls")}
    (base / "hmac.key").write_text("bench-key\n")
    entries = {
        "webhook": f"{{type: webhook, url: '{http.url}/hook', secret: {{file: {base / 'hmac.key'}}}}}",
        "webhook_tls": f"{{type: webhook, url: '{https.url}/hook', tls: {{ca_file: {ca_file}}}}}",
        "ocsf_file": f"{{type: ocsf, path: {base / 'ocsf.jsonl'}}}",
        "syslog_udp": f"{{type: syslog, address: '{listeners['udp'].address}'}}",
        "syslog_tcp": f"{{type: syslog, address: '{listeners['tcp'].address}'}}",
        "syslog_tls": f"{{type: syslog, address: '{listeners['tls'].address}', tls: {{ca_file: {ca_file}}}}}",
        "command": "{type: command, exec: [/bin/true]}",
    }
    receivers: list[Any] = [http, https, *listeners.values()]
    if ALERTMANAGER:
        am_hook = HttpReceiver()
        manager = Alertmanager(base, am_hook.url)
        entries["alertmanager"] = f"{{type: alertmanager, url: '{manager.url}'}}"
        receivers += [manager, am_hook]
    return entries, receivers


def bench_outputs(count: int) -> dict[str, Any]:
    rates: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="smbench-outputs-") as tmp:
        base = Path(tmp)
        entries, receivers = output_configs(base)
        try:
            for name, entry in entries.items():
                path = base / f"{name}.yaml"
                path.write_text(f"outputs:\n  - {entry}\n")
                sink = build_outputs(load_outputs(str(path))).sinks[0]
                rates[name] = delivered_per_s(sink, count // 10 if name == "command" else count)
        finally:
            for receiver in receivers:
                (receiver.stop if hasattr(receiver, "stop") else receiver.close)()
    return rates


def bench_storm(repeats: int, smoke: bool) -> dict[str, Any]:
    """The exec storm with a rule that alerts on every exec: without outputs, and with a webhook
    and a syslog output (the same run, interleaved)."""
    with tempfile.TemporaryDirectory(prefix="smbench-outputs-storm-") as tmp:
        base = Path(tmp)
        binary = build_workload(base)
        rules = base / "alert-every-exec.yaml"
        rules.write_text(ALERT_EVERY_EXEC)
        http = HttpReceiver()
        udp = SyslogListener("udp")
        outputs = base / "outputs.yaml"
        outputs.write_text(f"outputs:\n  - {{type: webhook, url: '{http.url}/hook'}}\n"
                           f"  - {{type: syslog, address: '{udp.address}'}}\n")
        cmd = [binary, "exec", str(200 if smoke else 2000)]
        bare: list[int] = []
        alerting: list[int] = []
        delivering: list[int] = []
        sent = 0
        try:
            for _ in range(repeats):
                bare.append(run_bare(cmd))
                alerting.append(run_monitored(cmd, "--no-json-events", "--rules", str(rules)).elapsed_ns)
                run = run_monitored(cmd, "--no-json-events", "--rules", str(rules), "--outputs", str(outputs))
                delivering.append(run.elapsed_ns)
                sent = run.summary["sinks"]["webhook"]["sent"]
        finally:
            http.close()
            udp.close()
    return {"execs": int(cmd[2]), "repeats": repeats, "alerts_delivered_per_run": sent,
            "alerting_overhead_pct": round((median(alerting) / median(bare) - 1) * 100, 1),
            "with_outputs_overhead_pct": round((median(delivering) / median(bare) - 1) * 100, 1),
            "outputs_vs_alerting_pct": round((median(delivering) / median(alerting) - 1) * 100, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--alerts", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    count = 300 if args.smoke else args.alerts
    result: dict[str, Any] = {"outputs": bench_outputs(count)}
    for name, row in result["outputs"].items():
        print(f"{name:>13}: {row['alerts_per_s']:>6,} alerts/s delivered ({row['sent']}/{row['alerts']}, "
              f"undelivered {row['undelivered']}); on_alert {row['on_alert_us']} us")
    import os
    if os.geteuid() == 0:
        storm = result["storm"] = bench_storm(1 if args.smoke else args.repeats, args.smoke)
        print(f"exec storm ({storm['execs']} execs, an alert each, {storm['repeats']} runs): monitor "
              f"{storm['alerting_overhead_pct']:+.1f}%, with webhook+syslog outputs "
              f"{storm['with_outputs_overhead_pct']:+.1f}% ({storm['outputs_vs_alerting_pct']:+.1f}% vs no outputs; "
              f"{storm['alerts_delivered_per_run']} alerts delivered a run)")
    save("outputs", result)
    ok = all(row["undelivered"] == 0 and row["sent"] == row["alerts"] for row in result["outputs"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
