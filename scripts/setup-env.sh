#!/usr/bin/env bash
# Create .venv (once) and install pytest-vitattn with its test tools into it.
# Sourced by scripts/test.sh and scripts/example.sh; safe to run again (it re-installs only
# when pyproject.toml changed). Override the interpreter with PYTHON=/path/to/python3.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"
stamp="$venv/.vitattn-installed"
wanted="$(sha256sum "$repo_root/pyproject.toml" | cut -c1-16)"

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv"
  "${PYTHON:-python3}" -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "setup: installing pytest-vitattn and its test dependencies (torch takes a minute)"
  "$venv/bin/python" -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  "$venv/bin/python" -m pip install --quiet -e "$repo_root[test]" 2>&1 | grep -v "^WARNING: Location" || true
  "$venv/bin/python" -c "import pytest_vitattn, torch, timm" # fail here, not in the tests
  echo "$wanted" > "$stamp"
fi
