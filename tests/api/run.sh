#!/usr/bin/env bash
# Fuzzes the HTTP API against its own OpenAPI document with Schemathesis: a real `plugd serve`
# with the example plugins and an admin token, every documented operation, checks that no
# answer is an undocumented status, a 5xx, a wrong content type, a body off its schema, or a
# protected route answering without a token. Installs Schemathesis itself (pinned).
#
# Usage: tests/api/run.sh [EXTRA SCHEMATHESIS ARGS...]   (needs target/debug/plugd)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
plugd="$root/target/debug/plugd"
[ -x "$plugd" ] || cargo build -p plugd --manifest-path "$root/Cargo.toml"

if ! python3 -c 'import schemathesis, sys; sys.exit(schemathesis.__version__ != "4.32.5")' 2>/dev/null; then
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore schemathesis==4.32.5
fi

# shellcheck source=../lib/serve.sh
. "$root/tests/lib/serve.sh"
serve_examples fuzz

cd "$here"  # schemathesis.toml
status=0
# Left out: Server-Sent Events streams (`/stream`: they never end, so a response cannot be
# checked whole; tests/it cover them), the dashboard (`/ui`: static files, checked by ui.rs's
# tests and in a browser by tests/ui/run.sh) and token revocation (the fuzzer would revoke the
# token it runs with). One worker: CPython 3.11's `ast` module is not thread-safe ("AST
# constructor recursion depth mismatch"), and hypothesis describes its filters with it.
st run "$url/api/v1/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,ignored_auth \
  --phases examples,coverage,fuzzing \
  --exclude-path-regex '(/stream$|^/ui)' \
  --exclude-path '/api/v1/tokens/{which}' \
  --max-examples "${ST_MAX_EXAMPLES:-25}" --workers 1 --seed "${ST_SEED:-1}" \
  --no-color "$@" || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- plugd serve log (last 40 lines)" >&2
  tail -n 40 "$work/serve.log" >&2
fi
exit "$status"
