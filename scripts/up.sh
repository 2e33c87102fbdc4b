#!/usr/bin/env bash
# Bring the local Prefect stack up, in order:
#   1. a Prefect server on 127.0.0.1:$MNIST_PREFECT_PORT (default 4300) with its own
#      PREFECT_HOME (.prefect-local/home: SQLite database, result cache);
#   2. the `process` work pool named in prefect.yaml (local-process);
#   3. every deployment of prefect.yaml (`prefect --no-prompt deploy --all`, from the repo root);
#   4. one worker for the pool (runs one flow run at a time: --limit, default 1).
# Logs and pid files go to .prefect-local/{logs,run}/; scripts/down.sh stops everything.
# The worker passes its environment to the flow runs: export MNIST_PATH=/path/to/mnist.npz
# first if Keras cannot download MNIST on this machine.
set -euo pipefail
# `scripts/up.sh --team`: the team's stack instead (PostgreSQL, Redis, the Prefect server on
# PostgreSQL, a Dask cluster, the work pool and worker): scripts/team-up.sh, docs/team.md.
if [ "${1:-}" = "--team" ]; then
  shift
  exec "$(dirname "$0")/team-up.sh" "$@"
fi
# Job control: each background process gets its own process group (down.sh signals the group)
# and keeps the default SIGINT handling; without it, bash starts background commands with
# SIGINT ignored, and a Prefect worker (which turns SIGTERM into SIGINT) would not stop.
set -m
# shellcheck source=scripts/env.sh
source "$(dirname "$0")/env.sh"
cd "$MNIST_ROOT"

LOGS="$MNIST_LOCAL_DIR/logs"
RUN="$MNIST_LOCAL_DIR/run"
mkdir -p "$PREFECT_HOME" "$LOGS" "$RUN"

# shellcheck source=scripts/procs.sh
source "$MNIST_ROOT/scripts/procs.sh"  # running: a pid file's process is alive, not a zombie

# 1. the server ---------------------------------------------------------------------------
if running "$RUN/server.pid" prefect; then
  echo "server: already running (pid $(cat "$RUN/server.pid"))"
else
  echo "server: starting on $PREFECT_UI_URL (PREFECT_HOME=$PREFECT_HOME)"
  nohup prefect server start --host 127.0.0.1 --port "$MNIST_PREFECT_PORT" \
    >"$LOGS/server.log" 2>&1 </dev/null &
  echo $! >"$RUN/server.pid"
fi
if ! prefect server status --wait --timeout "${MNIST_SERVER_TIMEOUT:-120}" >/dev/null 2>&1; then
  echo "server: not healthy after ${MNIST_SERVER_TIMEOUT:-120} s; see $LOGS/server.log" >&2
  tail -20 "$LOGS/server.log" >&2 || true
  exit 1
fi
echo "server: up"

# 2. the work pool ------------------------------------------------------------------------
if prefect work-pool inspect "$MNIST_WORK_POOL" >/dev/null 2>&1; then
  echo "work pool: $MNIST_WORK_POOL exists"
else
  prefect work-pool create "$MNIST_WORK_POOL" --type process >/dev/null
  echo "work pool: $MNIST_WORK_POOL created (type process)"
fi

# 3. the deployments ----------------------------------------------------------------------
echo "deploy: prefect --no-prompt deploy --all (log: $LOGS/deploy.log)"
if ! prefect --no-prompt deploy --all --prefect-file prefect.yaml >"$LOGS/deploy.log" 2>&1; then
  echo "deploy failed:" >&2
  tail -30 "$LOGS/deploy.log" >&2
  exit 1
fi
prefect deployment ls

# 4. the worker ---------------------------------------------------------------------------
if running "$RUN/worker.pid" prefect; then
  echo "worker: already running (pid $(cat "$RUN/worker.pid"))"
else
  [ -n "${MNIST_PATH:-}" ] || echo "worker: note: MNIST_PATH is not set; runs without a" \
    "'data' parameter use Keras' cache or download"
  TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}" \
    nohup prefect worker start --pool "$MNIST_WORK_POOL" --type process \
    --limit "${MNIST_WORKER_LIMIT:-1}" --name "mnist-worker-$(hostname)" \
    >"$LOGS/worker.log" 2>&1 </dev/null &
  echo $! >"$RUN/worker.pid"
  echo "worker: started (pid $!, log: $LOGS/worker.log)"
fi

cat <<MSG

Up. UI: $PREFECT_UI_URL
In another shell:  source scripts/env.sh
  prefect deployment run 'grid-search/mnist' --param space='{"dropout":[0.0,0.5],"units":[16,64],"batch_size":[100],"epochs":1}' --param run='{"train_samples":10000}' --watch
Stop with:         scripts/down.sh
MSG
