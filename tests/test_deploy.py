"""deploy/: the example config, the systemd unit and the DaemonSet parse and agree."""

from __future__ import annotations

import configparser
from pathlib import Path

import yaml

from monitor.engine.config import parse_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_example_config_is_valid():
    config = parse_config((DEPLOY / "daemon.yaml").read_text(), str(DEPLOY / "daemon.yaml"))
    assert config.watch == {"agent.sandbox": "true"}
    assert (config.metrics_host, config.metrics_port) == ("127.0.0.1", 9464)
    assert config.json and config.journal


def test_systemd_unit_runs_the_daemon_and_reloads_with_sighup():
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.read(DEPLOY / "systemd" / "sandbox-monitor.service")
    service = unit["Service"]
    assert service["ExecStart"].endswith("monitor daemon --config /etc/sandbox-monitor/daemon.yaml")
    assert service["ExecStartPre"].endswith("--check")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM" and service["UMask"] == "0077"
    assert "Requires" not in unit["Unit"]  # the daemon must start without the Docker engine


def test_daemonset_manifest():
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "daemonset.yaml").read_text()))
    by_kind = {d["kind"]: d for d in docs}
    assert set(by_kind) == {"Namespace", "ConfigMap", "DaemonSet"}
    config = parse_config(by_kind["ConfigMap"]["data"]["daemon.yaml"], "configmap/daemon.yaml")
    pod = by_kind["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["hostPID"] is True and pod["hostNetwork"] is True
    container = pod["containers"][0]
    assert container["command"][1:] == ["daemon", "--config", "/etc/sandbox-monitor/daemon.yaml"]
    probe = container["livenessProbe"]["httpGet"]
    assert (probe["host"], probe["port"], probe["path"]) == ("127.0.0.1", config.metrics_port, "/healthz")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"] for v in pod["volumes"]}
    assert set(mounts) == volumes
    assert mounts["cgroup"] == "/sys/fs/cgroup"
    assert mounts["docker-sock"] == config.docker_host.removeprefix("unix://")
    assert mounts["run"] == str(Path(config.gvisor_socket).parent)  # runsc on the host connects there
