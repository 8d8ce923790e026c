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
# Every decoder of network and disk bytes under cargo fuzz, 20 s per target (nightly toolchain).
./scripts/fuzz.sh 20
