#!/usr/bin/env bash
# Install raftstate into .venv (if needed) and run the local 3-node cluster from cluster.yaml.
# Ctrl-C stops every node (a leader hands over first). Extra arguments go to `raftstate cluster up`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
exec .venv/bin/raftstate cluster up --config cluster.yaml "$@"
