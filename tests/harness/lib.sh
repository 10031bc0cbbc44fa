# shellcheck shell=bash
# Shared helpers for fleetpatch's test harness; sourced by bin/test and tests/harness/*.sh.
# It sets no shell options itself: every caller runs with `set -euo pipefail`.

# Repository root, whatever directory the caller was started from.
FP_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
FP_VENV="${FP_REPO_ROOT}/.venv"
FP_IMAGE="${FLEETPATCH_TEST_IMAGE:-localhost/fleet-node:bookworm}"
export FP_REPO_ROOT FP_VENV FP_IMAGE

fp_log() {
    printf '[fleetpatch-test] %s\n' "$*"
}

fp_warn() {
    printf '[fleetpatch-test] WARNING: %s\n' "$*" >&2
}

fp_die() {
    printf '[fleetpatch-test] ERROR: %s\n' "$*" >&2
    exit 1
}

fp_section() {
    printf '\n==================== %s ====================\n' "$*"
}

fp_is_root() {
    [[ "$(id -u)" -eq 0 ]]
}

# Put the venv first on PATH so ansible, molecule, ansible-test and python3.11 all come from it.
fp_activate_venv() {
    [[ -x "${FP_VENV}/bin/python" ]] || fp_die "no virtual environment at ${FP_VENV}: run bin/test (bootstrap) first"
    export VIRTUAL_ENV="${FP_VENV}"
    export PATH="${FP_VENV}/bin:${PATH}"
    hash -r
}

# Seconds since the epoch, for stage timings.
fp_now() {
    date +%s
}
