#!/bin/sh
# Entry point of the registry image: apply the database migrations (retrying
# until the database answers, for at most REGISTRY_MIGRATE_TIMEOUT seconds),
# then run `registry "$@"` (serve, worker, label-serve, ...).
#
#   REGISTRY_MIGRATE_TIMEOUT  seconds to keep retrying `registry migrate` (default 120)
#   REGISTRY_SKIP_MIGRATE=1   start without migrating (another container did it)
set -eu

case "${1:-}" in
    serve|worker|label-serve|migrate|gc|export-serving|saved-models) needs_database=1 ;;
    *) needs_database=0 ;;  # push, pull, ls, --help...: no database here
esac

if [ "$needs_database" = 1 ] && [ "${REGISTRY_SKIP_MIGRATE:-0}" != 1 ]; then
    timeout="${REGISTRY_MIGRATE_TIMEOUT:-120}"
    started=$(date +%s)
    until registry migrate; do
        elapsed=$(( $(date +%s) - started ))
        if [ "$elapsed" -ge "$timeout" ]; then
            echo "registry-entrypoint: database still not migrated after ${elapsed}s; giving up" >&2
            exit 1
        fi
        echo "registry-entrypoint: database not ready (${elapsed}s); retrying in 2s" >&2
        sleep 2
    done
    if [ "$1" = migrate ]; then
        exit 0
    fi
fi

exec registry "$@"
