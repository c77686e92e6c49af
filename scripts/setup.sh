#!/usr/bin/env bash
# Install everything sandbox-monitor needs on a Debian bookworm host, as root.
# Idempotent: a second run checks each step and does nothing it need not do.
#
#   scripts/setup.sh            # core: bcc, headers, tracefs, venv, the package
#   EXTRAS="docker gvisor" scripts/setup.sh   # also Docker engine / runsc / auditd...
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
STAMP="$VENV/.setup-stamp"
log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: must run as root (eBPF, cgroups and apt need it)" >&2
    exit 1
fi

# --- apt packages ---------------------------------------------------------
APT_PKGS=(python3-bpfcc bpfcc-tools python3-venv python3-dev linux-headers-amd64
          auditd iproute2 util-linux git gcc libssl3 openssl)
# The Docker tests start their own engine (tests/docker_engine.py) and build their image from busybox-static.
APT_PKGS+=(docker.io busybox-static)
# gVisor: `monitor run --runtime gvisor` and its tests run real runsc sandboxes.
APT_PKGS+=(runsc)
# The rule pack's end-to-end tests run the real netcat (nc -z on a loopback-only netns).
APT_PKGS+=(netcat-openbsd)
# The BTF offset tests check monitor/sensor/btf.py against a second method (bpftool's vmlinux.h + gcc).
APT_PKGS+=(bpftool)
# The forensic report's tests open the page in Debian's headless Chromium through its chromedriver.
APT_PKGS+=(chromium chromium-driver)
for extra in ${EXTRAS:-}; do
    case "$extra" in
        docker) APT_PKGS+=(docker.io) ;;
        gvisor) APT_PKGS+=(runsc) ;;
        prometheus) APT_PKGS+=(prometheus prometheus-alertmanager) ;;
        node) APT_PKGS+=(nodejs) ;;
        *) log "unknown extra '$extra' ignored" ;;
    esac
done
missing=()
for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "apt install: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
# auditd must not run unless a benchmark asks for it.
if command -v systemctl >/dev/null && systemctl is-active -q auditd 2>/dev/null; then
    systemctl stop auditd || true
fi

# --- kernel headers where bcc looks ---------------------------------------
# The running kernel may ship no headers; the distribution's nearest stand in.
# Probes read no kernel struct, so only macros and helper prototypes matter.
KREL="$(uname -r)"
MOD="/lib/modules/$KREL"
if [ ! -e "$MOD/build/include/generated" ]; then
    if [ -d "/usr/src/linux-headers-$KREL" ]; then
        arch_dir="/usr/src/linux-headers-$KREL"
    else
        arch_dir="$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1)"
    fi
    [ -n "$arch_dir" ] || { echo "setup: no kernel headers found under /usr/src" >&2; exit 1; }
    common_dir="${arch_dir%-amd64}-common"
    [ -d "$common_dir" ] || common_dir="$arch_dir"
    mkdir -p "$MOD"
    ln -sfn "$arch_dir" "$MOD/build"
    ln -sfn "$common_dir" "$MOD/source"
    log "headers: $MOD/build -> $arch_dir"
fi

# --- tracefs / debugfs ------------------------------------------------------
if [ ! -e /sys/kernel/tracing/events ]; then
    mount -t tracefs tracefs /sys/kernel/tracing
    log "mounted tracefs"
fi
if [ ! -e /sys/kernel/debug/tracing ] && mountpoint -q /sys/kernel/debug 2>/dev/null; then
    :
fi

# --- venv that can import bcc ---------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    log "venv at $VENV"
    /usr/bin/python3 -m venv "$VENV"
fi
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# Debian's bcc is pure Python over libbcc: link the package dir into the venv.
[ -e "$SITE/bcc" ] || ln -sfn /usr/lib/python3/dist-packages/bcc "$SITE/bcc"

# the install also builds the C decoder (monitor/sensor/_fastdecode.c): its source is in the stamp
hash_now="$(cat "$ROOT/pyproject.toml" "$ROOT"/monitor/sensor/*.c | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$hash_now" ]; then
    log "pip install -e .[test]"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[test]" 2>&1 \
        | { grep -v "^WARNING: Location .* is ignored" || true; }
    echo "$hash_now" > "$STAMP"
fi
log "ready: $VENV/bin/monitor"
