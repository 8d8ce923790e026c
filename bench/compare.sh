#!/usr/bin/env bash
# Side-by-side benchmark of file systems mounted on this one machine (issue 3):
# a local directory, a bindfs passthrough, MooseFS (goal 3), GlusterFS (replica 3) and Shoal
# (3 copies), all on loopback, with the same tests, sizes and concurrency for each.
# See bench/README.md. Prints a table and ratios, and writes WORK/results.md.
#
#   bench/compare.sh [--work DIR] [--size-mib N] [--files N] [--only shoal,local,...] [--quick]
#                    [--keep] [--report]
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
ALL_SYSTEMS="local,bindfs,moosefs,gluster,shoal"

WORK=/tmp/shoal-compare
SIZE_MIB=""
FILES=""
ONLY=$ALL_SYSTEMS
QUICK=0
KEEP=0
REPORT_ONLY=0

usage() {
  cat <<EOF
usage: $0 [options]
  --work DIR       where every data directory, mount point, log and result goes
                   (default /tmp/shoal-compare; its previous content is removed)
  --size-mib N     size of the sequential / random I/O file (default 1024)
  --files N        files per metadata test (default 10000)
  --only LIST      systems to run, comma-separated, from: $ALL_SYSTEMS (default all)
  --quick          short smoke run: 64 MiB, 1000 files, 200 small files, 3 s random tests
  --keep           keep the data directories (logs and results are always kept)
  --report         only print the tables again from WORK/results.tsv
environment: RUNTIME (s per random I/O test, default 20), SMALL_FILES (default 2000),
  PROCS (metadata processes, default 16), JOBS (random I/O jobs, default 4),
  SHOAL_BIN (default target/release/shoal), TEST_TIMEOUT (s per command, default 1800)
EOF
}

while [ $# -gt 0 ]; do
  case $1 in
    --work) WORK=$2; shift 2 ;;
    --work=*) WORK=${1#*=}; shift ;;
    --size-mib) SIZE_MIB=$2; shift 2 ;;
    --size-mib=*) SIZE_MIB=${1#*=}; shift ;;
    --files) FILES=$2; shift 2 ;;
    --files=*) FILES=${1#*=}; shift ;;
    --only) ONLY=$2; shift 2 ;;
    --only=*) ONLY=${1#*=}; shift ;;
    --quick) QUICK=1; shift ;;
    --keep) KEEP=1; shift ;;
    --report) REPORT_ONLY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done

if [ "$QUICK" = 1 ]; then
  : "${SIZE_MIB:=64}" "${FILES:=1000}" "${SMALL_FILES:=200}" "${RUNTIME:=3}"
fi
: "${SIZE_MIB:=1024}" "${FILES:=10000}" "${SMALL_FILES:=2000}" "${RUNTIME:=20}"
: "${PROCS:=16}" "${JOBS:=4}" "${TEST_TIMEOUT:=1800}"
: "${SHOAL_BIN:=$REPO/target/release/shoal}"
SMALL_BYTES=65536
BUNDLE=$HERE/data/sample.bundle
MFS_CHUNKSERVERS=3
GLUSTER_VOL=shoalcmp
WORK=$(mkdir -p "$WORK" && cd "$WORK" && pwd)
RESULTS=$WORK/results.tsv
LOGS=$WORK/logs

for s in ${ONLY//,/ }; do
  case ",$ALL_SYSTEMS," in *",$s,"*) ;; *) echo "unknown system: $s" >&2; exit 2 ;; esac
done

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$LOGS/run.log" >&2; }

