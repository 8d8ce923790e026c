#!/usr/bin/env bash
# The whole test suite: unit, conformance and real-process tests. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
# fuse3 for the mount; git and gcc are used as ordinary tools on the mount by the tests.
missing=""
command -v fusermount3 >/dev/null 2>&1 || missing="$missing fuse3"
command -v git >/dev/null 2>&1 || missing="$missing git"
command -v gcc >/dev/null 2>&1 || missing="$missing gcc"
# The network fault script: namespaces, nftables rules, JSON from `shoal status`.
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
command -v nft >/dev/null 2>&1 || missing="$missing nftables"
command -v python3 >/dev/null 2>&1 || missing="$missing python3"
if [ -n "$missing" ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq </dev/null && $sudo apt-get install -y -qq $missing </dev/null
fi
# pjdfstest switches to the users "nobody" and "tests".
if ! id tests >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo useradd -M -s /usr/sbin/nologin tests
fi
command -v pjdfstest >/dev/null 2>&1 || cargo install pjdfstest --version 0.2.2 --locked </dev/null
command -v fsx >/dev/null 2>&1 || cargo install fsx --version 0.3.2 --locked </dev/null
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked </dev/null
fi
cargo build --release --bins </dev/null
cargo nextest run --release --workspace --no-fail-fast </dev/null
# Deterministic simulation: 300 seeds of a simulated cluster under crashes, partitions, message
# loss and flipped bytes (about 2.5 minutes). A failing seed is printed with its replay command;
# `SHOAL_SIM_SEEDS=5000` runs the long mode.
./target/release/shoal-sim --seeds "${SHOAL_SIM_SEEDS:-300}" </dev/null | tail -n 3
# Faults against a cluster spread over network namespaces (needs root): partitions, packet loss,
# kill -9, SIGSTOP, a full disk, flipped bytes; prints a table and fails if a write was lost.
if [ "$(id -u)" = 0 ] && ip netns add shoal-probe-$$ 2>/dev/null; then
  ip netns del shoal-probe-$$
  ./tests/netns/faults.sh target/release/shoal </dev/null
else
  echo "skipping tests/netns/faults.sh: it needs root and network namespaces"
fi
# Every decoder of network and disk bytes under cargo fuzz, 20 s per target (nightly toolchain).
./scripts/fuzz.sh 20
