#!/usr/bin/env bash
# Install everything (idempotent) and run the whole test suite, as root.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS="${EXTRAS:-docker gvisor prometheus node}" "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec .venv/bin/pytest -q -rs -p no:cacheprovider "$@" tests
