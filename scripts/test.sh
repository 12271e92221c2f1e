#!/usr/bin/env bash
# The one test command: installs what it needs, lints, type-checks and runs the whole suite.
#   ./scripts/test.sh            everything
#   ./scripts/test.sh -k vote    extra arguments go to pytest
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh dev   # runtime + test tools (ruff, mypy, pytest, hypothesis, cryptography)
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff"; ruff check .
echo "== mypy"; mypy
echo "== pytest"; pytest "$@"
