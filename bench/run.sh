#!/usr/bin/env bash
# plugd benchmarks: process runtime, wasm runtime and the HTTP server (see bench/README.md).
#
#   bench/run.sh                 # everything: latency through the host, wasm, then HTTP with wrk
#   bench/run.sh --with-extism   # also the Extism peer (bench/extism; its first build is slow)
#   CALLS=50000 DURATION=30s bench/run.sh
#   SKIP_BUILD=1 SKIP_HTTP=1 bench/run.sh
#   SERVICES=1 bench/run.sh      # also host services (issue 10): kv.set, group commit, start-up
#   RELOAD=1 RELOAD_ONLY=1 bench/run.sh   # hot reload only (issue 12): write -> answer, wrk under rewrites
#   PROFILE=dev SKIP_BUILD=1 ...  # measure the dev-profile binaries in target/debug
#   WORK=1 bench/run.sh          # also durable tasks and events (issue 11)
#   PROXY=1 PROXY_ONLY=1 bench/run.sh     # plugins' own HTTP only (issue 13): proxy vs uvicorn direct
#   AUTH=1 AUTH_ONLY=1 bench/run.sh       # issue 15: echo throughput with auth + metrics on vs off,
#                                         # and the dashboard's assets, gzipped
#
# Steps: install `wrk` if missing (apt-get), build `plugd` and `plugd-bench` in release mode,
# make the Python SDK importable by plugins (a throw-away venv with a `.pth` to `sdk/python/src`,
# nothing installed system-wide), run `plugd-bench latency`, `sdk/python/bench_sdk.py` and
# `plugd-bench wasm` (in-process wasm calls, start-up of 1,000 wasm plugins), with `SERVICES=1`
# `plugd-bench services` (kv.set vs echo, durable commits/s next to bare SQLite, start-up of 100
# plugins on an empty and a ~100 MB store; a minute or two, off by default), with `WORK=1`
# `plugd-bench work` (durable tasks and events per second, publish-to-handler latency, next to
# the plain calls of the same wasm and Python plugins; about a minute, off by default), optionally the
# Extism peer, then `wrk` against `plugd serve` (`/plugin/hello/echo`, `/plugin/rustecho/echo`,
# `/plugin/hello-c-wasm/echo`) and against the bare axum echo (`plugd-bench axum-echo`). Servers
# are stopped on exit, even on failure.
set -euo pipefail

WITH_EXTISM=
for arg in "$@"; do
    case $arg in
        --with-extism) WITH_EXTISM=1 ;;
        *) echo "Unknown argument \`$arg\`; hint: bench/run.sh [--with-extism]" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CALLS=${CALLS:-20000}          # calls per latency case (1 in flight, and again with IN_FLIGHT)
