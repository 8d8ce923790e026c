#!/usr/bin/env bash
# Fuzz every decoder of bytes from the network or the disk for a bounded time each
# (default 30 s; `scripts/fuzz.sh 600` for a longer run). Needs the nightly toolchain and
# installs cargo-fuzz. A crash leaves its input under fuzz/artifacts/<target>/ and fails.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-30}"
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: the nightly toolchain is not installed here; cargo fuzz needs it. Skipping the fuzz run." >&2
  exit 0
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked </dev/null
for target in frame messages tickets blob_header; do
  echo "fuzz: $target for ${secs}s"
  # -malloc_limit_mb: a length field that makes the decoder allocate more than this is a bug.
  log="fuzz/last-$target.log"
  if ! cargo +nightly fuzz run --release "$target" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=256 -print_final_stats=1 >"$log" 2>&1 </dev/null; then
    tail -60 "$log"
    echo "fuzz: $target FAILED (input saved under fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$log" | tr '\n' ' '; echo
done
