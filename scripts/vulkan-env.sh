# Sourced by scripts/test.sh (and by hand before GPU tests: `source
# scripts/vulkan-env.sh`): makes Mesa's software Vulkan driver (lavapipe)
# the one Vulkan device the tests see, so the GPU code runs on any Linux
# machine, GPU or not.
#
# Installs Debian's mesa-vulkan-drivers (lavapipe) and libvulkan1 (the
# loader) with apt-get when they are missing (as root, or through sudo),
# then exports the loader's driver list: VK_DRIVER_FILES (loader 1.3.207
# and later) and VK_ICD_FILENAMES (older loaders). A machine with a real
# GPU keeps using it outside the test run.
#
# Sourced, so it must not `exit` or `set -e` the caller's shell.

qins_vulkan_env() {
    local icd_dirs="/usr/share/vulkan/icd.d /etc/vulkan/icd.d"
    local icd=""
    qins_find_lavapipe() {
        local dir file
        for dir in $icd_dirs; do
            for file in "$dir"/lvp_icd.*.json; do
                [ -f "$file" ] && { echo "$file"; return 0; }
            done
        done
        return 1
    }
    qins_has_vulkan_loader() {
        ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1 '
    }

    if ! icd="$(qins_find_lavapipe)" || ! qins_has_vulkan_loader; then
        echo "== installing mesa-vulkan-drivers libvulkan1 (apt-get)"
        local sudo=""
        if [ "$(id -u)" != 0 ]; then
            command -v sudo >/dev/null || {
                echo "vulkan-env: lavapipe is missing and apt-get needs root" >&2
                return 1
            }
            sudo="sudo"
        fi
        DEBIAN_FRONTEND=noninteractive $sudo apt-get update >/dev/null &&
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends \
                mesa-vulkan-drivers libvulkan1 >/dev/null || {
            echo "vulkan-env: could not install mesa-vulkan-drivers libvulkan1" >&2
            return 1
        }
        icd="$(qins_find_lavapipe)" || {
            echo "vulkan-env: no lvp_icd.*.json under $icd_dirs after installing" >&2
            return 1
        }
    fi
    export VK_DRIVER_FILES="$icd"
    export VK_ICD_FILENAMES="$icd"
    echo "== Vulkan driver: $icd"
}

qins_vulkan_env
