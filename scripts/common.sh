# Shared by scripts/serve and scripts/test: make sure the system libraries the build needs
# are present, installing them with apt-get when possible. Sourced, not run.

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The cache outside the repository (virtualenvs, test servers, CI build output).
XIAOZHI_CACHE_DIR="${XIAOZHI_CACHE_DIR:-${HOME:-/tmp}/.cache/xiaozhi-gateway}"
export XIAOZHI_CACHE_DIR

# Installs Debian packages if any is missing (needs root or sudo).
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get: install them by hand"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    log "installing ${missing[*]}"
    $sudo apt-get update -qq >&2 || log "apt-get update failed; trying the install anyway"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2 \
        || die "could not install ${missing[*]}"
}

# What building the gateway needs: a C toolchain, pkg-config and libopus.
ensure_build_deps() {
    command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs), version 1.95 or newer"
    if ! pkg-config --exists opus 2>/dev/null || ! command -v cc >/dev/null; then
        apt_install pkg-config libopus-dev gcc
    fi
}
