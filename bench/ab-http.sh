#!/usr/bin/env bash
# Compares the HTTP echo of two (or more) builds of plugd, interleaved: every build's
# `plugd serve` (with the bench plugins its own `plugd-bench make-plugins` writes) and one bare
# axum echo are up at once; then ROUNDS rounds, each running `wrk -t1 -c16 -dDURATION` on every
# endpoint of every build in turn, so the machine's drift between minutes hits all alike. For
# each run it reports req/s and the server's CPU per request (utime + stime of the `plugd serve`
# process over the run, from /proc, divided by the requests wrk completed); at the end the median
# per build and endpoint, and each build's ratio to the first one.
#
#   bench/ab-http.sh ROUNDS DIR:REPO[:FLAGS] [DIR:REPO[:FLAGS]...]
#     DIR   holds the build's `plugd` and `plugd-bench` (copy them aside: a rebuild replaces them)
#     REPO  is the checkout they were built from (its example plugins and Python SDK)
#     FLAGS extra `plugd serve` flags, comma-separated (`--no-metrics`); one build may be given
#           twice with different flags
#   DURATION=5s ENDPOINTS="rustecho hello hello-c-wasm" bench/ab-http.sh 3 /tmp/a:/work/a /tmp/b:.
#   PIN=1: every `plugd serve` (and the plugins it starts) on CPU 0, wrk on CPU 1 — on a VM where
#          a wake-up on the other, idle vCPU costs ~20 µs, unpinned runs measure placement too
#
# Needs wrk (`apt-get install wrk`), and python3 with the SDK importable by the Python plugin
# (each build's `plugd serve` puts its own SDK on the children's PYTHONPATH).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 ROUNDS DIR:REPO[:FLAGS] [DIR:REPO[:FLAGS]...]" >&2
  exit 2
fi
rounds=$1
shift
DURATION=${DURATION:-5s}
ENDPOINTS=${ENDPOINTS:-rustecho hello hello-c-wasm}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRATCH=$(mktemp -d /tmp/plugd-ab-http.XXXXXX)
chmod 755 "$SCRATCH"  # plugins run as other users and must reach their staged packages
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$SCRATCH"
}
trap cleanup EXIT
command -v wrk >/dev/null || { echo "wrk is missing; hint: apt-get install wrk" >&2; exit 1; }

# Starts "$@" in the background with its stdout in $SCRATCH/$1.out; sets URL from its
# `listening on http://ADDR` line and SERVER_PID.
start() {
  local name=$1
  shift
  "$@" >"$SCRATCH/$name.out" 2>"$SCRATCH/$name.err" &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  for _ in $(seq 600); do
    URL=$(grep -m1 -o 'http://[0-9.:]*' "$SCRATCH/$name.out" 2>/dev/null || true)
    [ -n "$URL" ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$SCRATCH/$name.err" >&2; return 1; }
    sleep 0.1
  done
  echo "$name did not start listening" >&2
  return 1
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

declare -A URLS SPIDS
builds=()
i=0
SERVER_CPU=() CLIENT_CPU=()
if [ "${PIN:-0}" = 1 ]; then
  SERVER_CPU=(taskset -c 0) CLIENT_CPU=(taskset -c 1)
fi
for spec in "$@"; do
  IFS=: read -r dir repo flags <<<"$spec"
  IFS=, read -r -a extra <<<"${flags:-}"
  name="b$i:$(basename "$dir")${flags:+$flags}"
  builds+=("$name")
  "$dir/plugd-bench" make-plugins --repo "$repo" "$SCRATCH/plugins-$i" >/dev/null
  start "serve-$i" "${SERVER_CPU[@]}" "$dir/plugd" serve --plugins "$SCRATCH/plugins-$i" \
    --listen 127.0.0.1:0 --state-dir "$SCRATCH/state-$i" "${extra[@]}"
  URLS[$name]=$URL
  SPIDS[$name]=$SERVER_PID
  for _ in $(seq 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/readyz")" = 200 ] && break
    sleep 0.1
  done
  i=$((i + 1))
done
dir0=${1%%:*}
start axum "${SERVER_CPU[@]}" "$dir0/plugd-bench" axum-echo --listen 127.0.0.1:0
AXUM=$URL
AXUM_PID=$SERVER_PID
hz=$(getconf CLK_TCK)

echo "round endpoint build req/s server_cpu_us_per_req" >"$SCRATCH/rows"
for r in $(seq "$rounds"); do
  for ep in $ENDPOINTS axum; do
    for b in "${builds[@]}"; do
      if [ "$ep" = axum ]; then
        url="$AXUM/echo" pid=$AXUM_PID
        [ "$b" = "${builds[0]}" ] || continue
        b=axum
      else
        url="${URLS[$b]}/plugin/$ep/echo" pid=${SPIDS[$b]}
      fi
      before=$(cpu_ticks "$pid")
      out=$("${CLIENT_CPU[@]}" wrk -t1 -c16 "-d$DURATION" -s "$ROOT/bench/post.lua" "$url")
      after=$(cpu_ticks "$pid")
      reqs=$(awk '/requests in/ {print $1}' <<<"$out")
      rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
      non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
      if [ -n "$non2xx" ]; then
        echo "$b $ep: $non2xx non-2xx answers" >&2
        exit 1
      fi
      cpu=$(python3 -c "print(round(($after - $before) / $hz * 1e6 / $reqs, 1))")
      echo "$r $ep $b $rps $cpu" | tee -a "$SCRATCH/rows"
    done
  done
done

python3 - "$SCRATCH/rows" "${builds[@]}" <<'EOF'
import collections, statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
builds = sys.argv[2:]
rps = collections.defaultdict(list)
cpu = collections.defaultdict(list)
for _, ep, b, r, c in rows:
    rps[ep, b].append(float(r))
    cpu[ep, b].append(float(c))
print()
print(f"{'endpoint':<14} {'build':<28} {'req/s median':>12} {'min':>9} {'max':>9} {'cpu µs/req':>10} {'vs first':>8}")
for ep in dict.fromkeys(ep for ep, _ in rps):
    first = None
    for b in builds + ["axum"]:
        if (ep, b) not in rps:
            continue
        m = statistics.median(rps[ep, b])
        first = first or m
        print(f"{ep:<14} {b:<28} {m:>12.0f} {min(rps[ep, b]):>9.0f} {max(rps[ep, b]):>9.0f} "
              f"{statistics.median(cpu[ep, b]):>10.1f} {m / first:>8.2f}")
EOF