IN_FLIGHT=${IN_FLIGHT:-64}
WASM_CALLS=${WASM_CALLS:-50000}  # calls per wasm latency case
COPIES=${COPIES:-1000}         # wasm plugins started at once (0: skip)
# Extism's own target dir (it is not a workspace member and pulls its own wasmtime): kept
# between runs, so only the first `--with-extism` run pays its release build.
EXTISM_TARGET_DIR=${EXTISM_TARGET_DIR:-$ROOT/target/extism}
SERVICES=${SERVICES:-}          # 1: run `plugd-bench services` (issue 10)
SERVICES_CALLS=${SERVICES_CALLS:-20000}  # calls per services case and durability mode
STORE_MB=${STORE_MB:-100}      # kv written into the second store before the start-up timing
WORK=${WORK:-}                  # 1: run `plugd-bench work` (issue 11)
RELOAD=${RELOAD:-}              # 1: run `plugd-bench reload` and wrk under rewrites (issue 12)
RELOAD_ONLY=${RELOAD_ONLY:-}    # 1: only the build and the reload section
SWAPS=${SWAPS:-50}              # rewrites per reload case, one every 0.5 s
PROXY=${PROXY:-}                # 1: client-manager through plugd's proxy vs uvicorn direct (issue 13)
PROXY_ONLY=${PROXY_ONLY:-}      # 1: only the build and the proxy section
AUTH=${AUTH:-}                  # 1: the echo with auth and metrics off, then on (issue 15)
AUTH_ONLY=${AUTH_ONLY:-}        # 1: only the build and the auth/metrics section
WS_MESSAGES=${WS_MESSAGES:-5000} # WebSocket echo round trips per case
PROFILE=${PROFILE:-release}     # cargo profile of the binaries measured (`dev`: target/debug)
OUT_DIR=$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
DURATION=${DURATION:-10s}      # wrk -d
CONNECTIONS=${CONNECTIONS:-16} # wrk -c
THREADS=${THREADS:-1}          # wrk -t
PAYLOAD=${PLUGD_BENCH_PAYLOAD:-'{"user":"Ada Lovelace","id":1815,"tags":["math","engine","notes"],"active":true,"score":98.6,"lang":"en"}'}
export PLUGD_BENCH_PAYLOAD=$PAYLOAD

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/plugd-bench.XXXXXX")
# `mktemp -d` makes the directory private (0700); sandboxed plugin children, which may run as
# another user, must be able to reach their staged packages under it.
chmod 755 "$SCRATCH"
SERVER_PIDS=()

stop_server() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    echo "Server $pid did not stop within 5 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    for pid in "${SERVER_PIDS[@]}"; do
        stop_server "$pid"
    done
    rm -rf "$SCRATCH"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

section() { printf '\n=== %s\n' "$*"; }