# ---------------------------------------------------------------------------------------------
# The tests: key, label, unit, better (hi: higher is better, lo: lower is better)
# ---------------------------------------------------------------------------------------------
TESTS=()
deftest() { TESTS+=("$1|$2|$3|$4"); }
VARIANTS="1flat ${PROCS}flat 1dirs ${PROCS}dirs"
variant_label() {
  local v=$1 p=${1%%[a-z]*} how=${1##*[0-9]}
  [ "$how" = flat ] && how="flat" || how="100 dirs"
  [ "$p" = 1 ] && echo "1 proc, $how" || echo "$p procs, $how"
}
define_tests() {
  TESTS=()
  deftest seq_write "Seq write $SIZE_MIB MiB, 1 MiB blocks, final fsync" MiB/s hi
  deftest seq_read "Seq read $SIZE_MIB MiB, cold" MiB/s hi
  deftest reread "Re-read $SIZE_MIB MiB, cached" MiB/s hi
  deftest rr1 "Rand read 4k O_DIRECT, 1 job" IOPS hi
  deftest rr$JOBS "Rand read 4k O_DIRECT, $JOBS jobs" IOPS hi
  deftest rw1 "Rand write 4k O_DIRECT + final fsync, 1 job" IOPS hi
  deftest rw$JOBS "Rand write 4k O_DIRECT + final fsync, $JOBS jobs" IOPS hi
  local v l
  for v in $VARIANTS; do
    l=$(variant_label "$v")
    deftest "create_$v" "Create $FILES files, $l" ops/s hi
    deftest "statc_$v" "Stat uncached, $l" ops/s hi
    deftest "statw_$v" "Stat cached, $l" ops/s hi
    deftest "rename_$v" "Rename, $l" ops/s hi
    deftest "unlink_$v" "Unlink, $l" ops/s hi
  done
  deftest sfw1 "$SMALL_FILES x 64 KiB files: write to close, 1 proc" files/s hi
  deftest "sfw$PROCS" "$SMALL_FILES x 64 KiB files: write to close, $PROCS procs" files/s hi
  deftest sfr1 "$SMALL_FILES x 64 KiB files: read cold, 1 proc" files/s hi
  deftest "sfr$PROCS" "$SMALL_FILES x 64 KiB files: read cold, $PROCS procs" files/s hi
  deftest git "git clone of bench/data/sample.bundle" s lo
}
define_tests

record() { # record KEY SYSTEM VALUE
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$RESULTS"
}

# ---------------------------------------------------------------------------------------------
# The report (also usable alone with --report)
# ---------------------------------------------------------------------------------------------
report() {
  local tests_file=$WORK/tests.tsv
  printf '%s\n' "${TESTS[@]}" | tr '|' '\t' > "$tests_file"
  {
    echo "# Shoal compared with local, bindfs, MooseFS and GlusterFS"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(free -g | awk '/^Mem:/{print $2}') GiB;" \
      "size $SIZE_MIB MiB, $FILES files per metadata test, $SMALL_FILES small files," \
      "$RUNTIME s per random test, $PROCS metadata processes, $JOBS random I/O jobs."
    [ -s "$WORK/versions.txt" ] && { echo; sed 's/^/- /' "$WORK/versions.txt"; }
    [ -s "$WORK/notes.txt" ] && { echo; echo "Notes:"; sed 's/^/- /' "$WORK/notes.txt"; }
  } > "$WORK/header.md"
  python3 - "$tests_file" "$RESULTS" "$WORK/results.md" "$WORK/header.md" "$ALL_SYSTEMS" <<'PY'
import sys
tests_file, results_file, md_file, header_file, all_systems = sys.argv[1:6]
tests = [l.rstrip("\n").split("\t") for l in open(tests_file) if l.strip()]
res = {}
order = []
try:
    for l in open(results_file):
        k, s, v = l.rstrip("\n").split("\t")
        res[(k, s)] = v
        if s not in order:
            order.append(s)
except FileNotFoundError:
    pass
names = {"local": "local", "bindfs": "bindfs", "moosefs": "MooseFS", "gluster": "GlusterFS", "shoal": "Shoal"}
systems = [s for s in all_systems.split(",") if s in order]
peers = [s for s in ("moosefs", "gluster") if s in systems]

def num(k, s):
    try:
        return float(res.get((k, s), ""))
    except ValueError:
        return None

def fmt(v, unit):
    if v is None:
        return None
    if unit == "s":
        return f"{v:.2f} s"
    if v >= 100000:
        s = f"{v/1000:.0f}k"
    elif v >= 10000:
        s = f"{v/1000:.1f}k"
    elif v >= 100:
        s = f"{v:.0f}"
    else:
        s = f"{v:.1f}"
    return f"{s} {unit}"

def cell(k, s, unit):
    v = num(k, s)
    if v is not None:
        return fmt(v, unit)
    return res.get((k, s), "-") or "-"

def ratio(k, a, b, better):
    x, y = num(k, a), num(k, b)
    if x is None or y is None or x <= 0 or y <= 0:
        return None
    return x / y if better == "hi" else y / x

def best_peer(k, better):
    vals = [(num(k, p), p) for p in peers if num(k, p) is not None and num(k, p) > 0]
    if not vals:
        return None
    return (max if better == "hi" else min)(vals)[1]

def rstr(r):
    return "-" if r is None else f"{r:.2f}x"

def table(head, rows):
    w = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(w[i]) if i == 0 else str(c).rjust(w[i]) for i, c in enumerate(r))
    out = [line(head), "  ".join("-" * x for x in w)] + [line(r) for r in rows]
    md = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    md += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out), "\n".join(md)

head = ["test"] + [names[s] for s in systems]
rows = [[label] + [cell(k, s, unit) for s in systems] for k, label, unit, better in tests]
t1, m1 = table(head, rows)

t2 = m2 = ""
if "shoal" in systems and len(systems) > 1:
    cols = [("best peer", lambda k, b: (lambda p: ratio(k, "shoal", p, b) if p else None)(best_peer(k, b)))]
    for s in ("moosefs", "gluster", "local", "bindfs"):
        if s in systems:
            cols.append((names[s], lambda k, b, s=s: ratio(k, "shoal", s, b)))
    head2 = ["Shoal / ..."] + [c[0] for c in cols] + ["best peer is"]
    rows2 = []
    for k, label, unit, better in tests:
        bp = best_peer(k, better)
        rows2.append([label] + [rstr(f(k, better)) for _, f in cols] + [names[bp] if bp else "-"])
    t2, m2 = table(head2, rows2)

# the musts and goals of issue 3, checked against what was measured
checks = []
def chk(kind, what, keys, other, target):
    for k in keys:
        label = next((t[1] for t in tests if t[0] == k), k)
        better = next((t[3] for t in tests if t[0] == k), "hi")
        if other == "best peer":
            p = best_peer(k, better)
            r = ratio(k, "shoal", p, better) if p else None
        elif other == "absolute":
            r = num(k, "shoal")
        else:
            r = ratio(k, "shoal", other, better)
        if r is None:
            verdict, got = "n/a", "-"
        else:
            verdict = "ok" if r >= target else "MISSED"
            got = f"{r:,.0f}/s" if other == "absolute" else f"{r:.2f}x"
        want = f"{target:,.0f}/s" if other == "absolute" else f"{target:g}x {names.get(other, other)}"
        checks.append([kind, label, want, got, verdict])

