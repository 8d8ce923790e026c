#!/usr/bin/env bash
# The whole test suite: unit, conformance and real-process tests. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
if ! command -v fusermount3 >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq </dev/null && apt-get install -y -qq fuse3 </dev/null
  else
    sudo apt-get update -qq </dev/null && sudo apt-get install -y -qq fuse3 </dev/null
  fi
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked </dev/null
fi
cargo build --release --bins </dev/null
cargo nextest run --release --workspace --no-fail-fast </dev/null
