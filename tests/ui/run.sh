#!/usr/bin/env bash
# The dashboard in a real browser: Playwright drives Debian's headless Chromium (Playwright's own
# browser download is not reachable from CI machines) against a live `plugd serve` with the
# example plugins and `--auth required`. Installs what it needs itself (pinned). Screenshots go to
# target/ui-screenshots/.
#
# Usage: tests/ui/run.sh [EXTRA PYTEST ARGS...]   (needs target/debug/plugd)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
plugd="$root/target/debug/plugd"
[ -x "$plugd" ] || cargo build -p plugd --manifest-path "$root/Cargo.toml"

if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
if ! python3 -c 'import playwright, pytest, sys; from importlib.metadata import version; sys.exit(version("playwright") != "1.49.1")' 2>/dev/null; then
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore playwright==1.49.1 pytest
fi

# shellcheck source=../lib/serve.sh
. "$root/tests/lib/serve.sh"
serve_examples ui --auth required

mkdir -p "$root/target/ui-screenshots"
status=0
PLUGD_URL="$url" PLUGD_TOKEN="$token" PLUGD_SCREENSHOTS="$root/target/ui-screenshots" \
  python3 -m pytest -q -p no:cacheprovider "$here" "$@" || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- plugd serve log (last 40 lines)" >&2
  tail -n 40 "$work/serve.log" >&2
fi
exit "$status"