if "shoal" in systems and len(systems) > 1:
    V = [v for v in tests if v[0].startswith("create_")]
    variants = [t[0][len("create_"):] for t in V]
    many = [v for v in variants if int("".join(c for c in v if c.isdigit())) > 1]
    chk("must", "seq write", ["seq_write"], "best peer", 1.0)
    chk("must", "seq read", ["seq_read"], "best peer", 1.2)
    chk("must", "random 4k", [t[0] for t in tests if t[0][:2] in ("rr", "rw")], "moosefs", 1.0)
    chk("must", "64 KiB files", [t[0] for t in tests if t[0].startswith("sf")], "moosefs", 1.0)
    chk("must", "creates", ["create_" + v for v in many], "moosefs", 1.0)
    chk("must", "creates", ["create_" + v for v in many], "gluster", 10.0)
    chk("must", "uncached stats", ["statc_" + v for v in variants], "moosefs", 1.0)
    chk("must", "git clone", ["git"], "moosefs", 1.0)
    chk("goal", "cached stats", ["statw_" + v for v in variants], "absolute", 100000)
    chk("goal", "cached re-read", ["reread"], "bindfs", 0.8)
    rs = []
    for k, label, unit, better in tests:
        p = best_peer(k, better)
        r = ratio(k, "shoal", p, better) if p else None
        if r is not None:
            rs.append(r)
    if rs:
        n = sum(r >= 1.5 for r in rs)
        checks.append(["goal", "every test", "1.5x best peer",
                       f"{n} of {len(rs)} (min {min(rs):.2f}x)", "ok" if n == len(rs) else "MISSED"])
t3, m3 = table(["", "test", "target", "Shoal", "verdict"], checks) if checks else ("", "")

print("\nResults (higher is better, except seconds)\n")
print(t1)
if t2:
    print("\nRatios (Shoal / other; for times other / Shoal, so above 1 is Shoal ahead)\n")
    print(t2)
if t3:
    print("\nIssue 3 musts and goals\n")
    print(t3)
with open(md_file, "w") as f:
    f.write(open(header_file).read())
    f.write("\n## Results (higher is better, except seconds)\n\n" + m1 + "\n")
    if m2:
        f.write("\n## Ratios (Shoal / other; for times other / Shoal, so above 1 is Shoal ahead)\n\n" + m2 + "\n")
    if m3:
        f.write("\n## Issue 3 musts and goals\n\n" + m3 + "\n")
print(f"\nwritten: {md_file}")
PY
}

if [ "$REPORT_ONLY" = 1 ]; then
  [ -f "$RESULTS" ] || { echo "no $RESULTS" >&2; exit 1; }
  # shellcheck disable=SC1091
  [ -f "$WORK/params.sh" ] && . "$WORK/params.sh"
  VARIANTS="1flat ${PROCS}flat 1dirs ${PROCS}dirs"
  define_tests
  report
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# Setup of the machine
# ---------------------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || { echo "run as root (mounts, daemons, drop_caches)" >&2; exit 1; }

