#!/usr/bin/env bash
# Sets up the machine, builds raftkv, the control plane and the node agent, and runs a local
# HA cluster with `controlplane up`: 3 raftkv members, 3 API servers behind a load-balanced
# endpoint (https://127.0.0.1:6443), 2 schedulers, 2 controller managers and 2 node agents
# running pods with runc (node agents need root). Everything lives in ./hakube (data, logs,
# kubeconfig, etcdctl.env). Ctrl-C stops it; `controlplane down` cleans up after a crash.
#   scripts/run-local.sh                          # the default topology
#   scripts/run-local.sh --members 5 --nodes 3    # any `controlplane up` flags
#   RELEASE=1 scripts/run-local.sh                # optimized build (compiles RocksDB again)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/raftkv/target}"
profile=debug
flags=()
if [ "${RELEASE:-}" = 1 ]; then profile=release; flags=(--release); fi
echo "building the workspace ($profile; the first build compiles RocksDB and takes a while)..."
# The whole workspace, all targets: the same feature set as `scripts/test.sh` builds, so
# the two share one cached RocksDB build (a `-p` subset resolves features differently).
cargo build "${flags[@]}" --locked --workspace --all-targets
exec "$CARGO_TARGET_DIR/$profile/controlplane" up "$@"
