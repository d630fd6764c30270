#!/usr/bin/env bash
# The test command: fetches the real fixtures (cached, idempotent), then runs
# every test of the workspace in the release profile (the numeric code is
# too slow unoptimized) and the Python checks.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/fetch-fixtures.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

# Integration tests start real binaries (qins-web's tests run qinsd), so
# every binary is built first.
echo "== cargo build --release --workspace"
cargo build --release --workspace --locked

echo "== cargo test --release --workspace"
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
cargo test --release --workspace --locked 2>&1 | tee "$LOG"

if [ -d tests/python ]; then
    echo "== python tests"
    bash tests/python/run.sh
fi

# One closing line over every test binary (the per-binary lines end with the
# doc tests, which are empty).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "total: %d passed, %d failed\n", p, f }' "$LOG"
