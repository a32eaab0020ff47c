#!/usr/bin/env bash
# Create the virtual environment and install the package with pinned versions.
# Usage: deploy/dev/bootstrap-venv.sh [VENV_DIR]
set -euo pipefail
venv=${1:-.venv}
cd "$(dirname "$0")/../.."

python=""
for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
  [ -n "$candidate" ] || continue
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    python=$candidate
    break
  fi
done
if [ -z "$python" ]; then
  echo "Backa broker needs Python 3.11 or newer: install it (e.g. 'apt-get install python3') or set PYTHON=/path/to/python3.11." >&2
  exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "==> creating the virtual environment in $venv with $python"
  if ! "$python" -m venv "$venv"; then
    echo "Could not create a virtual environment: install the venv module (e.g. 'apt-get install python3-venv') and run make again." >&2
    exit 1
  fi
fi

echo "==> installing backa-broker and its pinned dependencies (constraints.txt)"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
touch "$venv/.installed"
