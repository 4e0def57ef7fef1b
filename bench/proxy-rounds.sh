#!/usr/bin/env bash
# Plugins' own HTTP (issue 13), interleaved: client-manager through plugd's proxy and the same app
# on uvicorn directly, both up at once; per round wrk -c16 5 s on each `/health`, then WebSocket
# echo round trips, interleaved, on each and on the raw limit of any relay: a bare TCP relay
# (`plugd-bench tcp-relay`) in front of the direct app. This
# machine's numbers drift by 30 % between minutes, so only rounds interleaved like this compare.
# Needs the release binaries (`cargo build --release -p plugd -p plugd-bench`) and uv (for the
# example's environment); installs wrk (apt-get) if it is missing.
#   bench/proxy-rounds.sh            ROUNDS=6 PROFILE_DIR=debug bench/proxy-rounds.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROFILE_DIR=${PROFILE_DIR:-release}
ROUNDS=${ROUNDS:-4}
if ! command -v wrk >/dev/null; then   # as bench/run.sh: from Debian
  if [ "$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else
    echo "wrk is missing and we are not root; hint: install it with your package manager" >&2; exit 1
  fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq wrk >/dev/null
fi
S=$(mktemp -d /tmp/pb.XXXX); chmod 755 $S
mkdir -p $S/plugins; cp -r $ROOT/examples/plugins/client-manager $S/plugins/; rm -rf $S/plugins/client-manager/__pycache__
$ROOT/target/$PROFILE_DIR/plugd serve --plugins $S/plugins --listen 127.0.0.1:18090 --state-dir $S/state >$S/out 2>$S/err &
P1=$!
P2=
trap 'kill $P1 ${P2:-} 2>/dev/null; rm -rf $S' EXIT
for i in $(seq 300); do [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18090/plugins/client-manager/health)" = 200 ] && break; sleep 0.2; done
ENV=$(find $S/state/envs -mindepth 1 -maxdepth 1 -type d ! -name '.*' | head -1)
(cd $ROOT/examples/plugins/client-manager && exec $ENV/bin/python3 -m uvicorn --factory client_manager:create_app --host 127.0.0.1 --port 18091 --no-access-log --log-level warning) >$S/u.out 2>&1 &
P2=$!
for i in $(seq 100); do [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18091/health)" = 200 ] && break; sleep 0.1; done
# The raw limit of a relay: a bare tokio TCP relay in front of the direct app.
$ROOT/target/$PROFILE_DIR/plugd-bench tcp-relay --listen 127.0.0.1:18092 --to 127.0.0.1:18091 >$S/r.out 2>&1 &
P3=$!
trap 'kill $P1 ${P2:-} $P3 2>/dev/null; rm -rf $S' EXIT
for i in $(seq 100); do [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18092/health)" = 200 ] && break; sleep 0.1; done
# (No bare relay to the plugin's own socket: since 106a72a the plugin serves only requests that
# carry the secret plugd gave it in `initialize`, which a byte relay cannot add.)
for r in $(seq $ROUNDS); do
  for c in proxy direct; do
    url=http://127.0.0.1:18090/plugins/client-manager/health; [ $c = direct ] && url=http://127.0.0.1:18091/health
    rps=$(wrk -t1 -c16 -d5s $url | awk '/Requests\/sec/ {print $2}')
    echo "round $r $c rps $rps"
  done
  $ROOT/target/$PROFILE_DIR/plugd-bench ws-echo -n 3000 --warmup 300 ws://127.0.0.1:18090/plugins/client-manager/ws-echo ws://127.0.0.1:18091/ws-echo ws://127.0.0.1:18092/ws-echo | python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.startswith("{")]
p, d, r = (row["p50_us"] for row in rows)
print(f"round {sys.argv[1]} ws p50 proxy {p:.0f} direct {d:.0f} ratio {p / d:.2f} (bare relay to direct {r:.0f}, {r / d:.2f})")' "$r"
done
