#!/usr/bin/env bash
# The container's entry point: run one stage, the main job or any other command of the
# workflow, with the store wherever WORKFLOW_STORE says (an object store in a Job).
#
#   deploy/entrypoint.sh COMMAND [ARGS...]
#
# COMMAND is a stage (preprocess, extract, train, add, prefilter, evaluate, duplicates),
# run_all (the main job: scripts/run_all.py), search, serve, status, remove or reset.
# ARGS are that command's own options (`deploy/entrypoint.sh COMMAND --help` lists them).
# Where WORKFLOW_STORE is set and ARGS hold no --store, `--store "$WORKFLOW_STORE"` is
# added. The interpreter is $PYTHON (default: python). Relative paths in ARGS are taken
# from the directory it is started in; the scripts are found from this file's place.
#
# Exit status: the command's own, unchanged (the command replaces this shell), and what
# a Kubernetes Job with restartPolicy OnFailure does with it:
#   0    the command is complete: the container ends, the Job completes and its pod's
#        GPU is released.
#   3    the stage stopped early on purpose (--max-minutes) and has work left. It is
#        passed on as a failure, so the Job restarts the container and the same command
#        resumes from the checkpoints in the store. It is not looped over here: a run
#        that gave itself --max-minutes asked for a pod of bounded length, and a loop
#        would undo that. In a Job, leave --max-minutes out (no session limit to beat);
#        each restart counts against the Job's backoffLimit.
#   2    an error that needs a fix (the log says which). Kubernetes retries it until
#        the backoffLimit, with its back-off; fix it, delete the Job and apply it again.
#   130, 137, 143 and other non-zero statuses: interrupted or killed (a preempted or
#        drained node, the memory limit). The container, or a new pod on another node,
#        runs the same command again and each stage resumes from its committed shards,
#        redoing at most the one in flight; the results are the same bytes.
set -euo pipefail

# ordered, for the usage text; "all" is accepted as another name for run_all
COMMANDS=(preprocess extract train add prefilter search evaluate duplicates run_all serve
          status remove reset)

usage() {
    cat <<USAGE
usage: $(basename "$0") COMMAND [ARGS...]

commands: ${COMMANDS[*]}
  COMMAND --help       the options of one command
  WORKFLOW_STORE       the store (--store) where ARGS name none${WORKFLOW_STORE:+ [now: $WORKFLOW_STORE]}
  PYTHON               the interpreter [default: python]
USAGE
}

script_of() {  # the script of a command, or "" for the ones run as `python -m workflow`
    case "$1" in
        preprocess) echo 01_preprocess.py ;;
        extract) echo 02_extract.py ;;
        train) echo 03_train.py ;;
        add) echo 04_add.py ;;
        prefilter) echo 05_prefilter.py ;;
        search) echo 06_search.py ;;
        evaluate) echo 07_evaluate.py ;;
        duplicates) echo 08_duplicates.py ;;
        run_all | all) echo run_all.py ;;
        serve) echo serve.py ;;
        status | remove | reset) echo "" ;;
        *) return 1 ;;
    esac
}

if [[ $# -eq 0 ]]; then
    usage >&2
    exit 2
fi
if [[ "$1" == "-h" || "$1" == "--help" || "$1" == "help" ]]; then
    usage
    exit 0
fi

command="$1"
shift
if ! script="$(script_of "$command")"; then
    echo "$(basename "$0"): unknown command '$command'; the commands are: ${COMMANDS[*]}" >&2
    exit 2
fi

here="$(readlink -f "${BASH_SOURCE[0]}" 2>/dev/null || echo "${BASH_SOURCE[0]}")"
root="$(cd "$(dirname "$here")/.." && pwd)"
python="${PYTHON:-python}"

args=("$@")
if [[ -n "${WORKFLOW_STORE:-}" ]]; then
    has_store=0
    for a in "$@"; do
        case "$a" in --store | --store=*) has_store=1 ;; esac
    done
    if [[ $has_store -eq 0 ]]; then
        args+=(--store "$WORKFLOW_STORE")
    fi
fi

if [[ -n "$script" ]]; then
    exec "$python" "$root/scripts/$script" ${args[@]+"${args[@]}"}
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m workflow "$command" ${args[@]+"${args[@]}"}
