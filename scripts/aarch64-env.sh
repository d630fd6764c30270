# Sourced, not run: installs what an aarch64 cross build and its qemu-user
# runs need when it is missing (Debian's cross gcc and libc, qemu-user, the
# rustup target) and exports the cross linker and C compiler for cargo.
# The runner (`qemu-aarch64 -cpu MODEL`) is set per run by the caller.
#
#   source scripts/aarch64-env.sh
#   cargo test --release --target "$AARCH64_TARGET" -p CRATE --lib --no-run

AARCH64_TARGET=aarch64-unknown-linux-gnu
# Debian's cross libc (libc6-dev-arm64-cross): qemu-aarch64 -L finds the
# dynamic loader and libc of the test binaries here.
AARCH64_SYSROOT=/usr/aarch64-linux-gnu

aarch64_missing_packages() {
    command -v aarch64-linux-gnu-gcc >/dev/null || echo gcc-aarch64-linux-gnu
    [ -e "$AARCH64_SYSROOT/lib/ld-linux-aarch64.so.1" ] || echo libc6-dev-arm64-cross
    command -v qemu-aarch64 >/dev/null || echo qemu-user
}

aarch64_install() {
    local missing
    missing="$(aarch64_missing_packages | tr '\n' ' ')"
    if [ -n "${missing// /}" ]; then
        echo "== apt-get install $missing"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        # Other apt users on the machine (CI setup, other scripts): wait for
        # the lock instead of failing.
        $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
        # shellcheck disable=SC2086 # one word per package
        DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 \
            install -y -qq --no-install-recommends $missing
    fi
    if ! rustup target list --installed | grep -qx "$AARCH64_TARGET"; then
        echo "== rustup target add $AARCH64_TARGET"
        rustup target add "$AARCH64_TARGET"
    fi
}

aarch64_install

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# For build scripts that compile C (zstd-sys, ring).
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
