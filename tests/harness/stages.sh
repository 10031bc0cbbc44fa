#!/usr/bin/env bash
# One test stage of bin/test (sanity has its own script, sanity.sh), run from the repo root with the venv on
# PATH. A pytest stage with nothing to collect exits 5, which bin/test reports as "no tests".
# Usage: tests/harness/stages.sh unit|lint|integration|molecule [extra arguments for the tool]
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
    pytest "$dir" "$@"
}

stage_unit() {
    fp_pytest tests/unit -q "$@"
}

stage_integration() {
    fp_pytest tests/integration -q -m integration "$@"
}

stage_lint() {
    ansible-lint "$@"
}

stage_molecule() {
    if [[ "$#" -eq 0 ]]; then
        set -- test --all
    fi
    molecule "$@"
}

main() {
    [[ "$#" -ge 1 ]] || fp_die "usage: stages.sh unit|lint|integration|molecule [args]"
    local stage="$1"
    shift
    cd "$FP_REPO_ROOT"
    fp_activate_venv
    case "$stage" in
        unit | integration | lint | molecule) "stage_${stage}" "$@" ;;
        *) fp_die "stages.sh: unknown stage: ${stage}" ;;
    esac
}

main "$@"
