#!/usr/bin/env bash
# Run the project's tests on a fresh machine: bash scripts/test.sh [pytest arguments]
# Sets up .venv on first use (scripts/setup-env.sh), then runs pytest on tests/.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo_root/scripts/setup-env.sh"
cd "$repo_root"
exec "$repo_root/.venv/bin/python" -m pytest tests "$@"
