#!/usr/bin/env bash
# ansible-test sanity over a copy of the collection at .../ansible_collections/fleetpatch/rollout (the layout
# ansible-test requires), with no ignore files, then shellcheck over the shell entry points in bin/ and .ci/
# (ansible-test's shellcheck test only looks at *.sh files, and it would read bin/ files as Python).
# Usage: tests/harness/sanity.sh [ansible-test sanity options, e.g. --test pylint]
set -euo pipefail
# shellcheck source=tests/harness/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

fp_is_python_script() {
    [[ "$1" == *.py ]] || head -n 1 "$1" | grep -q '^#!.*python'
}

# bin/ and .ci/ scripts that are not Python (ansible-test's shellcheck test only covers *.sh files).
fp_shell_entry_points() {
    local path
    for path in "${FP_REPO_ROOT}"/bin/* "${FP_REPO_ROOT}"/.ci/*; do
        [[ -f "$path" ]] && ! fp_is_python_script "$path" && head -n 1 "$path" | grep -Eq '^#!.*(ba)?sh' &&
            printf '%s\n' "${path#"${FP_REPO_ROOT}"/}"
    done
    return 0
}

# Files of the collection, NUL-separated: tracked plus untracked-but-not-ignored files in a git checkout (what
# ansible-test itself would look at), every file otherwise. Never the venv, nor collections/: the dev symlink, and the
# fleetpatch.demo collection, which is not part of this one (galaxy.yml does not ship it).
fp_collection_files() {
    local path
    if git -C "$FP_REPO_ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git -C "$FP_REPO_ROOT" ls-files -z --cached --others --exclude-standard
    else
        (cd "$FP_REPO_ROOT" && find . \( -path ./.venv -o -path ./collections -o -path ./.git -o -path ./tests/output \) \
            -prune -o \( -type f -o -type l \) -printf '%P\0')
    fi | while IFS= read -r -d '' path; do
        case "$path" in
            .venv/* | collections/* | tests/output/*) continue ;;
            # ansible-test reads every file under bin/ as Python (compile, pep8, pylint): copy only the Python
            # ones; the shell entry points there are shellchecked below (and galaxy.yml does not ship bin/).
            bin/*) fp_is_python_script "${FP_REPO_ROOT}/${path}" || continue ;;
        esac
        # tracked files deleted in the work tree are still listed by git
        [[ -e "${FP_REPO_ROOT}/${path}" || -L "${FP_REPO_ROOT}/${path}" ]] && printf '%s\0' "$path"
    done
}

main() {
    local workdir collection rc=0
    local -a scripts
    fp_activate_venv
    command -v shellcheck >/dev/null ||
        fp_die "shellcheck is not installed: ansible-test would skip its shellcheck test (bin/test installs it as root)"
    if compgen -G "${FP_REPO_ROOT}/tests/sanity/ignore-*.txt" >/dev/null; then
        fp_die "tests/sanity/ has ignore files; fix the findings instead: $(ls "${FP_REPO_ROOT}"/tests/sanity/ignore-*.txt)"
    fi

    workdir="$(mktemp -d "${TMPDIR:-/tmp}/fleetpatch-sanity.XXXXXX")"
    # shellcheck disable=SC2064  # expand now: the trap must remove this very directory
    trap "rm -rf '${workdir}'" EXIT
    collection="${workdir}/ansible_collections/fleetpatch/rollout"
    mkdir -p "$collection"
    fp_collection_files | (cd "$FP_REPO_ROOT" && tar --null --no-recursion -T - -cf -) | tar -C "$collection" -xf -
    fp_log "copied $(find "$collection" -type f | wc -l) files to ${collection}"

    (cd "$collection" && ansible-test sanity --python 3.11 --local "$@") || rc=$?

    # keep ansible-test's output (junit, bot reports) where CI and humans look for it
    if [[ -d "${collection}/tests/output" ]]; then
        rm -rf "${FP_REPO_ROOT}/tests/output/sanity"
        mkdir -p "${FP_REPO_ROOT}/tests/output"
        cp -a "${collection}/tests/output" "${FP_REPO_ROOT}/tests/output/sanity"
    fi

    mapfile -t scripts < <(fp_shell_entry_points)
    if ((${#scripts[@]})); then
        fp_log "shellcheck over the shell entry points ansible-test does not check: ${scripts[*]}"
        (cd "$FP_REPO_ROOT" && shellcheck -x "${scripts[@]}") || rc=$?
    fi
    return "$rc"
}

main "$@"
