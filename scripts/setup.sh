#!/usr/bin/env bash
# Creates .venv (if missing) and installs raftstate into it, editable.
#   source scripts/setup.sh          runtime + the test tools (what ./scripts/test.sh needs): the default
#   source scripts/setup.sh run      runtime only, plus uvloop when it installs (./scripts/cluster-up.sh)
# Idempotent and quick when nothing changed; never removes what an earlier call installed (a dev
# .venv keeps its test tools when cluster-up.sh runs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
case "${1:-dev}" in
    run) want_extras="fast" ;;
    dev) want_extras="test,fast" ;;
    *) echo "scripts/setup.sh: unknown profile '$1' (run or dev)" >&2; return 2 2>/dev/null || exit 2 ;;
esac
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.raftstate-installed
# Reinstall when pyproject changes or a module is added/removed (strict editable mode links files).
tree=$( (cat pyproject.toml; find package raft node client -name '*.py' | sort) | sha256sum | cut -c1-16)
have_tree=""; have_extras=""; no_fast=""
if [ -f "$stamp" ]; then read -r have_tree have_extras no_fast < "$stamp" || true; fi
# the extras to install: what was there plus what this profile needs (not uvloop again where it failed)
extras=$(printf '%s\n' ${have_extras//,/ } ${want_extras//,/ } | sort -u | { grep -vx "${no_fast:-^$}" || true; } | paste -sd, -)
if [ "$have_tree" != "$tree" ] || [ "$extras" != "$have_extras" ]; then
    # setuptools and wheel: --no-build-isolation builds with the venv's own (no download per build).
    .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
    # strict editable mode: a link tree that mypy can follow (the default import hook hides it).
    editable=(--no-build-isolation --config-settings editable_mode=strict)
    if ! .venv/bin/python -m pip install -q "${editable[@]}" -e ".[$extras]"; then
        # uvloop (the fast extra) is optional: without a wheel for this platform, go on without it.
        extras=$(printf '%s\n' ${extras//,/ } | { grep -vx fast || true; } | paste -sd, -)
        echo "scripts/setup.sh: installing without the fast extra (uvloop)" >&2
        .venv/bin/python -m pip install -q "${editable[@]}" -e ".${extras:+[$extras]}"
        no_fast=fast
    fi
    echo "$tree $extras $no_fast" > "$stamp"
fi
