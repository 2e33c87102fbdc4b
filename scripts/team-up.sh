#!/usr/bin/env bash
# The team's stack on this machine (`scripts/up.sh --team` runs this), in order:
#   1. PostgreSQL (its own cluster in $MNIST_TEAM_DIR/postgres, run as the `postgres` system
#      user when started as root; in that user's home where it cannot reach $MNIST_TEAM_DIR), with a database `prefect` and a database `optuna`;
#   2. Redis (password required; its leases kept in an append-only file): the trial locks
#      across machines;
#   3. the Prefect server on PostgreSQL;
#   4. a Dask scheduler and $MNIST_TEAM_DASK_WORKERS Dask worker processes (`--nworkers 1
#      --nthreads 1` each), each with its own working directory and PREFECT_HOME, as separate
#      machines would have;
#   5. the `process` work pool, every deployment of prefect.yaml, and the process worker.
# Then it writes $MNIST_TEAM_DIR/team.env (mode 0600): what a client needs (the Prefect API,
# the Redis lock URL, the Optuna storage on PostgreSQL, the shared result storage and data
# folder, the Dask scheduler's address): `source .prefect-local/team/team.env`.
# PostgreSQL and Redis are installed with apt-get if missing (MNIST_TEAM_INSTALL=0: never).
# Running it again starts only what is not running. Settings (ports, folders, the number of
# Dask workers): scripts/team-env.sh. Stop it all with `scripts/down.sh --team`.
# The workers pass their environment to the trials: export MNIST_PATH=/path/to/mnist.npz first
# if Keras cannot download MNIST on this machine.
set -euo pipefail
set -m  # each background process in its own process group (see up.sh)
# shellcheck source=scripts/team-env.sh
source "$(dirname "$0")/team-env.sh"
# shellcheck source=scripts/procs.sh
source "$(dirname "$0")/procs.sh"
cd "$MNIST_ROOT"
RUN="$TEAM_RUN"
H="$MNIST_TEAM_HOST"
mkdir -p "$MNIST_TEAM_DIR"  # with the usual umask: its parents stay reachable by PostgreSQL
chmod 755 "$MNIST_TEAM_DIR"  # PostgreSQL's user must reach its folder; the files stay 0600
umask 077
mkdir -p "$RUN" "$TEAM_LOGS" "$TEAM_SHARED/prefect-storage" "$TEAM_SHARED/data"
# the settings this stack runs with, for the next up.sh / down.sh (scripts/team-env.sh)
for name in "${TEAM_RECORDED[@]}"; do echo "$name=${!name:-}"; done >"$MNIST_TEAM_DIR/settings.env"

fail() { echo "team: $*" >&2; exit 1; }

# 0. the distribution's packages ------------------------------------------------------------
need=()
[ -n "$(pg_bindir)" ] || need+=(postgresql)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  [ "${MNIST_TEAM_INSTALL:-1}" = 1 ] || fail "missing ${need[*]} (MNIST_TEAM_INSTALL=0)"
  command -v apt-get >/dev/null || fail "missing ${need[*]}, and no apt-get to install them"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "packages: installing ${need[*]} (apt-get; log: $TEAM_LOGS/apt.log)"
  # the packages' own services are not started (policy-rc.d exit 101: no service starts)
  if ! { $sudo apt-get update && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y \
      --no-install-recommends "${need[@]}"; } >"$TEAM_LOGS/apt.log" 2>&1; then
    tail -20 "$TEAM_LOGS/apt.log" >&2
    fail "apt-get install ${need[*]} failed (log: $TEAM_LOGS/apt.log)"
  fi
fi
PGBIN="$(pg_bindir)"
[ -n "$PGBIN" ] || fail "PostgreSQL's programs not found under /usr/lib/postgresql"
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || fail "no 'postgres' system user to run PostgreSQL as"
  if [ ! -f "$MNIST_TEAM_DIR/postgres-dir" ] && ! runuser -u postgres -- test -x "$MNIST_TEAM_DIR"; then
    # a private parent folder (/root): PostgreSQL's data in its own user's home instead
    TEAM_PG_ROOT="$(getent passwd postgres | cut -d: -f6)/mnist-team-$(printf %s "$MNIST_TEAM_DIR" | sha256sum | cut -c1-12)"
    TEAM_PGDATA="$TEAM_PG_ROOT/data"
    TEAM_PGLOG="$TEAM_PG_ROOT/postgres.log"
    echo "postgres: $MNIST_TEAM_DIR is not reachable by the 'postgres' user; its data goes to $TEAM_PG_ROOT"
  fi
