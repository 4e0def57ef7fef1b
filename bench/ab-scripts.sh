#!/usr/bin/env bash
# Compares the confined no-op script run of two or more plugd-bench binaries, interleaved:
# ROUNDS rounds of `scripts -n 30 --cases bare,server` per binary, alternating, then the median
# ratio server / bare per binary. The ratio, taken within one round, survives the machine's
# drift between minutes better than absolute times do. Run as root (the sandbox needs it).
#
#   bench/ab-scripts.sh ROUNDS OLD/plugd-bench NEW/plugd-bench [MORE...]
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 ROUNDS BIN [BIN...]" >&2
  exit 2
fi
rounds=$1
shift
for _ in $(seq "$rounds"); do
  for bin in "$@"; do
    out=$("$bin" scripts -n 30 --warmup 3 --rounds 1 --cases bare,server 2>/dev/null |
      grep -o '"p50_ms":[0-9.]*' | cut -d: -f2 | tr '\n' ' ')
    echo "$bin $out"
  done
done | python3 -c '
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in sys.stdin:
    name, bare, server = line.split()
    rows[name].append((float(bare), float(server)))
for name, v in rows.items():
    r = [s / b for b, s in v]
    print(f"{name}: ratio median {statistics.median(r):.3f} (min {min(r):.3f}, max {max(r):.3f}); "
          f"server median {statistics.median(s for _, s in v):.2f} ms, bare {statistics.median(b for b, _ in v):.2f} ms")
'
