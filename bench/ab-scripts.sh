#!/usr/bin/env bash
# Compares the confined no-op script run of two or more plugd-bench binaries, interleaved:
# ROUNDS rounds of `scripts -n PAIRS --cases paired` per binary (bare and server alternating run
# by run, the median of each pair's ratio server / bare), the binaries alternating round by
# round; then, per binary, the median over rounds. Pairs taken ~40 ms apart survive the machine's
# drift between phases (10–30 % within minutes on this VM) far better than whole rounds do.
# Run as root (the sandbox needs it).
#
#   bench/ab-scripts.sh ROUNDS OLD/plugd-bench NEW/plugd-bench [MORE...]   (PAIRS=40, GAP_MS=20 by default)
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 ROUNDS BIN [BIN...]" >&2
  exit 2
fi
rounds=$1
shift
pairs=${PAIRS:-40}
for _ in $(seq "$rounds"); do
  for bin in "$@"; do
    line=$("$bin" scripts -n "$pairs" --warmup 3 --rounds 1 --cases paired --gap-ms "${GAP_MS:-20}" 2>/dev/null |
      grep '"case":"paired"')
    echo "$bin $line"
  done
done | python3 -c '
import collections, json, statistics, sys
rows = collections.defaultdict(list)
for line in sys.stdin:
    name, rest = line.split(" ", 1)
    rows[name].append(json.loads(rest))
for name, v in rows.items():
    r = [x["ratio_p50"] for x in v]
    server = statistics.median(x["server_p50_ms"] for x in v)
    bare = statistics.median(x["bare_p50_ms"] for x in v)
    print(f"{name}: ratio median {statistics.median(r):.3f} over {len(r)} rounds (min {min(r):.3f}, max {max(r):.3f}); "
          f"server p50 {server:.2f} ms, bare {bare:.2f} ms")
'
