#!/usr/bin/env bash
# Build Shoal, start a local cluster (3 metadata nodes, 4 storage servers, mutual TLS on
# loopback) with all its data under one directory ($1, else $SHOAL_DIR, else ~/shoal-dev), and
# mount it ($2, else ~/shoal). Installs fuse3 if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-${SHOAL_DIR:-$HOME/shoal-dev}}"
mnt="${2:-$HOME/shoal}"
if ! command -v fusermount3 >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq </dev/null && $sudo apt-get install -y -qq fuse3 </dev/null
fi
cargo build --release --bin shoal </dev/null
mkdir -p "$HOME/.local/bin"
ln -sf "$PWD/target/release/shoal" "$HOME/.local/bin/shoal"
./target/release/shoal --dir "$dir" up --detach --mount "$mnt"
echo "shoal is at ~/.local/bin/shoal; the cluster is mounted at $mnt; try: shoal --dir $dir status"
