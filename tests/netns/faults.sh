#!/usr/bin/env bash
# Faults against a cluster spread over network hosts: 3 metadata nodes, 4 storage servers and 2
# clients, each in its own network namespace, joined by a bridge that lives in a namespace of
# its own (nothing is added to the machine's own network). While both clients keep writing
# files, it injects one fault after another: the metadata leader partitioned away (nftables
# DROP), packet loss (nftables numgen), kill -9 and restart of the leader and of a storage
# server, SIGSTOP, a storage server's disk filled up, and bytes flipped in stored blocks. After
# each fault it heals and checks: every acknowledged file reads back the same, one leader, the
# metadata nodes converged, every blob back to full protection. Then it prints a table.
#
# Usage (as root): tests/netns/faults.sh [path/to/shoal]   (default: target/release/shoal)
# Exit status: 0 when no acknowledged file was lost or damaged and every check passed.
set -euo pipefail
cd "$(dirname "$0")/../.."
SHOAL=$(realpath "${1:-target/release/shoal}")
[ "$(id -u)" = 0 ] || { echo "faults.sh needs root (network namespaces)" >&2; exit 2; }
command -v nft >/dev/null || { apt-get install -y -qq nftables </dev/null >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nftables; } </dev/null >/dev/null; }

P=shf$$                      # namespace prefix, unique per run
NET=10.77.$(( $$ % 200 + 20 ))
WORK=$(mktemp -d /tmp/shoal-netns.XXXXXX)
DIR=$WORK/cluster
METAS=(m1 m2 m3); STORES=(s1 s2 s3 s4); CLIENTS=(c1 c2)
declare -A IP=([m1]=$NET.11 [m2]=$NET.12 [m3]=$NET.13 [s1]=$NET.21 [s2]=$NET.22 [s3]=$NET.23 [s4]=$NET.24 [c1]=$NET.31 [c2]=$NET.32)
declare -A PROC=([m1]=meta-1 [m2]=meta-2 [m3]=meta-3 [s1]=store-1 [s2]=store-2 [s3]=store-3 [s4]=store-4)
declare -A PID
FAILED=0
ROWS=()

