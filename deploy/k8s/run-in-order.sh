#!/usr/bin/env bash
# Preprocessing on CPU nodes, then the main job on a GPU: applies
# deploy/k8s/preprocess-job.yaml and waits until that Job is complete, then applies
# deploy/k8s/job.yaml and waits until it is complete. The GPU is asked for only once
# the images are ready, and released when the main job is done.
#
#   deploy/k8s/run-in-order.sh [KUBECTL OPTIONS...]      e.g. -n images --context prod
#
# Edit both manifests first (image, --source, WORKFLOW_STORE). A failed Job stops it
# (exit status 1) and the GPU Job is not started; delete the failed Job, fix, and run
# this again: a Job already complete is passed over, and every stage resumes from the
# store. Interrupting this script leaves the Jobs running.
#
# Environment: KUBECTL, the kubectl command [default: kubectl]; POLL_SECONDS, how often
# a Job's status is read [default: 30].
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kubectl="${KUBECTL:-kubectl}"
poll="${POLL_SECONDS:-30}"
options=("$@")

k() {
    "$kubectl" ${options[@]+"${options[@]}"} "$@"
}

run_job() {  # MANIFEST: apply it, then wait until its Job is complete (0) or failed (1)
    local manifest="$1" job state
    job="$(k apply -f "$manifest" -o name)"
    echo "$job: applied ($manifest)"
    while :; do
        state="$(k get "$job" -o 'jsonpath={.status.conditions[?(@.status=="True")].type}')"
        case " $state " in
            *" Complete "*)
                echo "$job: complete"
                return 0 ;;
            *" Failed "*)
                echo "$job: failed; its log: kubectl logs $job; then kubectl delete $job," \
                     "fix, and run this again" >&2
                return 1 ;;
        esac
        sleep "$poll"
    done
}

run_job "$here/preprocess-job.yaml"
run_job "$here/job.yaml"