fi
echo "$TEAM_PG_ROOT" >"$MNIST_TEAM_DIR/postgres-dir"

# the secret: one generated password for PostgreSQL and Redis, readable by its owner only
if [ ! -s "$TEAM_SECRET" ]; then
  python3 -c "import secrets; print(secrets.token_hex(24))" >"$TEAM_SECRET"
fi
chmod 600 "$TEAM_SECRET"
SECRET="$(cat "$TEAM_SECRET")"

# 1. PostgreSQL -----------------------------------------------------------------------------
if [ ! -f "$TEAM_PGDATA/PG_VERSION" ]; then
  echo "postgres: creating the cluster in $TEAM_PGDATA"
  mkdir -p "$TEAM_PGDATA"
  pwfile="$TEAM_PG_ROOT/.pwfile"
  printf '%s\n' "$SECRET" >"$pwfile"
  if [ "$(id -u)" = 0 ]; then chown -R postgres: "$TEAM_PG_ROOT"; fi
  chmod 700 "$TEAM_PG_ROOT" "$TEAM_PGDATA"
  if ! as_pg "$PGBIN/initdb" -D "$TEAM_PGDATA" -U "$TEAM_PG_USER" --pwfile="$pwfile" \
      --auth=scram-sha-256 -E UTF8 --locale=C >"$TEAM_LOGS/initdb.log" 2>&1; then
    rm -f "$pwfile"
    tail -20 "$TEAM_LOGS/initdb.log" >&2
    fail "initdb failed (log: $TEAM_LOGS/initdb.log)"
  fi
  rm -f "$pwfile"
fi
# other machines (MNIST_TEAM_ALLOW, a CIDR such as 10.0.0.0/24): allowed in, with the password
if [ -n "${MNIST_TEAM_ALLOW:-}" ] &&
    ! as_pg grep -q "^host all all $MNIST_TEAM_ALLOW scram-sha-256" "$TEAM_PGDATA/pg_hba.conf"; then
  echo "host all all $MNIST_TEAM_ALLOW scram-sha-256" | as_pg tee -a "$TEAM_PGDATA/pg_hba.conf" >/dev/null
  as_pg "$PGBIN/pg_ctl" -D "$TEAM_PGDATA" reload >/dev/null 2>&1 || true
  echo "postgres: connections from $MNIST_TEAM_ALLOW allowed (with the password)"
fi
postmaster() { as_pg head -1 "$TEAM_PGDATA/postmaster.pid" 2>/dev/null || true; }
pg_start() {
  # no Unix socket: TCP on $H only, a password for every connection (scram-sha-256)
  as_pg "$PGBIN/pg_ctl" -D "$TEAM_PGDATA" -l "$TEAM_PGLOG" -w -t 60 start \
    -o "-c listen_addresses=$H -p $MNIST_TEAM_PG_PORT -c unix_socket_directories=''" \
    >/dev/null 2>>"$TEAM_LOGS/pg_ctl.log"
}
if alive "$(postmaster)" postgres; then
  echo "postgres: already running"
else
  # a postmaster that died a moment ago: PostgreSQL refuses to start while its pid file names
  # a process that still exists (a zombie not yet reaped), so wait for that one to go
  old="$(postmaster)"
  for _ in $(seq 150); do
    [ -n "$old" ] && [ -e "/proc/$old" ] || break
    sleep 0.2
  done
  echo "postgres: starting on $H:$MNIST_TEAM_PG_PORT"
  # once more after a few seconds: the killed postmaster's backends may still hold its memory
  if ! pg_start && ! { sleep 5; pg_start; }; then
    tail -5 "$TEAM_LOGS/pg_ctl.log" >&2 || true
    tail -20 "$TEAM_PGLOG" >&2 || true
    fail "PostgreSQL did not start (log: $TEAM_PGLOG)"
  fi