log() { printf '[%6.1fs] %s\n' "$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{print b-a}')" "$*"; }
fail() { log "CHECK FAILED: $*"; FAILED=1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
in_ns() { local h=$1; shift; ip netns exec "$P-$h" "$@"; }
sh_in() { local h=$1; shift; ip netns exec "$P-$h" "$SHOAL" --dir "$DIR" "$@"; }

cleanup() {
  local rc=$?
  set +e
  for h in "${!PID[@]}"; do kill -CONT "${PID[$h]}" 2>/dev/null; kill -9 "${PID[$h]}" 2>/dev/null; done
  for w in "${WRITERS[@]:-}"; do kill "$w" 2>/dev/null; done
  wait 2>/dev/null
  umount "$DIR/store-4" 2>/dev/null
  for h in sw "${METAS[@]}" "${STORES[@]}" "${CLIENTS[@]}"; do ip netns del "$P-$h" 2>/dev/null; done
  if [ "${KEEP:-0}" = 1 ] || [ "$FAILED" != 0 ] || [ "$rc" != 0 ]; then echo "logs kept in $DIR/logs"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# ---- the network: a bridge in namespace sw, one veth per host ----
T0=$(now)
ip netns add "$P-sw"
in_ns sw ip link add br0 type bridge
in_ns sw ip link set br0 up
in_ns sw ip link set lo up
i=0
for h in "${METAS[@]}" "${STORES[@]}" "${CLIENTS[@]}"; do
  i=$((i + 1))
  ip netns add "$P-$h"
  # Both ends are made inside the namespaces: nothing appears in the machine's own network.
  ip link add eth0 netns "$P-$h" type veth peer name "p$i" netns "$P-sw"
  in_ns sw ip link set "p$i" master br0 up
  in_ns "$h" ip link set lo up
  in_ns "$h" ip addr add "${IP[$h]}/24" dev eth0
  in_ns "$h" ip link set eth0 up
done
log "network: 9 hosts on $NET.0/24"

# ---- the cluster ----
maddrs=$(printf '%s,' "${IP[m1]}:7100" "${IP[m2]}:7100" "${IP[m3]}:7100"); maddrs=${maddrs%,}
saddrs=$(printf '%s,' "${IP[s1]}:7200" "${IP[s2]}:7200" "${IP[s3]}:7200" "${IP[s4]}:7200"); saddrs=${saddrs%,}
"$SHOAL" --dir "$DIR" init --meta-addrs "$maddrs" --store-addrs "$saddrs" --scrub-mib-per-s 0 >/dev/null
# store-4's disk: a small file system of its own, to fill up.
mv "$DIR/store-4" "$WORK/store-4.cfg"
mkdir "$DIR/store-4"
mount -t tmpfs -o size=160m tmpfs "$DIR/store-4"
cp -a "$WORK/store-4.cfg/." "$DIR/store-4/"

start() {
  local h=$1 p=${PROC[$1]} role=${PROC[$1]%-*}
  # `ip netns exec` execs the program: $! is the server's own pid.
  ip netns exec "$P-$h" "$SHOAL" "$role" --config "$DIR/$p/$role.toml" </dev/null >>"$DIR/logs/$p.log" 2>&1 &
  PID[$h]=$!
}
for h in "${METAS[@]}" "${STORES[@]}"; do start "$h"; done

status() { sh_in "${1:-c1}" status --json 2>/dev/null; }
jq_() { python3 -c "import json,sys; s=json.load(sys.stdin); print($1)"; }
leader_host() { local l; l=$(status | jq_ 's["leader"]') || return 1; [ "$l" != None ] && echo "m$l"; }

# Healthy: a leader, every metadata node caught up, every storage server alive and checked,
# every blob fully protected.
healthy() {
  status | jq_ 's["leader"] is not None and all(m["matched"] is not None and m["matched"] + 2 >= s["last_applied"] for m in s["members"]) and len(s["members"]) == 3 and all(x["alive"] and not x.get("checking") for x in s["stores"]) and s["blobs_under_replicated"] == 0 and s["blobs_stranded"] == 0' 2>/dev/null | grep -qx True
}
wait_healthy() {
  local deadline=$(( $(date +%s) + ${1:-120} ))
  until healthy; do
    [ "$(date +%s)" -lt "$deadline" ] || { fail "not healthy after ${1:-120}s: $(status | head -c 600)"; return 1; }
    sleep 0.3
  done
}
wait_healthy 90
log "cluster up: 3 metadata nodes, 4 storage servers (store-4 on a 160 MiB disk)"

# ---- the writers: each client puts files in a loop; a put that exits 0 is acknowledged ----
mkdir -p "$WORK/src"
sh_in c1 mkdir /w >/dev/null
LEDGER=$WORK/ledger
: >"$LEDGER"
writer() {
  local c=$1 n=0
  while [ ! -e "$WORK/stop" ]; do
    n=$((n + 1))
    local f="$WORK/src/$c-$n" size=$(( (RANDOM % 8 + 1) * 65536 ))
    head -c "$size" /dev/urandom >"$f"
    if timeout 60 "$SHOAL" --dir "$DIR" put "$f" "/w/$c-$n" >/dev/null 2>>"$WORK/$c.err" </dev/null; then
      echo "$(now) /w/$c-$n $(sha256sum <"$f" | cut -c1-64)" >>"$LEDGER"
    fi
    rm -f "$f"
    sleep 0.25
  done
}
WRITERS=()
for c in "${CLIENTS[@]}"; do
  (ip netns exec "$P-$c" bash -c "$(declare -f writer now); SHOAL=$SHOAL DIR=$DIR WORK=$WORK LEDGER=$LEDGER writer $c") &
  WRITERS+=($!)
done

# The longest time between acknowledged writes in [from, to].
longest_gap() {
  awk -v a="$1" -v b="$2" 'BEGIN{last=a; g=0} $1>=a && $1<=b {d=$1-last; if(d>g)g=d; last=$1} END{d=b-last; if(d>g)g=d; printf "%.1f", g}' "$LEDGER"
}
acked_since() { awk -v a="$1" '$1>=a' "$LEDGER" | wc -l; }

# Acknowledged files read back (from client 2) with their checksums: those from line $1 of the
# ledger on. Prints "checked lost".
verify_from() {
  local checked=0 lost=0
  while read -r _ path sum; do
    checked=$((checked + 1))
    # Lost means unreadable or different three times over: one failed command (its connection
    # refused, say) is not lost data, and its error is logged.
    for attempt in 1 2 3; do
      got=$(sh_in c2 cat "$path" 2>>"$WORK/verify.err" | sha256sum | cut -c1-64) || got=unreadable
      [ "$got" = "$sum" ] && break
      echo "read $attempt of $path failed or differed" >>"$WORK/verify.err"
      sleep 1
    done
    if [ "$got" != "$sum" ]; then lost=$((lost + 1)); echo "LOST: $path" >&2; fi
  done < <(tail -n +"$1" "$LEDGER")
  echo "$checked $lost"
}
VERIFIED=0

# One row: fault, longest write gap during it, heal to healthy, files acknowledged, lost.
run_fault() {
  local name=$1 inject=$2 heal=$3 hold=$4
  local t_in t_heal t_ok
  log "fault: $name"
  t_in=$(now)
  eval "$inject"
  sleep "$hold"
  t_heal=$(now)
  eval "$heal"
  wait_healthy 180 || true
  t_ok=$(now)
  sleep 1
  local upto; upto=$(wc -l <"$LEDGER")
  read -r checked lost < <(verify_from $((VERIFIED + 1)) | tail -1)
  VERIFIED=$upto
  [ "$lost" = 0 ] || fail "$name: $lost acknowledged files lost or damaged"
  ROWS+=("$(printf '%-42s %8s %10s %8s %7s %5s' "$name" "$(longest_gap "$t_in" "$t_heal")" "$(secs "$t_heal" "$t_ok")" "$(acked_since "$t_in")" "$checked" "$lost")")
  log "healed: $name (checked $checked, lost $lost)"
}

drop_all() { in_ns "$1" nft -f - <<EOF
table inet fault {
  chain in { type filter hook input priority 0; iifname != "lo" drop; }
  chain out { type filter hook output priority 0; oifname != "lo" drop; }
}
EOF
}
drop_share() { in_ns "$1" nft -f - <<EOF
table inet fault {
  chain in { type filter hook input priority 0; iifname != "lo" numgen random mod 100 < $2 drop; }
  chain out { type filter hook output priority 0; oifname != "lo" numgen random mod 100 < $2 drop; }
}
EOF
}
undrop() { in_ns "$1" nft delete table inet fault 2>/dev/null || true; }

sleep 5
L=$(leader_host)
run_fault "partition the leader ($L) away" 'drop_all $L' 'undrop $L' 12
run_fault "20% packet loss at a store and a client" 'drop_share s2 20; drop_share c1 20' 'undrop s2; undrop c1' 15
L=$(leader_host)
run_fault "kill -9 the leader ($L), restart" 'kill -9 ${PID[$L]}' 'start $L' 6
run_fault "kill -9 store-3, restart after 8 s" 'kill -9 ${PID[s3]}' 'start s3' 8
run_fault "SIGSTOP store-1 for 8 s" 'kill -STOP ${PID[s1]}' 'kill -CONT ${PID[s1]}' 8
L=$(leader_host)
run_fault "SIGSTOP the leader ($L) for 5 s" 'kill -STOP ${PID[$L]}' 'kill -CONT ${PID[$L]}' 5
run_fault "fill store-4's disk" 'dd if=/dev/zero of=$DIR/store-4/filler bs=1M 2>/dev/null || true' 'rm -f $DIR/store-4/filler' 10
flip() {
  local n=0
  for f in $(find "$DIR/store-2/blobs" -type f -size +100k | head -5); do
    printf '\xff\x00\xff\x00' | dd of="$f" bs=1 seek=$(( $(stat -c %s "$f") - 200 )) conv=notrunc 2>/dev/null
    n=$((n + 1))
  done
  log "flipped bytes in $n blob files on store-2"
}
run_fault "flip bytes in store-2's blocks" 'flip' 'sh_in c2 scrub --wait >/dev/null 2>&1 || fail "shoal scrub --wait failed"' 1

touch "$WORK/stop"
wait "${WRITERS[@]}" 2>/dev/null || true
read -r checked lost < <(verify_from 1)
[ "$lost" = 0 ] || fail "final check: $lost acknowledged files lost or damaged"
echo
printf '%-42s %8s %10s %8s %7s %5s\n' "fault" "gap (s)" "heal (s)" "written" "checked" "lost"
for r in "${ROWS[@]}"; do echo "$r"; done
printf '%-42s %8s %10s %8s %7s %5s\n' "all faults, at the end" "" "" "$(wc -l <"$LEDGER")" "$checked" "$lost"
echo
echo "gap: longest time between acknowledged writes (either client) while the fault lasted."
echo "heal: from healing the fault to one leader, all nodes caught up, every store alive and checked, every blob fully protected."
[ "$FAILED" = 0 ] && echo "faults.sh: no acknowledged write lost" || { echo "faults.sh: FAILED"; exit 1; }
