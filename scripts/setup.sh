#!/usr/bin/env bash
# Creates .venv (if missing) and installs raftstate with its test tools into it.
# Idempotent and quick when nothing changed; every other script sources this first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.raftstate-installed
# Reinstall when pyproject changes or a module is added/removed (strict editable mode links files).
want=$( (cat pyproject.toml; find raft node client -name '*.py' | sort) | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
    # strict editable mode: a link tree that mypy can follow (the default import hook hides it).
    .venv/bin/python -m pip install -q --no-build-isolation -e '.[test]' --config-settings editable_mode=strict
    echo "$want" > "$stamp"
fi
