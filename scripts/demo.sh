#!/usr/bin/env bash
# Install what is needed (idempotent) and run the embedded demo: a scripted "agent" in a
# sandbox doing ordinary and suspicious things, shown live, ending with a summary.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
exec "$ROOT/.venv/bin/monitor" demo "$@"