# --- tools -------------------------------------------------------------------------------------
if ! command -v wrk >/dev/null; then
    section "Installing wrk"
    if [ "$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else
        echo "wrk is missing and we are not root; hint: install it with your package manager" >&2
        exit 1
    fi
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq wrk >/dev/null
fi
command -v python3 >/dev/null || { echo "python3 is missing; hint: apt-get install python3" >&2; exit 1; }

# --- build -------------------------------------------------------------------------------------
if [ -z "${SKIP_BUILD:-}" ]; then
    section "Building ($PROFILE)"
    cargo build --profile "$PROFILE" -p plugd -p plugd-bench
    if [ -n "$WITH_EXTISM" ]; then
        cargo build --release --manifest-path bench/extism/Cargo.toml --target-dir "$EXTISM_TARGET_DIR"
    fi
fi
HAVE_WASM=
if [ -f examples/plugins/hello-c-wasm/plugin.wasm ]; then
    HAVE_WASM=1
else
    echo "examples/plugins/hello-c-wasm/plugin.wasm is missing: wasm cases skipped; hint: run examples/plugins/build.sh" >&2
fi
PLUGD=$ROOT/target/$OUT_DIR/plugd
BENCH=$ROOT/target/$OUT_DIR/plugd-bench

# --- Python SDK for the plugins ----------------------------------------------------------------
# Plugins run from a staged copy of their package in a clean environment, so `import plugd` must
# work without the checkout's layout: a venv whose site-packages points at the checkout's SDK.
# (Current `plugd serve` also puts its own SDK copy on children's PYTHONPATH, which wins.)
python3 -m venv --without-pip "$SCRATCH/venv"
SITE=$("$SCRATCH/venv/bin/python3" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
echo "$ROOT/sdk/python/src" >"$SITE/plugd-sdk.pth"
export PATH="$SCRATCH/venv/bin:$PATH"
python3 -c 'import plugd' || { echo "The plugd SDK is not importable from the venv" >&2; exit 1; }

# --- machine -----------------------------------------------------------------------------------
section "Machine"
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
echo "date:    $(date -u +%Y-%m-%dT%H:%MZ)"
echo "cpu:     $CPU, nproc $(nproc)"
echo "kernel:  $(uname -r)"
echo "rustc:   $(rustc --version)"
echo "python:  $(python3 --version 2>&1)"
echo "wrk:     $(wrk -v 2>&1 | head -1)"
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min; other work skews every number below)"

if [ -z "$RELOAD_ONLY" ] && [ -z "$PROXY_ONLY" ] && [ -z "$AUTH_ONLY" ]; then
# --- in-process latency ------------------------------------------------------------------------
section "Latency through plugd-host vs raw pipe ($CALLS calls, 1 and $IN_FLIGHT in flight)"
"$BENCH" latency --repo "$ROOT" -n "$CALLS" --in-flight "$IN_FLIGHT" --payload "$PAYLOAD" \
    | tee "$SCRATCH/latency.txt"

section "Python SDK vs raw Python child, driven from Python (sdk/python/bench_sdk.py)"
if [ -f sdk/python/bench_sdk.py ]; then
    python3 sdk/python/bench_sdk.py -n 10000 --payload "$PAYLOAD" | tee "$SCRATCH/sdk.txt"
else
    echo "(sdk/python/bench_sdk.py is missing: skipped)"
fi

# --- wasm runtime in-process ------------------------------------------------------------------
if [ -n "$HAVE_WASM" ]; then
    section "Wasm runtime in-process: hello-c-wasm echo ($WASM_CALLS calls per case), start-up of $COPIES wasm plugins"
    "$BENCH" wasm --repo "$ROOT" -n "$WASM_CALLS" --copies "$COPIES" --payload "$PAYLOAD" \
        | tee "$SCRATCH/wasm.txt"
fi
if [ -n "$WITH_EXTISM" ]; then
    section "Extism peer (bench/extism: the same echo through Extism's Plugin::call, 99-byte payload)"
    "$EXTISM_TARGET_DIR/release/plugd-bench-extism" | tee "$SCRATCH/extism.txt"
fi

# --- host services (issue 10) ------------------------------------------------------------------
if [ -n "$SERVICES" ]; then
    section "Host services: kvbench echo vs kv.set, durable commits/s (process, full) vs bare SQLite, start of 100 plugins with a ${STORE_MB} MB store"
    # The scratch state goes under $SCRATCH: the disk of TMPDIR is the one measured.
    "$BENCH" services --repo "$ROOT" -n "$SERVICES_CALLS" --in-flight "$IN_FLIGHT" \
        --payload "$PAYLOAD" --store-mb "$STORE_MB" --dir "$SCRATCH" | tee "$SCRATCH/services.txt"
fi

# --- durable tasks and events (issue 11) -------------------------------------------------------
if [ -n "$WORK" ]; then
    section "Durable tasks and events: tasks/s and events/s (wasm and Python no-op handlers) vs their plain calls, publish-to-handler latency"
    "$BENCH" work --repo "$ROOT" --in-flight "$IN_FLIGHT" --dir "$SCRATCH" | tee "$SCRATCH/work.txt"
fi

fi
[ -n "${SKIP_HTTP:-}" ] && [ -z "$RELOAD" ] && [ -z "$PROXY" ] && [ -z "$AUTH" ] && exit 0

# --- HTTP --------------------------------------------------------------------------------------
# Starts a server in the background, waits for its `... listening on http://ADDR` line and sets
# URL to the base URL. (Not called in `$(...)`: the server must be a child of this shell.)
start_server() {
    local name=$1
    shift
    "$@" >"$SCRATCH/$name.out" 2>"$SCRATCH/$name.err" &
    local pid=$!
    SERVER_PIDS+=("$pid")
    for _ in $(seq 300); do
        local url
        url=$(grep -m1 -o 'http://[0-9.:]*' "$SCRATCH/$name.out" 2>/dev/null || true)
        if [ -n "$url" ]; then
            URL=$url
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited before listening:" >&2
            cat "$SCRATCH/$name.err" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "$name did not start listening within 30 s" >&2
    return 1
}

# Runs wrk against a URL and keeps its output in $SCRATCH/wrk-<name>.txt.
run_wrk() {
    local name=$1 url=$2
    local reply
    local auth=()
    [ -n "${PLUGD_BENCH_TOKEN:-}" ] && auth=(-H "Authorization: Bearer $PLUGD_BENCH_TOKEN")
    reply=$(curl -sS -X POST -H 'Content-Type: application/json' "${auth[@]}" --data "$PAYLOAD" "$url" -w '\n%{http_code}')
    if [ "${reply##*$'\n'}" != 200 ]; then
        echo "POST $url answered ${reply##*$'\n'}: ${reply%$'\n'*}" >&2
        tail -n 20 "$SCRATCH"/*.err >&2 || true
        return 1
    fi
    reply=${reply%$'\n'*}
    echo "--- $name: POST $url"
    echo "    sample reply: $reply"
    wrk "-t$THREADS" "-c$CONNECTIONS" "-d$DURATION" --latency -s "$ROOT/bench/post.lua" "$url" \
        | tee "$SCRATCH/wrk-$name.txt"
}

rps() { awk '/^Requests\/sec:/ {print $2}' "$SCRATCH/wrk-$1.txt"; }
pct() { awk -v p="$2" '$1 == p {print $2}' "$SCRATCH/wrk-$1.txt"; }
errors() {
    awk '/Non-2xx or 3xx responses:/ {n += $NF}
         /Socket errors:/ {gsub(",", ""); n += $4 + $6 + $8 + $10}
         END {print n + 0}' \
        "$SCRATCH/wrk-$1.txt"
}

# --- hot reload (issue 12) ---------------------------------------------------------------------
if [ -n "$RELOAD" ]; then
    section "Hot reload: file write -> new version answering ($SWAPS swaps per case, one every 0.5 s)"
    "$BENCH" reload --repo "$ROOT" --swaps "$SWAPS" --dir "$SCRATCH" | tee "$SCRATCH/reload.txt"

    RELOAD_SECS=$(( SWAPS / 2 ))
    section "Hot reload under load: wrk -c$CONNECTIONS -d${RELOAD_SECS}s, without and with $SWAPS rewrites every 0.5 s"
    "$BENCH" make-plugins --repo "$ROOT" "$SCRATCH/reload-plugins"
    start_server plugd-watch "$PLUGD" serve --watch --plugins "$SCRATCH/reload-plugins" \
        --listen 127.0.0.1:0 --state-dir "$SCRATCH/reload-state"
    WATCH_URL=$URL
    sleep 2
    RELOAD_CASES=hello
    [ -n "$HAVE_WASM" ] && RELOAD_CASES="hello hello-c-wasm"
    for case in $RELOAD_CASES; do
        DURATION=${RELOAD_SECS}s run_wrk "reload-base-$case" "$WATCH_URL/plugin/$case/echo"
        "$BENCH" rewrite --repo "$ROOT" "$SCRATCH/reload-plugins/$case" --times "$SWAPS" \
            --interval-ms 500 &
        REWRITER=$!
        DURATION=${RELOAD_SECS}s run_wrk "reload-swap-$case" "$WATCH_URL/plugin/$case/echo"
        wait "$REWRITER"
        # The swaps happened: the record keeps the newest 20, each must be a success.
        "$PLUGD" --server "$WATCH_URL" --json status "$case" | python3 -c '
import json, sys
swaps = json.load(sys.stdin)["plugin"]["supervision"]["swaps"]
failed = sum(not s["ok"] for s in swaps)
took = sorted(s["took_ms"] for s in swaps)
print(f"    swaps on record (newest 20 kept): {len(swaps)}, failed: {failed}, p50 swap {took[len(took) // 2]:.1f} ms")'
    done
    printf '\n%-34s %12s %10s %10s %8s\n' "reload under wrk -c$CONNECTIONS" "req/s" "p50" "p99" "errors"
    for case in $RELOAD_CASES; do
        for run in base swap; do
            name="reload-$run-$case"
            printf '%-34s %12s %10s %10s %8s\n' "$name" "$(rps "$name")" "$(pct "$name" 50%)" "$(pct "$name" 99%)" "$(errors "$name")"
        done
        awk -v b="$(rps "reload-base-$case")" -v s="$(rps "reload-swap-$case")" -v e="$(errors "reload-swap-$case")" -v c="$case" 'BEGIN {
            printf "target: %s under %d rewrites: 0 errors and >= 0.8x throughput: %s (%d errors, %.2fx)\n", c, '"$SWAPS"', (e == 0 && s >= 0.8 * b ? "met" : "MISSED"), e, s / b
        }'
    done
    [ -n "$RELOAD_ONLY" ] && exit 0
fi

# --- plugins' own HTTP (issue 13) -----------------------------------------------------------------
if [ -n "$PROXY" ]; then
    section "Plugins' own HTTP: client-manager through plugd's proxy vs the same app on uvicorn directly"
    mkdir -p "$SCRATCH/proxy-plugins"
    cp -r examples/plugins/client-manager "$SCRATCH/proxy-plugins/"
    rm -rf "$SCRATCH/proxy-plugins/client-manager/__pycache__"
    began=$(date +%s.%N)
    start_server plugd-proxy "$PLUGD" serve --plugins "$SCRATCH/proxy-plugins" \
        --listen 127.0.0.1:0 --state-dir "$SCRATCH/proxy-state"
    PROXY_URL=$URL
    for _ in $(seq 1200); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$PROXY_URL/plugins/client-manager/health")" = 200 ] && break
        sleep 0.1
    done
    awk -v a="$began" -v b="$(date +%s.%N)" 'BEGIN {printf "client-manager serving after %.1f s (its environment built cold)\n", b - a}'
    ENV_DIR=$(find "$SCRATCH/proxy-state/envs" -mindepth 1 -maxdepth 1 -type d ! -name '.*' | head -1)
    DIRECT_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    (cd examples/plugins/client-manager && exec "$ENV_DIR/bin/python3" -m uvicorn --factory client_manager:create_app \
        --host 127.0.0.1 --port "$DIRECT_PORT" --no-access-log --log-level warning) \
        >"$SCRATCH/uvicorn.out" 2>"$SCRATCH/uvicorn.err" &
    SERVER_PIDS+=("$!")
    DIRECT_URL=http://127.0.0.1:$DIRECT_PORT
    for _ in $(seq 100); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$DIRECT_URL/health")" = 200 ] && break
        sleep 0.1
    done
    for case in proxy direct; do
        url=$PROXY_URL/plugins/client-manager/health
        [ $case = direct ] && url=$DIRECT_URL/health
        echo "--- http-$case: GET $url"
        wrk "-t$THREADS" "-c$CONNECTIONS" "-d$DURATION" --latency "$url" | tee "$SCRATCH/wrk-http-$case.txt"
    done
    "$BENCH" ws-echo -n "$WS_MESSAGES" "${PROXY_URL/http/ws}/plugins/client-manager/ws-echo" \
        "${DIRECT_URL/http/ws}/ws-echo" | tee "$SCRATCH/ws.txt"
    printf '\n%-34s %12s %10s %10s %8s\n' "GET /health (wrk -c$CONNECTIONS)" "req/s" "p50" "p99" "errors"
    for name in http-proxy http-direct; do
        printf '%-34s %12s %10s %10s %8s\n' "$name" "$(rps "$name")" "$(pct "$name" 50%)" "$(pct "$name" 99%)" "$(errors "$name")"
    done
    awk -v p="$(rps http-proxy)" -v d="$(rps http-direct)" 'BEGIN {
        printf "target: GET /health through the proxy >= 0.8x uvicorn direct: %s (%.2fx)\n", (p >= 0.8 * d ? "met" : "MISSED"), p / d
    }'
    python3 - "$SCRATCH/ws.txt" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
proxy, direct = rows[0]["p50_us"], rows[1]["p50_us"]
verdict = "met" if proxy <= 1.2 * direct else "MISSED"
print(f"target: WebSocket echo p50 through the proxy <= 1.2x direct: {verdict} ({proxy:.0f} vs {direct:.0f} us, {proxy / direct:.2f}x)")
PY
    [ -n "$PROXY_ONLY" ] && exit 0
fi

# --- auth and metrics (issue 15) -----------------------------------------------------------------
if [ -n "$AUTH" ]; then
    section "Auth and metrics: the same echoes with both off (--no-metrics, no token) and both on (a bearer token checked per request, every call counted)"
    "$BENCH" make-plugins --repo "$ROOT" "$SCRATCH/auth-plugins"
    start_server plugd-off "$PLUGD" serve --plugins "$SCRATCH/auth-plugins" --listen 127.0.0.1:0 \
        --state-dir "$SCRATCH/off-state" --no-metrics
    OFF_URL=$URL
    TOKEN=$("$PLUGD" token create --state-dir "$SCRATCH/on-state" --name bench --scope 'call:*' 2>/dev/null)
    start_server plugd-on "$PLUGD" serve --plugins "$SCRATCH/auth-plugins" --listen 127.0.0.1:0 \
        --state-dir "$SCRATCH/on-state"
    ON_URL=$URL
    for url in "$OFF_URL" "$ON_URL"; do
        for _ in $(seq 600); do
            [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/readyz")" = 200 ] && break
            sleep 0.1
        done
    done
    [ "$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{}' "$ON_URL/plugin/rustecho/echo")" = 401 ] \
        || { echo "auth is not on for the second server" >&2; exit 1; }
    AUTH_CASES="rustecho hello"
    [ -n "$HAVE_WASM" ] && AUTH_CASES="rustecho hello-c-wasm hello"
    # Interleaved, twice each, so drift of the machine hits both sides alike; the better run counts.
    for round in 1 2; do
        for case in $AUTH_CASES; do
            run_wrk "off-$case-$round" "$OFF_URL/plugin/$case/echo"
            PLUGD_BENCH_TOKEN=$TOKEN run_wrk "on-$case-$round" "$ON_URL/plugin/$case/echo"
        done
    done
    best() { awk 'BEGIN {m = 0} {if ($1 > m) m = $1} END {print m}' <<<"$(rps "$1-1")
$(rps "$1-2")"; }
    printf '\n%-34s %12s %12s %8s\n' "POST echo (wrk -c$CONNECTIONS)" "off req/s" "on req/s" "on/off"
    for case in $AUTH_CASES; do
        off=$(best "off-$case") on=$(best "on-$case")
        awk -v c="$case" -v off="$off" -v on="$on" 'BEGIN {
            printf "%-34s %12.0f %12.0f %8.2f\n", c, off, on, on / off
            printf "target: %s with auth and metrics on >= 0.9x off: %s (%.2fx)\n", c, (on >= 0.9 * off ? "met" : "MISSED"), on / off
        }' | tee -a "$SCRATCH/auth.txt"
    done
    echo "--- metrics after the run (a sample of the series):"
    curl -s -H "Authorization: Bearer $("$PLUGD" token create --state-dir "$SCRATCH/on-state" --name scrape --scope read 2>/dev/null)" \
        "$ON_URL/metrics" | grep -E '^plugd_calls_total\{plugin="rustecho"' | head -3
    UI_DIR=crates/plugd-server/ui
    if [ -d "$UI_DIR" ]; then
        raw=$(cat "$UI_DIR"/* | wc -c)
        gz=0
        for f in "$UI_DIR"/*; do gz=$((gz + $(gzip -9c "$f" | wc -c))); done
        awk -v raw="$raw" -v gz="$gz" 'BEGIN {
            printf "dashboard assets: %d bytes, %d gzipped (each file gzip -9)\n", raw, gz
            printf "target: dashboard first load <= 200 KB of assets compressed: %s (%.1f KB)\n", (gz <= 200 * 1024 ? "met" : "MISSED"), gz / 1024
        }' | tee -a "$SCRATCH/auth.txt"
    fi
    [ -n "$AUTH_ONLY" ] && exit 0
fi

section "HTTP: wrk -t$THREADS -c$CONNECTIONS -d$DURATION, POST ${#PAYLOAD}-byte JSON"
"$BENCH" make-plugins --repo "$ROOT" "$SCRATCH/plugins"
start_server plugd "$PLUGD" serve --plugins "$SCRATCH/plugins" \
    --listen 127.0.0.1:0 --state-dir "$SCRATCH/state"
PLUGD_URL=$URL
start_server axum-echo "$BENCH" axum-echo --listen 127.0.0.1:0
AXUM_URL=$URL

run_wrk plugd-hello "$PLUGD_URL/plugin/hello/echo"
run_wrk plugd-rustecho "$PLUGD_URL/plugin/rustecho/echo"
HTTP_CASES="plugd-hello plugd-rustecho"
if [ -n "$HAVE_WASM" ]; then
    run_wrk plugd-hello-c-wasm "$PLUGD_URL/plugin/hello-c-wasm/echo"
    HTTP_CASES="$HTTP_CASES plugd-hello-c-wasm"
fi
run_wrk axum-echo "$AXUM_URL/echo"

# --- summary -----------------------------------------------------------------------------------
section "Summary"
grep -E '^(target|host overhead|Python SDK overhead)' "$SCRATCH/latency.txt" || true
if [ -f "$SCRATCH/wasm.txt" ]; then grep -E '^(target|host start)' "$SCRATCH/wasm.txt" || true; fi
if [ -f "$SCRATCH/extism.txt" ]; then grep -E '^extism' "$SCRATCH/extism.txt" || true; fi
if [ -f "$SCRATCH/services.txt" ]; then grep -E '^target' "$SCRATCH/services.txt" || true; fi
printf '\n%-34s %12s %10s %10s %8s\n' "HTTP (wrk -t$THREADS -c$CONNECTIONS -d$DURATION)" "req/s" "p50" "p99" "errors"
for name in $HTTP_CASES axum-echo; do
    printf '%-34s %12s %10s %10s %8s\n' "$name" "$(rps "$name")" "$(pct "$name" 50%)" "$(pct "$name" 99%)" "$(errors "$name")"
done
HELLO_RPS=$(rps plugd-hello)
WASM_RPS=0
[ -n "$HAVE_WASM" ] && WASM_RPS=$(rps plugd-hello-c-wasm)
AXUM_RPS=$(rps axum-echo)
RUST_RPS=$(rps plugd-rustecho)
awk -v h="$HELLO_RPS" -v a="$AXUM_RPS" -v r="$RUST_RPS" -v w="$WASM_RPS" 'BEGIN {
    printf "\nplugd hello / bare axum: %.2fx;  plugd rustecho / bare axum: %.2fx;  plugd hello-c-wasm / bare axum: %.2fx\n", h / a, r / a, w / a
    printf "target: plugd hello >= 10000 req/s: %s (%.0f req/s)\n", (h >= 10000 ? "met" : "MISSED"), h
    if (w > 0) printf "target: plugd hello-c-wasm >= 40000 req/s: %s (%.0f req/s, %.2fx the bare axum echo)\n", (w >= 40000 ? "met" : "MISSED"), w, w / a
}'
printf 'JSON {"bench":"plugd-http","wrk":"-t%s -c%s -d%s","payload_bytes":%s,"plugd_hello_rps":%s,"plugd_rustecho_rps":%s,"plugd_hello_c_wasm_rps":%s,"axum_echo_rps":%s}\n' \
    "$THREADS" "$CONNECTIONS" "$DURATION" "${#PAYLOAD}" "$HELLO_RPS" "$RUST_RPS" "$WASM_RPS" "$AXUM_RPS"