fi
psql_team() {
  PGPASSWORD="$SECRET" "$PGBIN/psql" -h "$H" -p "$MNIST_TEAM_PG_PORT" -U "$TEAM_PG_USER" \
    -d postgres -v ON_ERROR_STOP=1 -qtA "$@"
}
for db in prefect optuna; do
  if [ "$(psql_team -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
    psql_team -c "CREATE DATABASE $db" >/dev/null
    echo "postgres: database $db created"
  fi
done
echo "postgres: up (databases prefect, optuna)"

# 2. Redis ----------------------------------------------------------------------------------
# The leases are kept in an append-only file, written to disk every second: a restarted Redis
# (an upgrade, a crash) comes back with the leases it held (tasks/trial/locks.py; what a
# lost one costs: docs/team.md). No snapshots.
mkdir -p "$MNIST_TEAM_DIR/redis"
cat >"$MNIST_TEAM_DIR/redis/redis.conf" <<CONF
# written by scripts/team-up.sh (mode 0600: it holds the password)
bind $H
port $MNIST_TEAM_REDIS_PORT
protected-mode yes
requirepass $SECRET
dir $MNIST_TEAM_DIR/redis
save ""
appendonly yes
appendfsync everysec
daemonize no
CONF
chmod 600 "$MNIST_TEAM_DIR/redis/redis.conf"
if running "$RUN/redis.pid" redis-server; then
  echo "redis: already running (pid $(cat "$RUN/redis.pid"))"
else
  nohup redis-server "$MNIST_TEAM_DIR/redis/redis.conf" >"$TEAM_LOGS/redis.log" 2>&1 </dev/null &
  echo $! >"$RUN/redis.pid"
  echo "redis: starting on $H:$MNIST_TEAM_REDIS_PORT"
fi
for _ in $(seq 50); do
  [ "$(REDISCLI_AUTH="$SECRET" redis-cli -h "$H" -p "$MNIST_TEAM_REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
  sleep 0.2
done
[ "$(REDISCLI_AUTH="$SECRET" redis-cli -h "$H" -p "$MNIST_TEAM_REDIS_PORT" ping 2>/dev/null)" = PONG ] ||
  fail "Redis did not answer (log: $TEAM_LOGS/redis.log)"
echo "redis: up"

# the client environment --------------------------------------------------------------------
DASK_ADDRESS="tcp://$H:$MNIST_TEAM_DASK_PORT"
cat >"$TEAM_ENV" <<ENV
# The team stack's client settings, written by scripts/up.sh --team (mode 0600: it holds the
# password). Source it on every machine that submits runs or runs a worker:
#   source $TEAM_ENV
# On other machines, replace $H by this machine's address (docs/team.md).
export PREFECT_API_URL=http://$H:$MNIST_TEAM_PREFECT_PORT/api
export PREFECT_UI_URL=http://$H:$MNIST_TEAM_PREFECT_PORT
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_API_AUTH_STRING=$TEAM_PG_USER:$SECRET
# a run outlives a server restart: its client retries a lost connection 7 times, after 2, 4,
# ... 128 s (about 4 minutes in all; Prefect's default, 5, gives up after about one)
export PREFECT_CLIENT_MAX_RETRIES=7
# no server version check: Prefect makes it with a new client, which gives up at once on a
# refused connection (a client retries one only once it has connected): a Dask worker
# restarted while the server was away failed its first trial with "RuntimeError: Failed to
# reach API", and that ended the run. The stack's machines run one Prefect (docs/team.md).
export PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED=false
# ... and retries a 500 too: the server answers 500 while its PostgreSQL restarts
export PREFECT_CLIENT_RETRY_EXTRA_CODES=500
# Prefect's internal errors (an event it could not send while the server was away) go where
# other records go, a command's log file, instead of straight to the terminal
export PREFECT_LOGGING_LOGGERS_PREFECT_INTERNAL_PROPAGATE=true
export PREFECT_LOGGING_HANDLERS_DEBUG_LEVEL=CRITICAL
export PREFECT_RESULTS_LOCAL_STORAGE_PATH=$TEAM_SHARED/prefect-storage
export PIPELINE_DATA_DIR=$TEAM_SHARED/data
export PIPELINE_LOCKS=redis://:$SECRET@$H:$MNIST_TEAM_REDIS_PORT/0
export PIPELINE_OPTUNA_STORAGE=postgresql+psycopg://$TEAM_PG_USER:$SECRET@$H:$MNIST_TEAM_PG_PORT/optuna
export MNIST_DASK_ADDRESS=$DASK_ADDRESS
ENV
chmod 600 "$TEAM_ENV"
# shellcheck disable=SC1090
source "$TEAM_ENV"

# the Optuna schema, created once here (not by two tunes at once)
[ -f "$RUN/optuna-schema" ] || python3 -c "import optuna, sys; optuna.logging.set_verbosity(optuna.logging.WARNING); \
optuna.storages.RDBStorage(sys.argv[1])" "$PIPELINE_OPTUNA_STORAGE" \
  >"$TEAM_LOGS/optuna-schema.log" 2>&1 || {
  tail -5 "$TEAM_LOGS/optuna-schema.log" >&2
  fail "the Optuna storage on PostgreSQL could not be created (is the 'team' extra installed? pip install -e \".[team]\")"
}
touch "$RUN/optuna-schema"

# 3. the Prefect server on PostgreSQL -------------------------------------------------------
if running "$RUN/server.pid" prefect; then
  echo "server: already running (pid $(cat "$RUN/server.pid"))"
else
  echo "server: starting on $PREFECT_UI_URL (database: PostgreSQL, prefect)"
  mkdir -p "$MNIST_TEAM_DIR/server-home"
  PREFECT_HOME="$MNIST_TEAM_DIR/server-home" PREFECT_SERVER_API_AUTH_STRING="$TEAM_PG_USER:$SECRET" \
    PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://$TEAM_PG_USER:$SECRET@$H:$MNIST_TEAM_PG_PORT/prefect" \
    nohup prefect server start --host "$H" --port "$MNIST_TEAM_PREFECT_PORT" \
    >"$TEAM_LOGS/server.log" 2>&1 </dev/null &
  echo $! >"$RUN/server.pid"
fi
if ! PREFECT_HOME="$MNIST_TEAM_DIR/server-home" prefect server status --wait \
    --timeout "${MNIST_TEAM_SERVER_TIMEOUT:-180}" >/dev/null 2>&1; then
  tail -20 "$TEAM_LOGS/server.log" >&2 || true
  fail "the Prefect server is not healthy after ${MNIST_TEAM_SERVER_TIMEOUT:-180} s (log: $TEAM_LOGS/server.log)"
fi
echo "server: up"

# 4. Dask: the scheduler and the worker "machines" ------------------------------------------
if running "$RUN/dask-scheduler.pid" dask; then
  echo "dask scheduler: already running (pid $(cat "$RUN/dask-scheduler.pid"))"
else
  nohup dask scheduler --host "$H" --port "$MNIST_TEAM_DASK_PORT" \
    --dashboard-address "$H:$((MNIST_TEAM_DASK_PORT + 1))" \
    >"$TEAM_LOGS/dask-scheduler.log" 2>&1 </dev/null &
  echo $! >"$RUN/dask-scheduler.pid"
  echo "dask scheduler: starting on $DASK_ADDRESS"
fi
for i in $(seq "$MNIST_TEAM_DASK_WORKERS"); do
  name="dask-worker-$i"
  if running "$RUN/$name.pid" dask; then
    echo "$name: already running (pid $(cat "$RUN/$name.pid"))"
    continue
  fi
  machine="$MNIST_TEAM_DIR/machines/$name"  # its own working directory and Prefect home
  mkdir -p "$machine/prefect-home" "$machine/work"
  (cd "$machine" && PREFECT_HOME="$machine/prefect-home" TF_NUM_INTRAOP_THREADS=1 \
    TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}" \
    exec nohup dask worker "$DASK_ADDRESS" --nworkers 1 --nthreads 1 --name "team-$name" \
    --host "$H" --no-dashboard --dashboard-address "$H:0" \
    --local-directory "$machine/work" \
    >"$TEAM_LOGS/$name.log" 2>&1 </dev/null) &
  echo $! >"$RUN/$name.pid"
  echo "$name: started (pid $!, folder $machine)"
done
if ! python3 - "$DASK_ADDRESS" "$MNIST_TEAM_DASK_WORKERS" >"$TEAM_LOGS/dask-wait.log" 2>&1 <<'PY'
import sys

from distributed import Client

with Client(sys.argv[1], timeout=60) as client:
    client.wait_for_workers(int(sys.argv[2]), timeout=120)
PY
then
  tail -5 "$TEAM_LOGS/dask-wait.log" >&2
  fail "the Dask workers did not join $DASK_ADDRESS (logs: $TEAM_LOGS/dask-*.log)"
fi
echo "dask: up ($MNIST_TEAM_DASK_WORKERS workers on $DASK_ADDRESS)"

# 5. the work pool, the deployments, the process worker -------------------------------------
export PREFECT_HOME="$MNIST_TEAM_DIR/client-home"
mkdir -p "$PREFECT_HOME"
if prefect work-pool inspect "$MNIST_WORK_POOL" >/dev/null 2>&1; then
  echo "work pool: $MNIST_WORK_POOL exists"
else
  prefect work-pool create "$MNIST_WORK_POOL" --type process >/dev/null
  echo "work pool: $MNIST_WORK_POOL created (type process)"
fi
# deployed again only when prefect.yaml or the code behind the flows' parameters changed (a
# restart of the stack does not wait for `prefect deploy`): every file a flow parameter's model
# may live in, tasks/ and its sub-packages included, with its name
sources="$(find flows tasks -name '*.py' -not -path '*/__pycache__/*' | LC_ALL=C sort |
  { echo prefect.yaml; cat; } | xargs sha256sum | sha256sum | cut -c1-16)"
if [ "$(cat "$RUN/deployed" 2>/dev/null)" = "$sources" ] &&
    prefect deployment inspect 'grid-search/mnist' >/dev/null 2>&1; then
  echo "deployments: up to date"
else
  if ! prefect --no-prompt deploy --all --prefect-file prefect.yaml >"$TEAM_LOGS/deploy.log" 2>&1; then
    tail -30 "$TEAM_LOGS/deploy.log" >&2
    fail "prefect deploy failed (log: $TEAM_LOGS/deploy.log)"
  fi
  echo "$sources" >"$RUN/deployed"
  echo "deployments: $(grep -c "^- name:" prefect.yaml) deployed (log: $TEAM_LOGS/deploy.log)"
fi
if running "$RUN/worker.pid" prefect; then
  echo "worker: already running (pid $(cat "$RUN/worker.pid"))"
else
  mkdir -p "$MNIST_TEAM_DIR/worker-home"
  PREFECT_HOME="$MNIST_TEAM_DIR/worker-home" TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}" \
    nohup prefect worker start --pool "$MNIST_WORK_POOL" --type process \
    --limit "$MNIST_TEAM_WORKER_LIMIT" --name "team-worker-$(hostname)" \
    >"$TEAM_LOGS/worker.log" 2>&1 </dev/null &
  echo $! >"$RUN/worker.pid"
  echo "worker: started (pid $!, log: $TEAM_LOGS/worker.log)"
fi

cat <<MSG

Team stack up. UI: $PREFECT_UI_URL   Dask: $DASK_ADDRESS (dashboard http://$H:$((MNIST_TEAM_DASK_PORT + 1)))
In another shell:  source $TEAM_ENV
  python flows/grid.py --runner dask --dask-address \$MNIST_DASK_ADDRESS --units 16 64 --dropout 0 0.5 --epochs 1
  prefect deployment run 'grid-search/mnist' --param fan_out="{\"runner\": \"dask\", \"dask_address\": \"\$MNIST_DASK_ADDRESS\"}"
Stop with:         scripts/down.sh --team
MSG