# A previous run's leftovers in WORK: unmount what is still mounted there, then start afresh.
for m in $(awk -v w="$WORK/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r); do
  umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
done
# Daemons a killed run left: stop them with the teardown functions (defined below).
leftovers() {
  [ -d "$WORK/moosefs" ] && { MFS=$WORK/moosefs; moosefs_teardown; }
  [ -f "$WORK/gluster/glusterd.pid" ] && { GL=$WORK/gluster; gluster_teardown; }
  [ -x "$WORK/bin/shoal" ] && [ -d "$WORK/shoal/cluster" ] && { SHOAL=$WORK/bin/shoal; SH=$WORK/shoal; shoal_teardown; }
  return 0
}
rm -rf "$LOGS" "$RESULTS" "$WORK"/{notes,versions}.txt "$WORK/results.md"
mkdir -p "$LOGS" "$WORK/bin"
: > "$RESULTS"
: > "$WORK/notes.txt"
: > "$WORK/versions.txt"
printf 'SIZE_MIB=%q FILES=%q SMALL_FILES=%q RUNTIME=%q PROCS=%q JOBS=%q\n' \
  "$SIZE_MIB" "$FILES" "$SMALL_FILES" "$RUNTIME" "$PROCS" "$JOBS" > "$WORK/params.sh"
note() { echo "$*" >> "$WORK/notes.txt"; log "NOTE: $*"; }

apt_updated=0
need() { # need COMMAND PACKAGE...: installs the packages if COMMAND is missing
  local cmd=$1; shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  log "installing $* (for $cmd)"
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq >> "$LOGS/apt.log" 2>&1; apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >> "$LOGS/apt.log" 2>&1
  command -v "$cmd" >/dev/null 2>&1
}
wants() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

need fio fio || { echo "cannot install fio" >&2; exit 1; }
need gcc gcc || { echo "cannot install gcc" >&2; exit 1; }
need git git || { echo "cannot install git" >&2; exit 1; }
need python3 python3 || { echo "cannot install python3" >&2; exit 1; }
need fusermount fuse3 || need fusermount fuse || true
[ -f "$BUNDLE" ] || { log "no $BUNDLE: making it"; bash "$HERE/make_bundle.sh" "$BUNDLE" >> "$LOGS/bundle.log" 2>&1; }

META_BENCH=$WORK/bin/meta_bench

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# ---------------------------------------------------------------------------------------------
# The systems: SYS_setup (mounts at $WORK/SYS/mnt), SYS_remount, SYS_teardown (idempotent)
# ---------------------------------------------------------------------------------------------
mnt_of() { echo "$WORK/$1/mnt"; }
is_mounted() { mountpoint -q "$1" 2>/dev/null; }
unmount() { # unmount MNT, lazily if it stays busy
  local m=$1 i
  is_mounted "$m" || return 0
  for i in 1 2 3 4 5; do
    umount "$m" 2>/dev/null && return 0
    sleep 1
  done
  umount -l "$m" 2>/dev/null || fusermount -uz "$m" 2>/dev/null || true
}
kill_pidfile() { # kill the process whose pid a file holds; waits up to $2 s (default 30)
  local f=$1 t=${2:-30} pid i
  [ -f "$f" ] || return 0
  pid=$(tr -dc '0-9' < "$f")
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || return 0
  for ((i = 0; i < t * 10; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

# --- local ext4 (or whatever holds WORK)
local_setup() { mkdir -p "$(mnt_of local)"; echo "local: $(df -T "$WORK" | awk 'NR==2{print $2}') at $WORK" >> "$WORK/versions.txt"; }
local_remount() { :; }
local_teardown() { :; }

# --- bindfs passthrough over a local directory
bindfs_setup() {
  need bindfs bindfs || { echo "bindfs cannot be installed"; return 1; }
  mkdir -p "$WORK/bindfs/src" "$(mnt_of bindfs)"
  bindfs -o big_writes "$WORK/bindfs/src" "$(mnt_of bindfs)" || return 1
  echo "bindfs $(bindfs --version 2>&1 | awk '{print $2; exit}') -o big_writes" >> "$WORK/versions.txt"
}
bindfs_remount() { unmount "$(mnt_of bindfs)"; bindfs -o big_writes "$WORK/bindfs/src" "$(mnt_of bindfs)"; }
bindfs_teardown() { unmount "$(mnt_of bindfs)"; }

# --- MooseFS: one master, 3 chunkservers, goal 3, all on loopback
MFS=""
mfs_port_free() { ! ss -ltn | awk '{print $4}' | grep -qE ":($1)\$"; }
moosefs_setup() {
  need mfsmaster moosefs-master moosefs-chunkserver moosefs-client moosefs-cli || { echo "MooseFS packages cannot be installed"; return 1; }
  need mfschunkserver moosefs-chunkserver || return 1
  need mfsmount moosefs-client || return 1
  need mfssetgoal moosefs-client || return 1
  local ports="9419|9420|9421" i
  for ((i = 1; i <= MFS_CHUNKSERVERS; i++)); do ports="$ports|$((9422 + i))"; done
  mfs_port_free "$ports" || { echo "MooseFS ports ($ports) are taken"; return 1; }
  MFS=$WORK/moosefs
  mkdir -p "$MFS/master" "$(mnt_of moosefs)"
  cp /var/lib/mfs/metadata.mfs.empty "$MFS/master/metadata.mfs" || return 1
  echo '*  /  rw,alldirs,admin,maproot=0:0' > "$MFS/mfsexports.cfg"
  : > "$MFS/mfstopology.cfg"
  cat > "$MFS/mfsmaster.cfg" <<EOF
WORKING_USER = root
WORKING_GROUP = root
DATA_PATH = $MFS/master
EXPORTS_FILENAME = $MFS/mfsexports.cfg
TOPOLOGY_FILENAME = $MFS/mfstopology.cfg
MATOML_LISTEN_HOST = 127.0.0.1
MATOCS_LISTEN_HOST = 127.0.0.1
MATOCL_LISTEN_HOST = 127.0.0.1
REMAP_BITS = 32
REMAP_SOURCE_IP_CLASS = 127.0.0.1
REMAP_DESTINATION_IP_CLASS = 0.0.0.0
EOF
  mfsmaster -c "$MFS/mfsmaster.cfg" start >> "$LOGS/moosefs.log" 2>&1 || { echo "mfsmaster did not start (see $LOGS/moosefs.log)"; return 1; }
  for ((i = 1; i <= MFS_CHUNKSERVERS; i++)); do
    mkdir -p "$MFS/cs$i/hdd"
    echo "$MFS/cs$i/hdd" > "$MFS/cs$i/mfshdd.cfg"
    cat > "$MFS/cs$i/mfschunkserver.cfg" <<EOF
WORKING_USER = root
WORKING_GROUP = root
DATA_PATH = $MFS/cs$i
HDD_CONF_FILENAME = $MFS/cs$i/mfshdd.cfg
HDD_LEAVE_SPACE_DEFAULT = 1GiB
MASTER_HOST = 0.0.0.0
MASTER_PORT = 9420
CSSERV_LISTEN_HOST = 127.0.0.1
CSSERV_LISTEN_PORT = $((9422 + i))
EOF
    mfschunkserver -c "$MFS/cs$i/mfschunkserver.cfg" start >> "$LOGS/moosefs.log" 2>&1 || { echo "mfschunkserver $i did not start (see $LOGS/moosefs.log)"; return 1; }
  done
  local n=0
  for ((i = 0; i < 60; i++)); do
    n=$(mfscli -H 127.0.0.1 -P 9421 -SCS -s '|' 2>/dev/null | grep -c '^chunk servers:|')
    [ "$n" -ge "$MFS_CHUNKSERVERS" ] && break
    sleep 1
  done
  [ "$n" -ge "$MFS_CHUNKSERVERS" ] || { echo "only $n of $MFS_CHUNKSERVERS chunkservers registered with the master"; return 1; }
  mfsmount "$(mnt_of moosefs)" -H 127.0.0.1 -P 9421 >> "$LOGS/moosefs.log" 2>&1 || { echo "mfsmount failed"; return 1; }
  mfssetgoal -r 3 "$(mnt_of moosefs)" >> "$LOGS/moosefs.log" 2>&1 || { echo "mfssetgoal 3 failed"; return 1; }
  mfsgetgoal "$(mnt_of moosefs)" 2>/dev/null | grep -q ': 3$' || { echo "the goal of the mount is not 3"; return 1; }
  echo "MooseFS $(mfsmaster -v 2>&1 | awk '{print $2; exit}'): 1 master, $MFS_CHUNKSERVERS chunkservers, goal 3, default mount options" >> "$WORK/versions.txt"
}
moosefs_remount() {
  unmount "$(mnt_of moosefs)"
  mfsmount "$(mnt_of moosefs)" -H 127.0.0.1 -P 9421 >> "$LOGS/moosefs.log" 2>&1
}
moosefs_teardown() {
  [ -n "$MFS" ] || return 0
  unmount "$(mnt_of moosefs)"
  local i
  # "stop" waits for the daemon to finish; chunkservers in parallel, then the master
  for ((i = 1; i <= MFS_CHUNKSERVERS; i++)); do
    [ -f "$MFS/cs$i/mfschunkserver.cfg" ] && timeout 60 mfschunkserver -c "$MFS/cs$i/mfschunkserver.cfg" stop >> "$LOGS/moosefs.log" 2>&1 &
  done
  wait
  [ -f "$MFS/mfsmaster.cfg" ] && timeout 60 mfsmaster -c "$MFS/mfsmaster.cfg" stop >> "$LOGS/moosefs.log" 2>&1
  for ((i = 1; i <= MFS_CHUNKSERVERS; i++)); do kill_pidfile "$MFS/cs$i/.mfschunkserver.lock" 5; done
  kill_pidfile "$MFS/master/.mfsmaster.lock" 5
  MFS=""
}

# --- GlusterFS: glusterd bound to 127.0.0.1, one replica 3 volume of 3 bricks
GL=""
GL_HOST=""
gluster_setup() {
  need glusterd glusterfs-server glusterfs-client || { echo "GlusterFS packages cannot be installed"; return 1; }
  need mount.glusterfs glusterfs-client || return 1
  ss -ltn | awk '{print $4}' | grep -qE ':24007$' && { echo "port 24007 is taken (another glusterd?)"; return 1; }
  GL=$WORK/gluster
  mkdir -p "$GL/glusterd" "$GL/bricks" "$(mnt_of gluster)"
  # The CLI refuses localhost and 127.0.0.1 as brick hosts: the host name if it resolves to
  # loopback, else 127.1.
  GL_HOST=$(hostname)
  case $(getent ahostsv4 "$GL_HOST" 2>/dev/null | awk 'NR==1{print $1}') in 127.*) ;; *) GL_HOST=127.1 ;; esac
  cat > "$GL/glusterd.vol" <<EOF
volume management
    type mgmt/glusterd
    option working-directory $GL/glusterd
    option transport-type socket
    option transport.socket.bind-address 127.0.0.1
    option transport.socket.keepalive-time 10
    option transport.socket.keepalive-interval 2
    option transport.socket.read-fail-log off
    option transport.socket.listen-port 24007
    option ping-timeout 0
    option event-threads 1
    option max-port 60999
end-volume
EOF
  glusterd -f "$GL/glusterd.vol" -p "$GL/glusterd.pid" -l "$LOGS/glusterd.log" >> "$LOGS/gluster.log" 2>&1 || { echo "glusterd did not start"; return 1; }
  local i
  for ((i = 0; i < 30; i++)); do
    gluster --mode=script volume list >/dev/null 2>&1 && break
    sleep 1
  done
  gluster --mode=script volume create "$GLUSTER_VOL" replica 3 \
    "$GL_HOST:$GL/bricks/b1" "$GL_HOST:$GL/bricks/b2" "$GL_HOST:$GL/bricks/b3" force >> "$LOGS/gluster.log" 2>&1 \
    || { echo "gluster volume create failed (see $LOGS/gluster.log)"; return 1; }
  gluster --mode=script volume start "$GLUSTER_VOL" force >> "$LOGS/gluster.log" 2>&1 || { echo "gluster volume start failed"; return 1; }
  mount -t glusterfs "$GL_HOST:/$GLUSTER_VOL" "$(mnt_of gluster)" >> "$LOGS/gluster.log" 2>&1 || { echo "mount -t glusterfs failed"; return 1; }
  echo "GlusterFS $(glusterfs --version 2>&1 | awk 'NR==1{print $2}'): replica 3 on 3 bricks, default volume options" >> "$WORK/versions.txt"
}
gluster_remount() {
  unmount "$(mnt_of gluster)"
  mount -t glusterfs "$GL_HOST:/$GLUSTER_VOL" "$(mnt_of gluster)" >> "$LOGS/gluster.log" 2>&1
}
gluster_teardown() {
  [ -n "$GL" ] || return 0
  unmount "$(mnt_of gluster)"
  # Stopping a volume can take a minute; the data is thrown away, so end the volume's
  # processes (by the pids glusterd reports) and glusterd itself.
  local pids p i f
  pids=$(timeout 30 gluster --mode=script volume status "$GLUSTER_VOL" 2>/dev/null |
    awk '$NF ~ /^[0-9]+$/ && ($1 == "Brick" || $1 == "Self-heal") {print $NF}')
  # and the pid files glusterd gave the bricks and the self-heal daemon (it writes them under
  # /var/run/gluster whatever its working directory), if the process is still ours
  for f in /var/run/gluster/vols/"$GLUSTER_VOL"/*.pid /var/run/gluster/shd/"$GLUSTER_VOL"/*.pid; do
    [ -f "$f" ] || continue
    p=$(tr -dc '0-9' < "$f")
    [ -n "$p" ] && tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q -- "$GLUSTER_VOL" && pids="$pids $p"
  done
  pids=$(echo $pids | tr ' ' '\n' | sort -u)
  for p in $pids; do kill "$p" 2>/dev/null; done
  kill_pidfile "$GL/glusterd.pid" 20
  for ((i = 0; i < 100; i++)); do
    local alive=0
    for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in $pids; do kill -9 "$p" 2>/dev/null; done
  GL=""
}

# --- Shoal: 3 metadata + 4 storage processes, 3 copies (the defaults of `shoal init`)
SH=""
SHOAL=""
shoal_setup() {
  local i
  for ((i = 0; i < 60; i++)); do [ -x "$SHOAL_BIN" ] && break; sleep 2; done
  [ -x "$SHOAL_BIN" ] || { echo "no Shoal binary at $SHOAL_BIN"; return 1; }
  # a copy, so that a rebuild of target/ during the run changes nothing
  cp "$SHOAL_BIN" "$WORK/bin/shoal" || return 1
  SHOAL=$WORK/bin/shoal
  SH=$WORK/shoal
  mkdir -p "$(mnt_of shoal)"
  "$SHOAL" --dir "$SH/cluster" init >> "$LOGS/shoal.log" 2>&1 || { echo "shoal init failed"; return 1; }
  "$SHOAL" --dir "$SH/cluster" up --detach >> "$LOGS/shoal.log" 2>&1 || { echo "shoal up failed (see $LOGS/shoal.log)"; return 1; }
  "$SHOAL" --dir "$SH/cluster" mount "$(mnt_of shoal)" >> "$LOGS/shoal.log" 2>&1 || { echo "shoal mount failed"; return 1; }
  local rev
  rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)
  git -C "$REPO" diff --quiet HEAD -- crates 2>/dev/null || rev="$rev+uncommitted changes"
  echo "Shoal $("$SHOAL" --version 2>&1 | awk '{print $2}') ($rev, binary of $(date -u -r "$SHOAL_BIN" '+%Y-%m-%d %H:%M UTC')): 3 metadata + 4 storage processes, 3 copies" >> "$WORK/versions.txt"
}
shoal_remount() {
  "$SHOAL" umount "$(mnt_of shoal)" >> "$LOGS/shoal.log" 2>&1 || unmount "$(mnt_of shoal)"
  "$SHOAL" --dir "$SH/cluster" mount "$(mnt_of shoal)" >> "$LOGS/shoal.log" 2>&1
}
shoal_teardown() {
  [ -n "$SH" ] || return 0
  if is_mounted "$(mnt_of shoal)"; then
    timeout 120 "$SHOAL" umount "$(mnt_of shoal)" >> "$LOGS/shoal.log" 2>&1 || unmount "$(mnt_of shoal)"
  fi
  timeout 120 "$SHOAL" --dir "$SH/cluster" down >> "$LOGS/shoal.log" 2>&1
  [ -d "$SH/cluster/logs" ] && cp -r "$SH/cluster/logs" "$LOGS/shoal-cluster-logs" 2>/dev/null
  # whatever `down` left behind: the pids it recorded
  local f
  for f in "$SH/cluster/pids/"*; do [ -f "$f" ] && kill_pidfile "$f" 5; done
  SH=""
}

leftovers > /dev/null 2>&1
rm -rf "$WORK"/{local,bindfs,moosefs,gluster,shoal} "$WORK"/bin/*
gcc -O2 -Wall -o "$META_BENCH" "$HERE/meta_bench.c" || { echo "cannot compile meta_bench.c" >&2; exit 1; }

CURRENT=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  exec 1>&3 2>&4
  if [ -n "$CURRENT" ]; then
    log "cleaning up $CURRENT"
    "${CURRENT}_teardown" 2>/dev/null
    CURRENT=""
  fi
  # the data goes at the end (a GlusterFS brick takes minutes to delete; not while measuring)
  if [ "$KEEP" = 0 ]; then
    log "removing the data directories"
    rm -rf "$WORK"/{local,bindfs,moosefs,gluster,shoal} 2>/dev/null
  fi
  exit "$rc"
}
exec 3>&1 4>&2   # the terminal, for the traps (which may run inside a redirected command)
trap cleanup EXIT
on_signal() {
  exec 1>&3 2>&4
  log "interrupted"
  [ -n "$CHILD" ] && kill -TERM "$CHILD" 2>/dev/null && wait "$CHILD" 2>/dev/null
  exit 130
}
trap on_signal INT TERM

# ---------------------------------------------------------------------------------------------
# The tests on one mounted system
# ---------------------------------------------------------------------------------------------
SYS=""
MNT=""
CHILD=""
guarded() { # guarded CMD...: with a time limit, in the background so that a signal stops it at once
  timeout -k 10 "$TEST_TIMEOUT" "$@" &
  CHILD=$!
  wait "$CHILD"
  local rc=$?
  CHILD=""
  return "$rc"
}
cold() { # nothing cached anywhere on this machine: the client mount is new, the kernel's caches dropped
  sync -f "$MNT" 2>/dev/null
  "${SYS}_remount" || { log "[$SYS] remount failed"; return 1; }
  drop_caches
}
put() { # put KEY VALUE UNIT
  record "$1" "$SYS" "$2"
  log "[$SYS] $1: $2 $3"
}

fio_json() { # fio_json NAME FIO-ARGS... -> JSON in $LOGS/SYS-NAME.json
  local name=$1; shift
  guarded fio --name="$name" --ioengine=psync --output-format=json \
    --output="$LOGS/$SYS-$name.json" "$@" > "$LOGS/$SYS-$name.out" 2>&1
}
fio_get() { # fio_get NAME bw|iops RW: summed over the jobs, per second of the longest job
  python3 - "$LOGS/$SYS-$1.json" "$2" "$3" <<'PY'
import json, sys
path, what, rw = sys.argv[1:4]
txt = open(path).read()
d = json.loads(txt[txt.index("{"):])
jobs = d["jobs"]
if any(j.get("error") for j in jobs):
    sys.exit(1)
secs = max(j["job_runtime"] for j in jobs) / 1000.0
if secs <= 0:
    sys.exit(1)
if what == "bw":
    print(f'{sum(j[rw]["io_bytes"] for j in jobs) / 1048576 / secs:.1f}')
else:
    print(f'{sum(j[rw]["total_ios"] for j in jobs) / secs:.1f}')
PY
}
fio_test() { # fio_test KEY UNIT bw|iops read|write FIO-ARGS...
  local key=$1 unit=$2 what=$3 rw=$4 v; shift 4
  if fio_json "$key" "$@" && v=$(fio_get "$key" "$what" "$rw"); then
    put "$key" "$v" "$unit"
  else
    put "$key" err "$unit"
    log "[$SYS] $key failed: $(tail -3 "$LOGS/$SYS-$key.out" | tr '\n' ' ')"
  fi
}

meta_value() { # meta_value OUTFILE PHASE NTH -> ops/s of the NTH line of PHASE, if no errors
  awk -v p="$2" -v n="$3" '$1 == p && ++seen == n { if ($5 == 0) print $4; else print "err"; exit }' "$1"
}

test_io() {
  local f=$MNT/seq.dat
  fio_test seq_write MiB/s bw write --filename="$f" --rw=write --bs=1M --size="${SIZE_MIB}M" --end_fsync=1
  cold
  fio_test seq_read MiB/s bw read --filename="$f" --rw=read --bs=1M --size="${SIZE_MIB}M"
  fio_test reread MiB/s bw read --filename="$f" --rw=read --bs=1M --size="${SIZE_MIB}M"
  cold
  local rnd="--filename=$f --size=${SIZE_MIB}M --bs=4k --direct=1 --time_based --runtime=$RUNTIME --norandommap --randrepeat=0"
  # shellcheck disable=SC2086
  fio_test rr1 IOPS iops read $rnd --rw=randread --numjobs=1
  # shellcheck disable=SC2086
  fio_test "rr$JOBS" IOPS iops read $rnd --rw=randread --numjobs="$JOBS"
  # shellcheck disable=SC2086
  fio_test rw1 IOPS iops write $rnd --rw=randwrite --numjobs=1 --end_fsync=1
  # shellcheck disable=SC2086
  fio_test "rw$JOBS" IOPS iops write $rnd --rw=randwrite --numjobs="$JOBS" --end_fsync=1
  rm -f "$f"
}

test_meta() {
  local v p d dir out1 out2 key
  for v in $VARIANTS; do
    p=${v%%[a-z]*}
    case $v in *flat) d=0 ;; *) d=100 ;; esac
    dir=$MNT/meta-$v
    mkdir -p "$dir"
    out1=$LOGS/$SYS-meta-$v-1.out
    out2=$LOGS/$SYS-meta-$v-2.out
    guarded "$META_BENCH" -p "$p" -n "$FILES" -d "$d" "$dir" mkdirs create > "$out1" 2> "$out1.err"
    cold
    guarded "$META_BENCH" -p "$p" -n "$FILES" -d "$d" "$dir" stat stat rename unlink rmdirs > "$out2" 2> "$out2.err"
    put "create_$v" "$(meta_value "$out1" create 1)" ops/s
    put "statc_$v" "$(meta_value "$out2" stat 1)" ops/s
    put "statw_$v" "$(meta_value "$out2" stat 2)" ops/s
    put "rename_$v" "$(meta_value "$out2" rename 1)" ops/s
    put "unlink_$v" "$(meta_value "$out2" unlink 1)" ops/s
    for key in "$out1.err" "$out2.err"; do
      [ -s "$key" ] && log "[$SYS] meta $v: $(head -3 "$key" | tr '\n' ' ')"
    done
    rm -rf "$dir"
  done
}

test_small() {
  local a=$MNT/small-1 b=$MNT/small-$PROCS o=$LOGS/$SYS-small
  mkdir -p "$a" "$b"
  guarded "$META_BENCH" -p 1 -n "$SMALL_FILES" -s "$SMALL_BYTES" "$a" write > "$o-w1.out" 2> "$o-w1.err"
  put sfw1 "$(meta_value "$o-w1.out" write 1)" files/s
  guarded "$META_BENCH" -p "$PROCS" -n "$SMALL_FILES" -s "$SMALL_BYTES" "$b" write > "$o-w$PROCS.out" 2> "$o-w$PROCS.err"
  put "sfw$PROCS" "$(meta_value "$o-w$PROCS.out" write 1)" files/s
  cold
  guarded "$META_BENCH" -p 1 -n "$SMALL_FILES" -s "$SMALL_BYTES" "$a" read > "$o-r1.out" 2> "$o-r1.err"
  put sfr1 "$(meta_value "$o-r1.out" read 1)" files/s
  guarded "$META_BENCH" -p "$PROCS" -n "$SMALL_FILES" -s "$SMALL_BYTES" "$b" read > "$o-r$PROCS.out" 2> "$o-r$PROCS.err"
  put "sfr$PROCS" "$(meta_value "$o-r$PROCS.out" read 1)" files/s
  local e
  for e in "$o"-*.err; do [ -s "$e" ] && log "[$SYS] small files: $(head -3 "$e" | tr '\n' ' ')"; done
  rm -rf "$a" "$b"
}

test_git() {
  local dst=$MNT/clone t0 t1 n
  rm -rf "$dst"
  drop_caches
  t0=$(date +%s.%N)
  if guarded git clone -q "$BUNDLE" "$dst" > "$LOGS/$SYS-git.out" 2>&1; then
    t1=$(date +%s.%N)
    n=$(git -c safe.directory='*' -C "$dst" rev-list --count HEAD 2>/dev/null)
    if [ -n "$n" ] && [ "$n" -gt 0 ] && git -c safe.directory='*' -C "$dst" diff --quiet HEAD 2>/dev/null; then
      put git "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b - a}')" s
    else
      put git err s; log "[$SYS] the clone does not check out clean"
    fi
  else
    put git err s; log "[$SYS] git clone failed: $(tail -2 "$LOGS/$SYS-git.out" | tr '\n' ' ')"
  fi
  rm -rf "$dst"
}

# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
RUN_START=$(date +%s)
log "work directory $WORK; systems: $ONLY; size $SIZE_MIB MiB, $FILES files, $SMALL_FILES small files, random tests $RUNTIME s"
busy=$(ps -eo comm= | grep -cE '^(rustc|cargo|cc1|ld)$')
load=$(cut -d' ' -f1 /proc/loadavg)
log "load average $load$([ "$busy" -gt 0 ] && echo ", $busy compiler processes running: figures will be lower and noisier")"
[ "$busy" -gt 0 ] && note "$busy compiler processes were running when the run started (load $load)"
echo "kernel $(uname -r), fio $(fio --version | sed 's/^fio-//'), git $(git --version | awk '{print $3}')" >> "$WORK/versions.txt"

for SYS in ${ALL_SYSTEMS//,/ }; do
  wants "$SYS" || continue
  MNT=$(mnt_of "$SYS")
  log "[$SYS] setting up"
  CURRENT=$SYS
  why=""
  if ! "${SYS}_setup" > "$LOGS/$SYS-setup.out" 2>&1; then
    why=$(tail -1 "$LOGS/$SYS-setup.out")
    [ -n "$why" ] || why="setup failed"
  elif [ "$SYS" != local ] && ! is_mounted "$MNT"; then
    why="nothing mounted at $MNT after the setup"
  fi
  if [ -n "$why" ]; then
    note "$SYS skipped: $why"
    "${SYS}_teardown" > /dev/null 2>&1
    CURRENT=""
    for t in "${TESTS[@]}"; do record "${t%%|*}" "$SYS" "n/a"; done
    continue
  fi
  started=$(date +%s)
  load=$(cut -d' ' -f1 /proc/loadavg)
  awk -v l="$load" 'BEGIN{exit !(l > 1.5)}' && note "load average $load when the $SYS tests started (other work on the machine)"
  test_io
  test_meta
  test_small
  test_git
  log "[$SYS] tests took $(( $(date +%s) - started )) s; tearing down"
  "${SYS}_teardown" >> "$LOGS/$SYS-teardown.log" 2>&1
  CURRENT=""
done

log "whole run: $(( ($(date +%s) - RUN_START) / 60 )) min"
report
