# shellcheck shell=bash
# The team stack's settings and paths, for scripts/team-up.sh and `scripts/down.sh --team`
# (sourced; every value can be set in the environment first). Loopback by default: nothing
# is reachable from another machine until MNIST_TEAM_HOST says so (docs/team.md).
#
#   MNIST_TEAM_DIR           state folder (default: <repo>/.prefect-local/team)
#   MNIST_TEAM_HOST          the address every service listens on (default 127.0.0.1)
#   MNIST_TEAM_ALLOW         a CIDR (10.0.0.0/24) PostgreSQL accepts besides loopback (default:
#                            none); Redis and Prefect take anyone with the password
#   MNIST_TEAM_PG_PORT       PostgreSQL (default 5433)
#   MNIST_TEAM_REDIS_PORT    Redis (default 6380)
#   MNIST_TEAM_PREFECT_PORT  the Prefect server and UI (default 4310)
#   MNIST_TEAM_DASK_PORT     the Dask scheduler (default 8790; its dashboard: the next port)
#   MNIST_TEAM_DASK_WORKERS  Dask worker processes, one trial at a time each (default 2)
#   MNIST_TEAM_WORKER_LIMIT  flow runs the process worker runs at once (default 2)
#   MNIST_TEAM_INSTALL       1 (default): apt-get install postgresql / redis-server if missing
#   MNIST_TEAM_SERVER_TIMEOUT  seconds to wait for the Prefect server (default 180)
# The generated secret (PostgreSQL's and Redis' password) is $MNIST_TEAM_DIR/secret, mode
# 0600; the client environment, $MNIST_TEAM_DIR/team.env, mode 0600.
# team-up.sh records the settings it started the stack with in $MNIST_TEAM_DIR/settings.env:
# a later `up.sh --team` or `down.sh --team` given only MNIST_TEAM_DIR (or nothing: the default
# folder) uses the same ports and address; a variable set in the environment still wins.
_mnist_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MNIST_ROOT="$_mnist_root"
export MNIST_TEAM_DIR="${MNIST_TEAM_DIR:-${MNIST_LOCAL_DIR:-$_mnist_root/.prefect-local}/team}"
TEAM_RECORDED=(MNIST_TEAM_HOST MNIST_TEAM_ALLOW MNIST_TEAM_PG_PORT MNIST_TEAM_REDIS_PORT
  MNIST_TEAM_PREFECT_PORT MNIST_TEAM_DASK_PORT MNIST_TEAM_DASK_WORKERS MNIST_TEAM_WORKER_LIMIT)
if [ -f "$MNIST_TEAM_DIR/settings.env" ]; then
  while IFS='=' read -r _name _value; do
    for _known in "${TEAM_RECORDED[@]}"; do
      if [ "$_name" = "$_known" ] && [ -z "${!_name:-}" ]; then export "$_name=$_value"; fi
    done
  done <"$MNIST_TEAM_DIR/settings.env"
  unset _name _value _known
fi
export MNIST_TEAM_HOST="${MNIST_TEAM_HOST:-127.0.0.1}"
export MNIST_TEAM_PG_PORT="${MNIST_TEAM_PG_PORT:-5433}"
export MNIST_TEAM_REDIS_PORT="${MNIST_TEAM_REDIS_PORT:-6380}"
export MNIST_TEAM_PREFECT_PORT="${MNIST_TEAM_PREFECT_PORT:-4310}"
export MNIST_TEAM_DASK_PORT="${MNIST_TEAM_DASK_PORT:-8790}"
export MNIST_TEAM_DASK_WORKERS="${MNIST_TEAM_DASK_WORKERS:-2}"
export MNIST_TEAM_WORKER_LIMIT="${MNIST_TEAM_WORKER_LIMIT:-2}"
export MNIST_WORK_POOL="${MNIST_WORK_POOL:-local-process}"
unset _mnist_root
TEAM_RUN="$MNIST_TEAM_DIR/run"            # pid files
TEAM_LOGS="$MNIST_TEAM_DIR/logs"
TEAM_SECRET="$MNIST_TEAM_DIR/secret"
TEAM_ENV="$MNIST_TEAM_DIR/team.env"
# PostgreSQL's folder: $MNIST_TEAM_DIR/postgres, or, where PostgreSQL's user cannot reach the
# state folder (started as root in a private folder such as /root), a folder in that user's
# home; team-up.sh records the choice in $MNIST_TEAM_DIR/postgres-dir
TEAM_PG_ROOT="$(cat "$MNIST_TEAM_DIR/postgres-dir" 2>/dev/null || echo "$MNIST_TEAM_DIR/postgres")"
TEAM_PGDATA="$TEAM_PG_ROOT/data"
TEAM_PGLOG="$TEAM_PG_ROOT/postgres.log"
TEAM_SHARED="$MNIST_TEAM_DIR/shared"      # what every worker machine mounts at the same path
TEAM_PG_USER=mnist

# PostgreSQL's programs (the newest installed major version), or nothing
pg_bindir() { find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -1; }

# Run a PostgreSQL program as its owner: PostgreSQL refuses to run as root, so as root the
# distribution's `postgres` system user runs it.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
