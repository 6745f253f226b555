#!/usr/bin/env bash
# The project's test command: set-up, formatting, lints, then every test of the workspace
# (unit, property, differential against real etcd, crash recovery).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# Builds are cached outside the clone: a cold RocksDB build takes ~10 minutes on 2 cores.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/raftkv/target}"
mkdir -p "$CARGO_TARGET_DIR"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast -- --nocapture 2>&1 | tee "${CARGO_TARGET_DIR}/last-test.log"
