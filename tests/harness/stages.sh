#!/usr/bin/env bash
# One test stage of bin/test (sanity has its own script, sanity.sh), run from the repo root with the venv on
# PATH. A pytest stage with nothing to collect exits 5, which bin/test reports as "no tests". Each stage
# execs its tool, so that bin/test's time limit signals the tool itself (pytest under ansible-runner ignores
# SIGTERM; `timeout` follows up with SIGKILL only while the process it started is alive).
# Usage: tests/harness/stages.sh unit|lint|release|integration|molecule [extra arguments for the tool]
set -euo pipefail
# shellcheck source=tests/harness/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FP_NO_TESTS=5

# pytest over DIR; a missing DIR (git keeps no empty directories) counts as "no tests", like pytest's own 5.
fp_pytest() {
    local dir="$1"
    shift
    if [[ ! -d "$dir" ]]; then
        fp_warn "${dir} does not exist: no tests to run"
        return "$FP_NO_TESTS"
    fi
    exec pytest "$dir" "$@"
}

stage_unit() {
    fp_pytest tests/unit -q "$@"
}

# galaxy-importer, antsibull-docs (lint and docsite), antsibull-changelog: tests/release/test_release.py.
stage_release() {
    fp_pytest tests/release -q -p no:cacheprovider "$@"
}

stage_integration() {
    fp_pytest tests/integration -q -m integration "$@"
}

stage_lint() {
    # ansible-lint puts ~/.ansible/collections ahead of the repository's collections/ whatever the environment
    # says: a copy of this collection installed there (molecule's prerun leaves one) would be linted against
    # instead of the working tree, with bogus unknown-module findings.
    local shadow="${HOME}/.ansible/collections/ansible_collections/fleetpatch/rollout"
    if [[ -e "$shadow" && "$(realpath "$shadow")" != "$(realpath "$FP_REPO_ROOT")" ]]; then
        fp_die "${shadow} shadows this working tree for ansible-lint; it is usually left by a molecule run with
prerun enabled (tests/harness/molecule-base.yml turns it off). Remove it: rm -rf '${shadow}'"
    fi
    exec ansible-lint "$@"
}

# Container names are machine-wide and molecule keeps one ephemeral directory per checkout: two runs at once
# destroy each other's nodes. Runs through this harness wait for each other.
FP_MOLECULE_LOCK="${FLEETPATCH_MOLECULE_LOCK:-/tmp/fleetpatch-molecule.lock}"

stage_molecule() {
    if [[ "$#" -eq 0 ]]; then
        set -- test --all
    fi
    set -- --base-config "${FP_REPO_ROOT}/tests/harness/molecule-base.yml" "$@"
    exec 9>>"$FP_MOLECULE_LOCK"
    if ! flock --nonblock 9; then
        fp_log "another molecule run holds ${FP_MOLECULE_LOCK}; waiting for it"
        flock 9
    fi
    exec molecule "$@"
}

main() {
    [[ "$#" -ge 1 ]] || fp_die "usage: stages.sh unit|lint|release|integration|molecule [args]"
    local stage="$1"
    shift
    cd "$FP_REPO_ROOT"
    fp_activate_venv
    case "$stage" in
        unit | integration | lint | release | molecule) "stage_${stage}" "$@" ;;
        *) fp_die "stages.sh: unknown stage: ${stage}" ;;
    esac
}

main "$@"
