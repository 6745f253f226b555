#!/usr/bin/env bash
# Sets up the machine, builds raftkv (release) and runs a local 3-member cluster on loopback,
# laid out like etcd's Procfile: clients on 127.0.0.1:2379, :12379 and :22379, peers on :2380,
# :12380 and :22380. Data and logs go to ./local-cluster. Ctrl-C stops every member.
#   scripts/run-local.sh              # 3 members
#   MEMBERS=1 scripts/run-local.sh    # a single member on :2379
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/raftkv/target}"
echo "building raftkv (release; the first build compiles RocksDB and takes a while)..."
cargo build --release -p raftkv --locked
bin="$CARGO_TARGET_DIR/release/raftkv"

members="${MEMBERS:-3}"
root="local-cluster"
mkdir -p "$root/logs"
cluster=""
for i in $(seq 1 "$members"); do
  cluster+="${cluster:+,}m$i=http://127.0.0.1:$(( (i - 1) * 10000 + 2380 ))"
done

pids=()
stop() {
  echo; echo "stopping ${#pids[@]} member(s)..."
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop EXIT INT TERM

endpoints=""
for i in $(seq 1 "$members"); do
  client=$(( (i - 1) * 10000 + 2379 ))
  peer=$(( client + 1 ))
  endpoints+="${endpoints:+,}127.0.0.1:$client"
  "$bin" --name "m$i" --data-dir "$root/m$i.etcd" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "$cluster" --initial-cluster-state new \
    >"$root/logs/m$i.log" 2>&1 &
  pids+=($!)
done

printf 'waiting for a leader'
for _ in $(seq 1 100); do
  if curl -sf "http://127.0.0.1:2379/health" | grep -q true; then break; fi
  printf '.'; sleep 0.2
done
echo
cat <<MSG
raftkv is running: $members member(s), logs in $root/logs.
  export ETCDCTL_API=3 ETCDCTL_ENDPOINTS=$endpoints
  etcdctl endpoint status -w table
Press Ctrl-C to stop.
MSG
wait -n "${pids[@]}"
echo "a member exited; see $root/logs" >&2
