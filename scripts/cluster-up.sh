#!/usr/bin/env bash
# Install raftstate (runtime only) into .venv (if needed) and run the local 3-node cluster from cluster.yaml.
# Ctrl-C stops every node (a leader hands over first). Extra arguments go to `raftstate cluster up`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh run   # the runtime (and uvloop): no test tools
exec .venv/bin/raftstate cluster up --config cluster.yaml "$@"
