#!/usr/bin/env bash
# The aarch64 (Apple Silicon, Graviton) code paths, executed: cross-builds
# the library that holds the kernels and the model for
# aarch64-unknown-linux-gnu and runs, under Debian's qemu-user,
#   - the kernel tests (every kernel against the scalar reference, the
#     dispatch table and this process's choice),
#   - the tiny-model golden tests (every available kernel against
#     transformers' logits),
#   - the SmolLM2 "Paris" test (the real model on the chosen kernel),
# twice: with `-cpu max` (BF16 and I8MM: the dispatch must choose
# neon-bf16) and with `-cpu cortex-a72` (neither: neon-int). qemu timings mean
# nothing; this checks results only.
#
# Called by scripts/test.sh; its `test result:` lines count in the total.
# Installs what it needs when missing (scripts/aarch64-env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=aarch64-env.sh
source scripts/aarch64-env.sh

# The crate that holds kernels/ and model/, and its tests that run here:
# its unit tests of the kernels and the model, the golden tests of the tiny
# models, SmolLM2's "Paris".
CRATE=qins-core
LIB_TESTS=(kernels:: model::)
GOLDEN_TESTS=(tiny_)

cargo_aarch64() {
    cargo test --release --locked --target "$AARCH64_TARGET" -p "$CRATE" "$@"
}

echo "== cargo build (aarch64 tests of $CRATE)"
started=$SECONDS
cargo_aarch64 --lib --test golden --test smollm2 --no-run
echo "aarch64 test build: $((SECONDS - started)) s"

# SmolLM2 converted on the host (the format is the same on every
# architecture; emulated conversion would take minutes): the model tests
# under qemu load it.
BIN_DIR="${CARGO_TARGET_DIR:-target}/release"
[ -x "$BIN_DIR/qinsd" ] || cargo build --release --locked --workspace --bins
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
FIXTURES="${QINS_FIXTURES:-$HOME/.cache/qins/fixtures}"
"$BIN_DIR/qinsd" convert "$FIXTURES/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" \
    -o "$SCRATCH/smollm2.qins" >/dev/null
export QINS_TEST_SMOLLM2_QINS="$SCRATCH/smollm2.qins"

# qemu CPU model -> the kernel the dispatch must choose on it.
for run in "max neon-bf16" "cortex-a72 neon-int"; do
    read -r cpu kernel <<<"$run"
    echo "== aarch64 tests under qemu -cpu $cpu (expects kernel $kernel)"
    started=$SECONDS
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L $AARCH64_SYSROOT -cpu $cpu"
    QINS_EXPECT_KERNEL="$kernel" cargo_aarch64 --lib -- "${LIB_TESTS[@]}"
    QINS_EXPECT_KERNEL="$kernel" cargo_aarch64 --test golden -- "${GOLDEN_TESTS[@]}"
    # "Paris" only: prefill against token-by-token runs a hundred forward
    # passes, minutes under emulation (one answer takes ~55 s).
    QINS_EXPECT_KERNEL="$kernel" cargo_aarch64 --test smollm2 -- smollm2_greedily_names_the_capital_of_france
    echo "aarch64 tests under qemu -cpu $cpu: $((SECONDS - started)) s"
done
