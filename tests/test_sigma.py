"""Sigma import: field mapping, modifiers, conditions, refusals, the CLI and loading Sigma files
with --rules. Converted rules are judged by the real rule engine on events (not by comparing text)."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from monitor.event import Event
from monitor.policy import load_rules
from monitor.policy.sigma import convert_paths, convert_text, rules_yaml
from monitor.policy.tooling import lint

ROOT = Path(__file__).resolve().parents[1]
MONITOR = str(ROOT / ".venv" / "bin" / "monitor")
CORPUS = ROOT / "tests" / "fixtures" / "sigma" / "rules"


def sigma(detection: str, category: str = "process_creation", extra: str = "", product: str = "linux") -> str:
    return (f"title: Test rule\nid: 11111111-2222-3333-4444-555555555555\nstatus: test\n"
            f"author: Someone\nlevel: high\ntags:\n  - attack.execution\n  - attack.t1059.004\n"
            f"logsource:\n  product: {product}\n  category: {category}\n"
            f"detection:\n{textwrap.indent(textwrap.dedent(detection).strip(), '  ')}\n{extra}")


def ruleset(tmp_path: Path, text: str):
    path = tmp_path / "rule.yml"
    path.write_text(text)
    return load_rules([path])


def exec_event(executable: str, *args: str, **process: object) -> Event:
    return Event(kind="exec", process={"pid": 7, "executable": executable,
                                        "args": [executable.rsplit("/", 1)[-1], *args], "cwd": "/work",
                                        "ancestors": [], **process})


def fires(rules, event: Event) -> bool:
    alerts = rules.evaluate(event)
    assert not rules.eval_errors, rules.eval_errors
    return bool(alerts)


def refusal(text: str) -> str:
    result = convert_text(text, "rule.yml")
    assert not result.rules and len(result.refusals) == 1
    return result.refusals[0].reason


# -- field mapping -----------------------------------------------------------------------------
def test_metadata_is_kept(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, sigma("selection:\n  Image|endswith: /nc\ncondition: selection",
                                    extra="references:\n  - https://example.org/x\n"))
    (rule,) = rules.rules
    assert rule.name == "Test rule" and rule.severity == "high" and rule.when == ["exec"]
    assert rule.tags == ["execution", "T1059.004"]
    assert rule.origin["sigma_id"] == "11111111-2222-3333-4444-555555555555"
    assert rule.origin["author"] == "Someone" and rule.origin["references"] == ["https://example.org/x"]


def test_process_fields(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, sigma("""
        selection:
          Image: /usr/bin/curl
          CommandLine|contains: 'curl -s http'
          ParentImage|endswith: /bash
          ParentCommandLine|contains: '-c run'
          CurrentDirectory|startswith: /work
          User: root
        condition: selection"""))
    parent = [{"pid": 1, "executable": "/usr/bin/bash", "args": ["bash", "-c", "run"]}]
    good = exec_event("/usr/bin/curl", "-s", "http://x", ancestors=parent, uid=0)
    assert fires(rules, good)
    assert not fires(rules, exec_event("/usr/bin/curl", "-s", "http://x", ancestors=parent, uid=1000))
    assert not fires(rules, exec_event("/usr/bin/curl", "-s", "http://x", ancestors=[], uid=0))
    other_cwd = exec_event("/usr/bin/curl", "-s", "http://x", ancestors=parent, uid=0)
    other_cwd.process["cwd"] = "/home"
    assert not fires(rules, other_cwd)


def test_command_line_is_the_arguments_joined(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, sigma("selection:\n  CommandLine|endswith: 'base64 -d'\ncondition: selection"))
    assert fires(rules, exec_event("/bin/sh", "-c", "echo x | base64 -d"))   # inside one argument
    assert fires(rules, exec_event("/usr/bin/base64", "-d"))                 # across two
    assert not fires(rules, exec_event("/usr/bin/base64", "-d", "file"))


def test_file_event_is_a_write_or_a_rename_onto_the_path(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, sigma("selection:\n  TargetFilename|startswith: /etc/cron.d/\ncondition: selection",
                                    category="file_event"))
    assert rules.rules[0].when == ["open", "rename"]
    proc = {"pid": 3, "executable": "/usr/bin/tee", "args": ["tee"]}
    assert fires(rules, Event(kind="open", process=proc, file={"path": "/etc/cron.d/x", "write": True}))
    assert not fires(rules, Event(kind="open", process=proc, file={"path": "/etc/cron.d/x", "write": False}))
    assert fires(rules, Event(kind="rename", process=proc, file={"path": "/tmp/a", "new_path": "/etc/cron.d/x"}))
    assert not fires(rules, Event(kind="rename", process=proc, file={"path": "/etc/cron.d/x", "new_path": "/tmp/a"}))


def test_network_connection_fields(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, sigma("""
        selection:
          Initiated: 'true'
          DestinationPort: [4444, 2222]
        filter:
          DestinationIp|cidr: ['127.0.0.0/8', '10.0.0.0/8']
        condition: selection and not filter""", category="network_connection"))
    proc = {"pid": 3, "executable": "/usr/bin/python3", "args": ["python3"]}
    net = {"family": "inet", "transport": "tcp", "direction": "egress"}
    assert rules.rules[0].when == ["connect"]
    assert fires(rules, Event(kind="connect", process=proc, net={**net, "address": "198.51.100.7", "port": 4444}))
    assert not fires(rules, Event(kind="connect", process=proc, net={**net, "address": "10.1.2.3", "port": 4444}))
    assert not fires(rules, Event(kind="connect", process=proc, net={**net, "address": "198.51.100.7", "port": 80}))


def test_destination_hostname_converts_to_dns_queries(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, sigma("selection:\n  DestinationHostname|endswith: '.ngrok.io'\ncondition: selection",
                                    category="network_connection"))
    assert rules.rules[0].when == ["dns"]
    proc = {"pid": 3, "executable": "/usr/bin/curl", "args": ["curl"]}
    assert fires(rules, Event(kind="dns", process=proc, net={"query": "abc.NGROK.io", "port": 53}))
    assert not fires(rules, Event(kind="dns", process=proc, net={"query": "ngrok.io.example", "port": 53}))


# -- modifiers ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("detection", "hits", "misses"), [
    ("CommandLine|contains: 'kesl'", ["x stop kesl now"], ["x stop kes"]),
    ("CommandLine|startswith: 'rm -f /var/log/'", ["rm -f /var/log/x"], ["sudo rm -f /var/log/x"]),
    ("CommandLine|endswith: ' --'", ["capsh --"], ["capsh -- -c id"]),
    ("CommandLine|contains|all: ['-sel', 'clip', '-o']", ["xclip -sel clip -o"], ["xclip -sel clip"]),
    ("CommandLine|re: '\\s-[FTd]\\s'", ["curl -F x"], ["curl -f x"]),           # re keeps case
    ("CommandLine|re|i: 'SECRET'", ["cat secret"], ["cat secre"]),
    ("CommandLine|cased: 'Run Me'", ["Run Me"], ["run me"]),
    ("CommandLine: 'Run Me'", ["run me", "RUN ME"], ["run me now"]),            # plain: no case
    ("CommandLine: 'chmod * /tmp/?.sh'", ["chmod 777 /tmp/a.sh"], ["chmod 777 /tmp/ab.sh"]),
    ("CommandLine|base64offset|contains: 'stratum+tcp://'", ["echo c3RyYXR1bSt0Y3A6Ly9 x"], ["echo stratum"]),
    ("CommandLine|windash|contains: ' -exec '", ["find . /exec x"], ["find . exec x"]),
])
def test_modifiers(tmp_path: Path, detection: str, hits: list[str], misses: list[str]) -> None:
    rules = ruleset(tmp_path, sigma(f"selection:\n  {detection}\ncondition: selection"))
    for line in hits:
        assert fires(rules, Event(kind="exec", process={"executable": "/bin/x", "args": line.split(" ")})), line
    for line in misses:
        assert not fires(rules, Event(kind="exec", process={"executable": "/bin/x", "args": line.split(" ")})), line


def test_exists_and_null(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, sigma("selection:\n  Image|endswith: /x\n  CurrentDirectory|exists: false\n"
                                    "condition: selection"))
    assert fires(rules, Event(kind="exec", process={"executable": "/bin/x", "args": ["x"]}))
    assert not fires(rules, Event(kind="exec", process={"executable": "/bin/x", "args": ["x"], "cwd": "/"}))


# -- conditions --------------------------------------------------------------------------------
def test_one_of_and_all_of(tmp_path: Path) -> None:
    one = ruleset(tmp_path, sigma("""
        selection_a:
          Image|endswith: /nc
        selection_b:
          Image|endswith: /ncat
        condition: 1 of selection_*"""))
    assert fires(one, exec_event("/usr/bin/nc")) and fires(one, exec_event("/usr/bin/ncat"))
    assert not fires(one, exec_event("/usr/bin/cat"))
    every = ruleset(tmp_path, sigma("""
        selection_img:
          Image|endswith: /nc
        selection_cli:
          CommandLine|contains: ' -e '
        condition: all of them"""))
    assert fires(every, exec_event("/usr/bin/nc", "-e", "/bin/sh"))
    assert not fires(every, exec_event("/usr/bin/nc", "-z", "host"))


def test_not_filter_is_true_when_the_filtered_field_is_absent(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, sigma("""
        selection:
          Image|endswith: /chmod
        filter_main_parent:
          ParentImage|endswith: /dpkg
        filter_optional_cwd:
          CurrentDirectory: /var/lib/dpkg
        condition: selection and not 1 of filter_main_* and not 1 of filter_optional_*"""))
    assert fires(rules, Event(kind="exec", process={"executable": "/bin/chmod", "args": ["chmod"]}))
    dpkg = [{"pid": 1, "executable": "/usr/bin/dpkg", "args": ["dpkg"]}]
    assert not fires(rules, exec_event("/bin/chmod", ancestors=dpkg))
    assert not fires(rules, exec_event("/bin/chmod", cwd="/var/lib/dpkg"))
    assert fires(rules, exec_event("/bin/chmod", cwd="/home"))


# -- refusals ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "reason"), [
    (sigma("selection:\n  LogonId: 0\ncondition: selection"), "LogonId (the login session id) is not captured"),
    (sigma("selection:\n  Hashes|contains: abc\ncondition: selection"), "file hashes are not computed"),
    (sigma("selection:\n  FooBar: 1\ncondition: selection"), "field 'FooBar' has no counterpart in our process_creation events"),
    (sigma("selection:\n  Image|endswith: /x\ncondition: selection", product="windows"),
     "log source (product windows, category process_creation) is not one we see"),
    (sigma("selection:\n  Image|endswith: /x\ncondition: selection", category="registry_set"),
     "log source (product linux, category registry_set) is not one we see"),
    (sigma("keywords:\n  - evil\ncondition: keywords"), "keyword (field-less) search"),
    (sigma("selection:\n  CommandLine|re: '(?<=a)b'\ncondition: selection"), "invalid perl operator: (?<="),
    (sigma("selection:\n  User: alice\ncondition: selection"), "only root has the same uid on every host"),
    (sigma("selection:\n  Initiated: 'false'\ncondition: selection", category="network_connection"),
     "Initiated: false (inbound connections) is not converted"),
    (sigma("selection:\n  DestinationHostname: a.example\n  DestinationPort: 443\ncondition: selection",
           category="network_connection"), "no one event carries both"),
    (sigma("selection:\n  DestinationPort: http\ncondition: selection", category="network_connection"),
     "is a number; the value 'http' is not"),
    (sigma("selection:\n  Image|expand: '%admin%'\ncondition: selection"), "placeholders"),
])
def test_refusals_name_the_reason(text: str, reason: str) -> None:
    assert reason in refusal(text)


def test_malformed_yaml_is_refused_with_its_line() -> None:
    result = convert_text("title: x\nlogsource:\n  product: linux\ndetection:\n  sel: [a\n", "bad.yml")
    (refused,) = result.refusals
    assert refused.line == 6 and "YAML error" in refused.reason and str(refused).startswith("bad.yml:6: ")


def test_correlation_over_rules_not_in_the_file_is_refused() -> None:
    text = ("title: c\nid: 5c1f0000-0000-4000-8000-00000000000a\ncorrelation:\n  type: event_count\n"
            "  rules: [elsewhere]\n  timespan: 1m\n  condition: {gte: 3}\n")
    assert "rule 'elsewhere' it correlates is not a converted rule of this file" in refusal(text)
    malformed = "title: c\nid: 1\ncorrelation:\n  type: event_count\n  rules: [x]\n  timespan: 1m\n"
    assert refusal(malformed)  # a reason, not a traceback


# -- the SigmaHQ corpus ------------------------------------------------------------------------
def test_corpus_converts_at_least_110_rules_and_says_why_for_the_rest() -> None:
    result = convert_paths([CORPUS])
    assert len(result.rules) + len(result.refusals) == 135
    assert len(result.rules) >= 110
    for refused in result.refusals:
        assert refused.sigma_id and refused.reason and "\n" not in str(refused)


def test_written_rules_load_back_the_same(tmp_path: Path) -> None:
    result = convert_paths([CORPUS / "linux" / "file_event"])
    path = tmp_path / "converted.yaml"
    path.write_text(rules_yaml(result.rules))
    loaded = load_rules([path]).rules
    assert [r.name for r in loaded] == [r.entry["rule"] for r in result.rules]
    assert [" ".join(r.condition.split()) for r in loaded] == \
        [" ".join(r.entry["condition"].split()) for r in result.rules]


# -- --rules with Sigma files ------------------------------------------------------------------
def test_a_sigma_folder_loads_and_a_refused_rule_leaves_the_others_working(tmp_path: Path, capsys) -> None:
    (tmp_path / "good.yml").write_text(sigma("selection:\n  Image|endswith: /nc\ncondition: selection"))
    (tmp_path / "bad.yml").write_text(sigma("selection:\n  LogonId: 0\ncondition: selection")
                                      .replace("Test rule", "Bad rule"))
    (tmp_path / "broken.yml").write_text("title: b\nlogsource:\n  product: linux\ndetection:\n  x: [\n")
    rules = load_rules([tmp_path])
    assert [r.name for r in rules.rules] == ["Test rule"]
    assert fires(rules, exec_event("/usr/bin/nc"))
    assert len(rules.warnings) == 2
    assert any("bad.yml" in w and "11111111-2222-3333-4444-555555555555" in w and "LogonId" in w
               for w in rules.warnings)
    assert any("broken.yml:" in w and "YAML error" in w for w in rules.warnings)
    assert lint([str(tmp_path)]) == 1
    assert "LogonId (the login session id) is not captured" in capsys.readouterr().out


# -- the command line --------------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MONITOR, "rules", *args], capture_output=True, text=True, timeout=120)


def test_import_sigma_writes_private_rule_files_and_exits_0_when_all_convert(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    (source / "nc.yml").write_text(sigma("selection:\n  Image|endswith: /nc\ncondition: selection"))
    out = tmp_path / "out"
    proc = run_cli("import-sigma", str(source), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"converted 1 of 1 Sigma rules into {out} (0 refused)"
    written = out / "nc.yaml"
    assert os.stat(written).st_mode & 0o777 == 0o600
    assert "Sigma rule by Someone" in written.read_text()
    assert run_cli("lint", str(written)).returncode == 0


def test_import_sigma_exits_1_with_one_line_per_refused_rule(tmp_path: Path) -> None:
    (tmp_path / "a.yml").write_text(sigma("selection:\n  LogonId: 0\ncondition: selection"))
    (tmp_path / "b.yml").write_text("title: b\nlogsource:\n  product: linux\ndetection:\n  x: [\n")
    proc = run_cli("import-sigma", str(tmp_path / "a.yml"), str(tmp_path / "b.yml"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in proc.stderr
    assert lines[0].startswith(f"refused: {tmp_path / 'a.yml'}:") and "LogonId" in lines[0]
    assert lines[1].startswith(f"refused: {tmp_path / 'b.yml'}:6: ") and "YAML error" in lines[1]


def test_import_sigma_missing_path_is_one_line() -> None:
    proc = run_cli("import-sigma", "/nonexistent/sigma", "--out", "/tmp/never-written")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == "monitor: import-sigma: /nonexistent/sigma: no such file or folder"


def test_a_changed_sigma_file_is_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "nc.yml"
    path.write_text(sigma("selection:\n  Image|endswith: /nc\ncondition: selection"))
    rules = load_rules([tmp_path])
    assert fires(rules, exec_event("/usr/bin/nc")) and not fires(rules, exec_event("/usr/bin/socat"))
    path.write_text(sigma("selection:\n  Image|endswith: /socat\ncondition: selection"))
    os.utime(path, ns=(1, 1))  # a different mtime even within the clock's granularity
    assert rules.reload_if_changed() is True
    assert fires(rules, exec_event("/usr/bin/socat")) and not fires(rules, exec_event("/usr/bin/nc"))


def test_guards_and_prefilters_agree_with_cel_alone_on_the_imported_rules() -> None:
    """The pack plus every converted SigmaHQ rule, judged with the pre-filters and guards and by
    CEL alone, on the recorded agent mix plus events built to hit the imported rules."""
    import json

    import zstandard

    mix = ROOT / "tests" / "bench" / "data" / "agent_mix.jsonl.zst"
    text = zstandard.ZstdDecompressor().decompress(mix.read_bytes()).decode()
    events = [json.loads(line) for line in text.splitlines() if line]
    lines = ["bash -i -c true", "base64 -d", "curl -F x http://h", "chmod 777 /tmp/x", "xclip -sel clip -o",
             "esxcli vm process kill --type=soft", "crontab -r", "sh -c echo aGk= | base64 -d | sh",
             "python3 -c import pty;pty.spawn('/bin/sh')", "wget -O /tmp/x http://h", "nohup /tmp/x"]
    for index, line in enumerate(lines):
        args = line.split(" ")
        for exe in (f"/usr/bin/{args[0]}", f"/TMP/{args[0].upper()}"):
            events.append({"kind": "exec", "process": {"pid": 50 + index, "executable": exe, "args": args,
                                                       "cwd": "/tmp", "ancestors": [{"pid": 1, "executable": "/bin/bash",
                                                                                     "args": ["bash"]}]}})
    for path in ("/etc/cron.d/x", "/etc/sudoers.d/y", "/etc/profile.d/z.sh", "/tmp/rootlog", "/ETC/DOAS.CONF"):
        events.append({"kind": "open", "process": {"pid": 9, "executable": "/usr/bin/wget", "args": ["wget"]},
                       "file": {"path": path, "write": True}})
    folders = [CORPUS / "linux" / name for name in ("process_creation", "file_event", "network_connection")]
    fast = load_rules([ROOT / "rules", *folders])
    slow = load_rules([ROOT / "rules", *folders])
    slow.disable_prefilters()
    fired = 0
    for data in events:
        got = sorted(a.rule for a in fast.evaluate(Event.from_dict(data)))
        assert got == sorted(a.rule for a in slow.evaluate(Event.from_dict(data))), data
        fired += len(got)
    assert fired > len(lines)  # the built events do reach the imported rules
    assert fast.eval_errors == slow.eval_errors == {}
