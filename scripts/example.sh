#!/usr/bin/env bash
# Run the example suite offline and write its attention report:
#   bash scripts/example.sh [pytest arguments]
# Sets up .venv on first use, runs example_suite/ with the shipped model, and writes
# example_suite/vitattn-report/report.html (+ results.json). Open the HTML in a browser.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo_root/scripts/setup-env.sh"
cd "$repo_root/example_suite"
exec "$repo_root/.venv/bin/python" -m pytest --vitattn-report=vitattn-report/report.html "$@"
