#!/usr/bin/env bash
# Sets up the machine, builds raftkv in release mode and serves a local member on
# http://127.0.0.1:2379 (data in ./default.etcd). Extra arguments go to raftkv.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/raftkv/target}"
echo "building raftkv (release; the first build compiles RocksDB and takes a while)..."
cargo build --release -p raftkv --locked
exec "$CARGO_TARGET_DIR/release/raftkv" \
  --name default --data-dir default.etcd \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 "$@"
