# Sourced by tests/api/run.sh and tests/ui/run.sh: a live `plugd serve` of a copy of the example
# plugins (the tests load, unload and uninstall them) with an admin token, stopped on exit.
#
#   serve_examples NAME [SERVE FLAGS...]
#
# needs `root` and `plugd` set; sets `work` (a temp dir, removed on exit), `token`, `server` (the
# pid) and `url`; the server's log is `$work/serve.log`.

serve_examples() {
  local name=$1
  shift
  work="$(mktemp -d)"
  server=""
  trap 'serve_examples_cleanup' EXIT
  cp -r "$root/examples/plugins" "$work/plugins"
  token="$("$plugd" token create --state-dir "$work/state" --name "$name" --scope admin --json \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')"
  "$plugd" serve --plugins "$work/plugins" --state-dir "$work/state" --listen 127.0.0.1:0 "$@" \
    >"$work/serve.log" 2>&1 &
  server=$!
  url=""
  for _ in $(seq 1 600); do
    url="$(sed -n 's/^plugd listening on \(http:[^ ]*\).*/\1/p' "$work/serve.log" | head -n1)"
    [ -n "$url" ] && curl -sf "$url/readyz" >/dev/null && return 0
    kill -0 "$server" 2>/dev/null || { cat "$work/serve.log"; echo "plugd serve exited" >&2; exit 1; }
    sleep 0.1
  done
  cat "$work/serve.log"
  echo "plugd serve did not become ready within 60 s" >&2
  exit 1
}

serve_examples_cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$work"
}
