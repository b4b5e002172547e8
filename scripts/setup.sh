#!/usr/bin/env bash
# Create .venv (once) and install modelport with the given extras, editable.
# Reinstalls only when pyproject.toml or the extras change. Usage: scripts/setup.sh dev
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-sklearn,torch}"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "modelport needs Python 3.10 or newer; set PYTHON=/path/to/python3.x" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.modelport-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $extras"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing modelport[$extras] into .venv (first time: about 2 minutes) ..."
  if ! .venv/bin/pip install --disable-pip-version-check -e ".[$extras]" >.venv/install.log 2>&1; then
    tail -n 30 .venv/install.log >&2
    echo "install failed; full log in .venv/install.log" >&2
    exit 1
  fi
  echo "$want" >"$stamp"
fi
