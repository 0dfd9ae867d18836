# Sourced by scripts/run and scripts/test: find Python 3.11+, create .venv,
# install the pinned requirements when they changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

find_python() {
  for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "Quant Hub needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)." >&2
  return 1
}

ensure_venv() {
  local reqfile="$1"
  if [ ! -x .venv/bin/python ]; then
    echo "Creating .venv …"
    "$(find_python)" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
  fi
  local stamp=".venv/.installed-$(basename "$reqfile")"
  local digest
  digest="$(cat requirements.txt "$reqfile" | sha256sum | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
    echo "Installing $reqfile …"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$reqfile"
    echo "$digest" > "$stamp"
  fi
}
