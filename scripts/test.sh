#!/usr/bin/env bash
# The test command: fetches the real fixtures (cached, idempotent), points
# Vulkan at Mesa's software driver (scripts/vulkan-env.sh, which installs it
# when missing), then runs every test of the workspace in the release
# profile (the numeric code is too slow unoptimized), the Python checks and
# the browser test of the qins-web page (which installs Chromium and
# playwright-core when missing), and the aarch64 kernels and model under
# qemu-user (scripts/test-aarch64.sh, which installs the cross toolchain).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/fetch-fixtures.sh

# The GPU tests run on Mesa's software Vulkan driver (installed when missing).
# shellcheck source=scripts/vulkan-env.sh
source scripts/vulkan-env.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --release --workspace --all-targets --locked -- -D warnings

# The end-to-end tests (tests/, qins-web/tests/) run the workspace's binaries.
echo "== cargo build --release --workspace --bins"
cargo build --release --workspace --bins --locked

echo "== cargo test --release --workspace"
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
cargo test --release --workspace --locked 2>&1 | tee "$LOG"

if [ -d tests/python ]; then
    echo "== python tests"
    bash tests/python/run.sh 2>&1 | tee -a "$LOG"
fi

# The aarch64 (Apple Silicon) kernels and model, cross-built and run under
# qemu-user with and without BF16/I8MM.
echo "== aarch64 under qemu"
bash scripts/test-aarch64.sh 2>&1 | tee -a "$LOG"

if [ -f qins-web/tests/browser/run.sh ]; then
    echo "== browser tests"
    bash qins-web/tests/browser/run.sh 2>&1 | tee -a "$LOG"
fi

# One closing line over every test binary (the per-binary lines end with the
# doc tests, which are empty).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "total: %d passed, %d failed\n", p, f }' "$LOG"
