#!/bin/sh
# host's container entrypoint: one image for workers, checkers and the command line.
#
#   host-entrypoint worker [celery worker options]   a worker that drains before it stops
#   host-entrypoint healthcheck [options]            the health checker
#   host-entrypoint drain                            drain this container's worker and wait
#                                                    (a Kubernetes preStop hook)
#   host-entrypoint COMMAND ...                      `celery -A host COMMAND ...` (fleet, ingest)
#
# A worker stopped by SIGTERM (docker stop, Kubernetes, systemd) is first drained through the
# checker (a signed `fleet drain --stopping --wait`: nothing new starts on it, what it holds
# finishes), then given Celery's warm shutdown; all within STOP_GRACE seconds, after which it
# gets a cold shutdown (its unfinished messages go back to the broker: late acknowledgement).
#
# Variables (not HOST_ settings, which host validates):
#   WORKER_NAME    the worker's node name            (default worker@$(hostname))
#   DRAIN_TIMEOUT  seconds the drain may wait for in-flight work (default 60)
#   STOP_GRACE     seconds the whole stop may take   (default 120; the platform's own grace
#                  period must be at least this: docs/deploy.md has the arithmetic)
#   CELERY         the celery command                (default celery)
set -eu

role="${1:-worker}"
[ "$#" -gt 0 ] && shift
WORKER_NAME="${WORKER_NAME:-worker@$(hostname)}"
DRAIN_TIMEOUT="${DRAIN_TIMEOUT:-60}"
STOP_GRACE="${STOP_GRACE:-120}"
CELERY="${CELERY:-celery}"

say() {
    printf '{"event": "%s", "worker": "%s", "logger": "host-entrypoint"}\n' "$1" "$WORKER_NAME" >&2
}

drain() {
    # The checker's answer costs up to 5 s; --wait up to DRAIN_TIMEOUT; starting Python a few.
    timeout "$((DRAIN_TIMEOUT + 15))" "$CELERY" -A host fleet drain "$WORKER_NAME" --stopping \
        --wait --timeout "$DRAIN_TIMEOUT" --reason "$1"
}

case "$role" in
worker)
    stopping=0
    trap 'stopping=1' TERM INT
    "$CELERY" -A host worker -n "$WORKER_NAME" "$@" &
    pid=$!
    status=0
    while :; do
        wait "$pid" && status=0 || status=$?
        [ "$stopping" = 1 ] && break
        kill -0 "$pid" 2>/dev/null || exit "$status"
    done
    deadline=$(($(date +%s) + STOP_GRACE))
    say drain_before_stop
    if drain "stopping: signal to $(hostname)"; then
        say drained
    else
        say drain_failed_stopping_anyway
    fi
    kill -TERM "$pid" 2>/dev/null || true  # Celery's warm shutdown
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            say stop_grace_over_cold_shutdown
            kill -QUIT "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.5
    done
    wait "$pid" && status=0 || status=$?
    exit "$status"
    ;;
drain)
    drain "${1:-stopping: preStop}"
    ;;
healthcheck)
    exec "$CELERY" -A host healthcheck "$@"
    ;;
*)
    exec "$CELERY" -A host "$role" "$@"
    ;;
esac
