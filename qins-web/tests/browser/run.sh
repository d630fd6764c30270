#!/usr/bin/env bash
# The browser test of the qins-web page: installs Chromium when it is missing
# (apt-get, as root or through sudo) and playwright-core (npm ci, cache in
# ~/.cache/qins/npm), makes a tiny random-weight model, starts qinsd and
# qins-web on a free port, runs browser.test.mjs under `node --test`, stops
# both on exit, and prints a cargo-style result line for scripts/test.sh.
#
#   QINS_BIN_DIR          qinsd and qins-web (default ${CARGO_TARGET_DIR:-target}/release)
#   QINS_BROWSER_MODEL    tiny (default) or smollm2 (the fixture GGUF from
#                         scripts/fetch-fixtures.sh; docs/qins-web.png is made so)
#   QINS_SCREENSHOT       where the screenshot goes (default: a temp file)
set -euo pipefail
cd "$(dirname "$0")/../../.."
ROOT="$PWD"
HERE="$ROOT/qins-web/tests/browser"
BIN_DIR="${QINS_BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}"
MODEL="${QINS_BROWSER_MODEL:-tiny}"
CHROMIUM="${QINS_CHROMIUM:-/usr/bin/chromium}"

reported=0
pids=()
TMP=""
cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$reported" = 0 ]; then
        # Setup failed before the tests ran: count it as one failure.
        echo "test result: browser. 0 passed; 1 failed; 0 ignored"
        [ "$status" != 0 ] || status=1
    fi
    [ -z "$TMP" ] || rm -rf "$TMP"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() {
    echo "browser tests: $*" >&2
    exit 1
}

for bin in qinsd qins-web; do
    [ -x "$BIN_DIR/$bin" ] || die "$BIN_DIR/$bin missing (cargo build --release --workspace --bins)"
done
BIN_DIR="$(cd "$BIN_DIR" && pwd)"

if [ ! -x "$CHROMIUM" ]; then
    echo "== installing chromium (apt-get)"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || die "$CHROMIUM missing, and apt-get needs root"
        SUDO="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y --no-install-recommends chromium >/dev/null ||
        { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y --no-install-recommends chromium >/dev/null; } ||
        die "could not install chromium"
    [ -x "$CHROMIUM" ] || die "$CHROMIUM missing after installing chromium"
fi

echo "== npm ci ($HERE)"
(cd "$HERE" && npm ci --cache "$HOME/.cache/qins/npm" --prefer-offline --no-audit --no-fund --loglevel=error) ||
    die "npm ci failed"

# Short: it holds the socket.
TMP="$(mktemp -d /tmp/qins-browser.XXXXXX)"
mkdir -p "$TMP/models"
case "$MODEL" in
    tiny)
        "$BIN_DIR/qins-fixture" tiny --arch phi3 --out "$TMP/tinyhf" >"$TMP/convert.log" 2>&1 &&
            "$BIN_DIR/qinsd" convert "$TMP/tinyhf" -o "$TMP/models/tiny.qins" >>"$TMP/convert.log" 2>&1 ||
            { cat "$TMP/convert.log" >&2; die "could not make the tiny model"; }
        ;;
    smollm2)
        GGUF="${QINS_FIXTURES:-$HOME/.cache/qins/fixtures}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        [ -f "$GGUF" ] || die "$GGUF missing (bash scripts/fetch-fixtures.sh)"
        "$BIN_DIR/qinsd" convert "$GGUF" -o "$TMP/models/smollm2.qins" >"$TMP/convert.log" 2>&1 ||
            { cat "$TMP/convert.log" >&2; die "could not convert $GGUF"; }
        ;;
    *) die "QINS_BROWSER_MODEL must be tiny or smollm2, not $MODEL" ;;
esac

"$BIN_DIR/qinsd" --model "$MODEL" --models-dir "$TMP/models" --socket "$TMP/s.sock" >"$TMP/qinsd.log" 2>&1 &
pids+=($!)

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A free port can be taken between picking and binding it: try a few.
URL=""
for attempt in 1 2 3; do
    port="$(free_port)"
    "$BIN_DIR/qins-web" --socket "$TMP/s.sock" --listen "127.0.0.1:$port" >"$TMP/web.log" 2>&1 &
    web=$!
    pids+=("$web")
    for _ in $(seq 1 300); do
        if ! kill -0 "$web" 2>/dev/null; then break; fi
        if curl -fsS --max-time 2 "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
            URL="http://127.0.0.1:$port"
            break
        fi
        kill -0 "${pids[0]}" 2>/dev/null || { cat "$TMP/qinsd.log" >&2; die "qinsd exited"; }
        sleep 0.1
    done
    [ -z "$URL" ] || break
    kill "$web" 2>/dev/null || true
    echo "browser tests: qins-web on port $port did not become healthy (attempt $attempt):" >&2
    tail -n 5 "$TMP/web.log" >&2 || true
done
[ -n "$URL" ] || { tail -n 20 "$TMP/qinsd.log" >&2; die "qins-web never answered /health"; }
echo "== node --test browser.test.mjs ($URL, model $MODEL)"

status=0
(
    cd "$HERE"
    QINS_WEB_URL="$URL" QINS_MODEL="$MODEL" QINS_CHROMIUM="$CHROMIUM" \
        timeout 120 node --test \
        --test-reporter=spec --test-reporter-destination=stdout \
        --test-reporter=tap --test-reporter-destination="$TMP/tap.txt" \
        browser.test.mjs
) || status=$?

count() { sed -n "s/^# $1 \([0-9]*\)$/\1/p" "$TMP/tap.txt" 2>/dev/null | tail -n 1; }
passed="$(count pass)"
fail="$(count fail)"
cancelled="$(count cancelled)"
passed="${passed:-0}"
failed=$((${fail:-0} + ${cancelled:-0}))
if [ "$status" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
if [ "$status" != 0 ]; then
    echo "--- qinsd log (tail)"; tail -n 20 "$TMP/qinsd.log" || true
    echo "--- qins-web log (tail)"; tail -n 20 "$TMP/web.log" || true
fi
reported=1
echo "test result: browser. $passed passed; $failed failed; 0 ignored"
exit "$status"
