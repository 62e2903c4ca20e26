#!/bin/sh
# Entry point of the registry image: apply the database migrations (retrying
# until the database answers, for at most REGISTRY_MIGRATE_TIMEOUT seconds),
# then run `registry "$@"` (serve, worker, label-serve, model-server, ...).
#
# `model-server` follows TF Serving's own image: with MODEL_NAME set and no
# --model_base_path or --model_config_file given, it serves
# ${MODEL_BASE_PATH:-/models}/${MODEL_NAME} on gRPC 8500 and REST 8501, so
# `docker run -e MODEL_NAME=half_plus_two -v ...:/models/half_plus_two IMAGE model-server`
# works as it does with tensorflow/serving.
#
#   REGISTRY_MIGRATE_TIMEOUT  seconds to keep retrying `registry migrate` (default 120)
#   REGISTRY_SKIP_MIGRATE=1   start without migrating (another container did it)
set -eu

case "${1:-}" in
    serve|worker|label-serve|model-server|migrate|gc|export-serving|saved-models) needs_database=1 ;;
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

if [ "${1:-}" = model-server ] && [ -n "${MODEL_NAME:-}" ]; then
    case " $* " in
        *" --model_base_path"*|*" --model_config_file"*) ;;
        *)
            shift
            exec registry model-server --port=8500 --rest_api_port=8501 --model_name="$MODEL_NAME" \
                --model_base_path="${MODEL_BASE_PATH:-/models}/$MODEL_NAME" "$@"
            ;;
    esac
fi

exec registry "$@"
