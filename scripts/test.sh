#!/usr/bin/env bash
# The test command: fetches the real fixtures (cached, idempotent), points
# Vulkan at Mesa's software driver (scripts/vulkan-env.sh, which installs it
# when missing), then runs every test of the workspace in the release
# profile (the numeric code is too slow unoptimized) and the x86 kernels
# again as on smaller CPUs (QINS_ISA_LIMIT), the Python checks and
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

# The x86 code paths of smaller CPUs on this one: the kernel, model and
# SmolLM2 tests again with the instruction sets that laptops lack hidden
# (QINS_ISA_LIMIT, see qins-core/src/kernels/dispatch.rs), where this CPU has
# them: an AVX-512 host then also runs what an AVX2-only CPU (AMD Zen 1-3,
# Intel before Alder Lake) runs, and what an Intel hybrid client core (AVX2
# with AVX-VNNI) runs. The dispatch must pick the kernel such a CPU gets.
if [ "$(uname -m)" = x86_64 ]; then
    flags=" $(grep -m1 '^flags' /proc/cpuinfo) "
    has() { [[ "$flags" == *" $1 "* ]]; }
    runs=()
    if has avx512f || has avx_vnni; then runs+=("avx2 avx2-int"); fi
    if has avx512f && has avx_vnni; then runs+=("avx-vnni avx-vnni"); fi
    for run in "${runs[@]}"; do
        read -r limit kernel <<<"$run"
        echo "== kernels and models with QINS_ISA_LIMIT=$limit (expects kernel $kernel)"
        for target in "--lib -- kernels:: model::" "--test golden -- tiny_" "--test smollm2"; do
            # shellcheck disable=SC2086 # the target's words
            QINS_ISA_LIMIT="$limit" QINS_EXPECT_KERNEL="$kernel" \
                cargo test --release --locked -p qins-core $target 2>&1 | tee -a "$LOG"
        done
    done
fi

# Lookup decoding's greedy identity on the f32 kernel (issue 23): the real
# SmolLM2 copying a function gives the same tokens with drafts verified as
# without. (The default kernel runs it in the workspace tests above.)
if [ "$(uname -m)" = x86_64 ]; then
    echo "== lookup greedy identity on the f32 kernel (QINS_KERNEL=avx2)"
    # --workspace, not -p qins-engine: the same features as the run above,
    # so nothing is rebuilt (-p alone resolved them apart: 3 minutes).
    QINS_KERNEL=avx2 QINS_EXPECT_KERNEL=avx2 cargo test --release --locked --workspace \
        --test engine_smollm2 greedy_lookup 2>&1 | tee -a "$LOG"
fi

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
