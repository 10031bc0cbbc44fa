#!/usr/bin/env bash
# ansible-test sanity over a copy of the collection at .../ansible_collections/fleetpatch/rollout (the layout
# ansible-test requires), with no ignore files, then over a copy of the demo collection (fleetpatch.demo) beside it,
# then shellcheck over the shell entry points in bin/ and .ci/ (ansible-test's shellcheck test only looks at *.sh
# files, and it would read bin/ files as Python).
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

# The demo fleet's own collection, fleetpatch.demo (not shipped): checked in a second pass, beside the copy of
# fleetpatch.rollout whose host-side module_utils its module imports.
FP_DEMO_DIR="collections/ansible_collections/fleetpatch/demo"

# Files of fleetpatch.demo, NUL-separated, relative to its directory (chosen as fp_collection_files chooses).
fp_demo_files() {
    local path demo="${FP_REPO_ROOT}/${FP_DEMO_DIR}"
    if git -C "$FP_REPO_ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git -C "$demo" ls-files -z --cached --others --exclude-standard
    else
        (cd "$demo" && find . -path ./tests/output -prune -o -type f -printf '%P\0')
    fi | while IFS= read -r -d '' path; do
        [[ -e "${demo}/${path}" ]] && printf '%s\0' "$path"
    done
}

# fp_sanity COLLECTION_DIR OUTPUT_NAME [ansible-test options]: ansible-test sanity in one copied collection; its output
# (junit, bot reports) is kept in tests/output/OUTPUT_NAME, where CI and humans look for it.
fp_sanity() {
    local collection="$1" output="${FP_REPO_ROOT}/tests/output/$2" rc=0
    shift 2
    (cd "$collection" && ansible-test sanity --python 3.11 --local "$@") || rc=$?
    if [[ -d "${collection}/tests/output" ]]; then
        rm -rf "$output"
        mkdir -p "${FP_REPO_ROOT}/tests/output"
        cp -a "${collection}/tests/output" "$output"
    fi
    return "$rc"
}

main() {
    local workdir collection demo rc=0
    local -a scripts
    fp_activate_venv
    command -v shellcheck >/dev/null ||
        fp_die "shellcheck is not installed: ansible-test would skip its shellcheck test (bin/test installs it as root)"
    if compgen -G "${FP_REPO_ROOT}/tests/sanity/ignore-*.txt" >/dev/null ||
        compgen -G "${FP_REPO_ROOT}/${FP_DEMO_DIR}/tests/sanity/ignore-*.txt" >/dev/null; then
        fp_die "sanity ignore files found; fix the findings instead: $(ls "${FP_REPO_ROOT}"/{,"${FP_DEMO_DIR}"/}tests/sanity/ignore-*.txt 2>/dev/null)"
    fi

    workdir="$(mktemp -d "${TMPDIR:-/tmp}/fleetpatch-sanity.XXXXXX")"
    # shellcheck disable=SC2064  # expand now: the trap must remove this very directory
    trap "rm -rf '${workdir}'" EXIT
    collection="${workdir}/ansible_collections/fleetpatch/rollout"
    mkdir -p "$collection"
    fp_collection_files | (cd "$FP_REPO_ROOT" && tar --null --no-recursion -T - -cf -) | tar -C "$collection" -xf -
    fp_log "copied $(find "$collection" -type f | wc -l) files to ${collection}"

    fp_sanity "$collection" sanity "$@" || rc=$?

    demo="${workdir}/ansible_collections/fleetpatch/demo"
    mkdir -p "$demo"
    fp_demo_files | (cd "${FP_REPO_ROOT}/${FP_DEMO_DIR}" && tar --null --no-recursion -T - -cf -) | tar -C "$demo" -xf -
    fp_log "copied $(find "$demo" -type f | wc -l) files of fleetpatch.demo to ${demo}"
    fp_sanity "$demo" sanity-demo "$@" || rc=$?

    mapfile -t scripts < <(fp_shell_entry_points)
    if ((${#scripts[@]})); then
        fp_log "shellcheck over the shell entry points ansible-test does not check: ${scripts[*]}"
        (cd "$FP_REPO_ROOT" && shellcheck -x "${scripts[@]}") || rc=$?
    fi
    return "$rc"
}

main "$@"
