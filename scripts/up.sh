#!/usr/bin/env bash
# Build Shoal and start a local cluster (3 metadata nodes, 4 storage servers, mutual TLS on
# loopback) with all its data under one directory: $1, else $SHOAL_DIR, else ~/shoal-dev.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-${SHOAL_DIR:-$HOME/shoal-dev}}"
cargo build --release --bin shoal </dev/null
mkdir -p "$HOME/.local/bin"
ln -sf "$PWD/target/release/shoal" "$HOME/.local/bin/shoal"
./target/release/shoal --dir "$dir" up --detach
echo "shoal is at ~/.local/bin/shoal; try: shoal --dir $dir status"
