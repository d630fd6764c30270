#!/usr/bin/env bash
# The test command: fetches the real fixtures (cached, idempotent), then runs
# every test of the workspace in the release profile (the numeric code is
# too slow unoptimized) and the Python checks.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/fetch-fixtures.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo test --release --workspace"
cargo test --release --workspace --locked

if [ -d tests/python ]; then
    echo "== python tests"
    bash tests/python/run.sh
fi
