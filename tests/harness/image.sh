#!/usr/bin/env bash
# Build the local test-node image (Debian bookworm minbase + python3, procps, iproute2, and openssh-client: a node that
# verifies artifact signatures runs ssh-keygen) with debootstrap and `podman import`, without any container registry.
# Does nothing when the image exists with the same package list (its label says which).
# Usage: tests/harness/image.sh [--rebuild]
set -euo pipefail
# shellcheck source=tests/harness/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FP_DEBIAN_MIRROR="${FLEETPATCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
FP_IMAGE_PACKAGES="python3,procps,iproute2,openssh-client"

main() {
    local rebuild=false arg rootfs
    for arg in "$@"; do
        case "$arg" in
            --rebuild) rebuild=true ;;
            *) fp_die "image.sh: unknown argument: ${arg}" ;;
        esac
    done
    command -v podman >/dev/null || fp_die "podman is not installed (bin/test installs it when run as root)"
    if podman image exists "$FP_IMAGE"; then
        if [[ "$rebuild" == false ]] &&
            [[ "$(podman image inspect --format '{{ index .Labels "fleetpatch.packages" }}' "$FP_IMAGE")" == "$FP_IMAGE_PACKAGES" ]]; then
            fp_log "image ${FP_IMAGE} exists"
            return 0
        fi
        podman image rm --force "$FP_IMAGE" >/dev/null
    fi
    command -v debootstrap >/dev/null || fp_die "debootstrap is not installed (bin/test installs it when run as root)"
    fp_is_root || fp_die "building ${FP_IMAGE} with debootstrap needs root"

    rootfs="$(mktemp -d "${TMPDIR:-/var/tmp}/fleet-node-rootfs.XXXXXX")"
    # shellcheck disable=SC2064  # expand now: the trap must remove this very directory
    trap "rm -rf '${rootfs}' '${rootfs}.log'" EXIT
    fp_log "debootstrap bookworm (minbase + ${FP_IMAGE_PACKAGES}) from ${FP_DEBIAN_MIRROR}"
    debootstrap --variant=minbase --include="$FP_IMAGE_PACKAGES" bookworm "$rootfs" "$FP_DEBIAN_MIRROR" \
        >"${rootfs}.log" 2>&1 || {
        tail -n 40 "${rootfs}.log" >&2
        fp_die "debootstrap failed"
    }
    rm -rf "${rootfs}/var/cache/apt/archives/"*.deb "${rootfs}/var/lib/apt/lists/"*
    fp_log "importing ${FP_IMAGE}"
    tar -C "$rootfs" --numeric-owner -c . |
        podman import --quiet --change 'CMD ["sleep", "infinity"]' --change "LABEL fleetpatch.packages=${FP_IMAGE_PACKAGES}" \
            - "$FP_IMAGE" >/dev/null
    fp_log "built ${FP_IMAGE} ($(podman image inspect --format '{{.Size}}' "$FP_IMAGE") bytes)"
}

main "$@"
