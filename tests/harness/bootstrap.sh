#!/usr/bin/env bash
# Install what fleetpatch's test suites need on a Debian 12 machine, skipping whatever is already there:
# Debian packages (as root), the Python venv, the containers.conf podman needs on this kind of machine, the
# offline get-pip stand-in for ansible-test and, with --image, the local test-node image.
# Usage: tests/harness/bootstrap.sh [--image]
set -euo pipefail
# shellcheck source=tests/harness/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FP_HARNESS_DIR="${FP_REPO_ROOT}/tests/harness"
FP_APT_PACKAGES=(podman runc debootstrap catatonit shellcheck python3-venv prometheus openssh-client chromium zstd postgresql)
FP_CONTAINERS_CONF="${FLEETPATCH_CONTAINERS_CONF:-/etc/containers/containers.conf}"

# The settings podman needs here: hybrid cgroups (crun refuses them), no CAP_SYS_RESOURCE (podman's default
# root rlimits of 1048576 cannot be set), no network unless asked for, no journald for events.
FP_CONTAINERS_CONF_TEXT='# Written by fleetpatch tests/harness/bootstrap.sh (podman on hybrid cgroups, no CAP_SYS_RESOURCE).
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
netns = "none"          # no network unless a caller asks for one

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
'

fp_missing_packages() {
    local pkg status
    for pkg in "${FP_APT_PACKAGES[@]}"; do
        # shellcheck disable=SC2016  # dpkg-query's own format string, not a shell expansion
        status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
        [[ "$status" == installed ]] || printf '%s\n' "$pkg"
    done
}

fp_bootstrap_packages() {
    local -a missing
    if ! command -v dpkg-query >/dev/null; then
        fp_warn "not a Debian system: install ${FP_APT_PACKAGES[*]} yourself"
        return 0
    fi
    mapfile -t missing < <(fp_missing_packages)
    if ((${#missing[@]} == 0)); then
        fp_log "Debian packages present: ${FP_APT_PACKAGES[*]}"
        return 0
    fi
    if ! fp_is_root; then
        fp_warn "missing Debian packages (${missing[*]}): run as root to install them; stages that need them will fail"
        return 0
    fi
    fp_log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y "${missing[@]}"
}

fp_venv_usable() {
    [[ -x "${FP_VENV}/bin/python" ]] && "${FP_VENV}/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

fp_bootstrap_venv() {
    local requirements="${FP_REPO_ROOT}/requirements-dev.txt"
    local stamp="${FP_VENV}/.fleetpatch-requirements.sha256"
    local python="${FLEETPATCH_PYTHON:-python3}"
    local want have=""
    want="$(sha256sum "$requirements" | cut -d' ' -f1)"
    if ! fp_venv_usable; then
        command -v "$python" >/dev/null || fp_die "no ${python} to create the venv with (set FLEETPATCH_PYTHON)"
        fp_log "creating ${FP_VENV} with $("$python" --version 2>&1)"
        rm -rf "${FP_VENV}"
        "$python" -m venv "${FP_VENV}"
    fi
    [[ -f "$stamp" ]] && have="$(<"$stamp")"
    if [[ "$have" == "$want" ]]; then
        fp_log "venv matches requirements-dev.txt (sha256 ${want:0:12})"
        return 0
    fi
    have="${have:-none}"
    fp_log "installing requirements-dev.txt into ${FP_VENV} (sha256 ${want:0:12}, last install ${have:0:12})"
    "${FP_VENV}/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    printf '%s\n' "$want" >"$stamp"
}

# Exit 0 when FILE already holds every setting of FP_CONTAINERS_CONF_TEXT.
fp_containers_conf_ok() {
    [[ -f "$1" ]] || return 1
    "${FP_VENV}/bin/python" - "$1" "$FP_CONTAINERS_CONF_TEXT" <<'PY'
import sys
import tomllib

with open(sys.argv[1], "rb") as handle:
    try:
        have = tomllib.load(handle)
    except tomllib.TOMLDecodeError:
        sys.exit(1)
want = tomllib.loads(sys.argv[2])
for table, settings in want.items():
    for key, value in settings.items():
        if have.get(table, {}).get(key) != value:
            sys.exit(1)
PY
}

fp_bootstrap_containers_conf() {
    local conf="$FP_CONTAINERS_CONF" backup tmp
    if fp_containers_conf_ok "$conf"; then
        fp_log "${conf} already has the podman settings (runc, cgroupfs, ulimits, netns none)"
        return 0
    fi
    if ! fp_is_root; then
        fp_warn "${conf} lacks the podman settings this machine needs; run as root to write it"
        return 0
    fi
    mkdir -p "$(dirname "$conf")"
    if [[ -e "$conf" ]]; then
        backup="${conf}.fleetpatch-backup-$(date +%Y%m%d%H%M%S)"
        cp -p "$conf" "$backup"
        fp_log "backed up the existing ${conf} to ${backup}"
    fi
    tmp="$(mktemp "${conf}.XXXXXX")"
    printf '%s' "$FP_CONTAINERS_CONF_TEXT" >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$conf"
    fp_log "wrote ${conf}"
}

# ansible-test downloads get-pip from a host that may be unreachable; put the offline stand-in in its cache.
fp_bootstrap_get_pip() {
    local standin="${FP_HARNESS_DIR}/get_pip_standin.py" version dest
    version="$("${FP_VENV}/bin/python" - <<'PY'
import pathlib
import re

import ansible_test

source = pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
match = re.search(r"\bpip='([0-9.]+)'", source.read_text(encoding="utf-8"))
print(match.group(1) if match else "24.2")
PY
)"
    dest="${HOME}/.ansible/test/cache/get_pip_${version//./_}.py"
    if cmp -s "$standin" "$dest"; then
        fp_log "ansible-test get-pip stand-in in place: ${dest}"
    elif [[ -e "$dest" ]] && ! grep -q 'Offline stand-in for the get-pip' "$dest"; then
        fp_log "ansible-test has a real get-pip ${version} cached (${dest}); keeping it"
    else
        install -D -m 0644 "$standin" "$dest"
        fp_log "installed the ansible-test get-pip stand-in: ${dest}"
    fi
}

main() {
    local with_image=false arg
    for arg in "$@"; do
        case "$arg" in
            --image) with_image=true ;;
            *) fp_die "bootstrap.sh: unknown argument: ${arg}" ;;
        esac
    done
    cd "$FP_REPO_ROOT"
    fp_bootstrap_packages
    fp_bootstrap_venv
    fp_bootstrap_containers_conf
    fp_bootstrap_get_pip
    if [[ "$with_image" == true ]]; then
        "${FP_HARNESS_DIR}/image.sh"
    fi
}

main "$@"
