#!/usr/bin/env bash
# Installs what building and testing the project needs. Idempotent: a second run changes
# nothing and skips the package index refresh when every package is already present.
set -euo pipefail

PACKAGES=(
  build-essential pkg-config libclang-dev clang protobuf-compiler  # rocksdb, bindgen, protos
  libprotobuf-dev            # google/protobuf/*.proto, which etcd-client's protos import
  etcd-server etcd-client    # the reference etcd 3.4 the differential tests compare against
  runc busybox-static        # the node agent's container runtime and test image
  containernetworking-plugins nftables  # pod networking (CNI bridge, host-local, loopback) and the service proxy
  iproute2 curl ca-certificates openssl   # openssl: the JWT test makes its keys with it
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: system packages present"
fi

# kubectl 1.20 (Debian's kubernetes-client) for the API server tests. When another package
# owns /usr/bin/kubectl (e.g. google-cloud-sdk's newer kubectl), unpack it beside instead.
KUBECTL_DIR=/opt/kubectl-1.20
if ! { kubectl version --client 2>/dev/null | grep -q 'Minor:"20"'; } && [ ! -x "$KUBECTL_DIR/usr/bin/kubectl" ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  if ! command -v kubectl >/dev/null; then
    echo "setup: installing kubernetes-client (kubectl 1.20)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends kubernetes-client
  else
    echo "setup: unpacking kubernetes-client (kubectl 1.20) into $KUBECTL_DIR"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download kubernetes-client >/dev/null 2>&1 || { $SUDO apt-get update -qq && apt-get download kubernetes-client; })
    $SUDO dpkg -x "$tmp"/kubernetes-client_*.deb "$KUBECTL_DIR"
    rm -rf "$tmp"
  fi
fi

if command -v rustup >/dev/null; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
echo "setup: done ($(cargo --version), $(etcd --version | head -1))"
