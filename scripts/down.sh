#!/usr/bin/env bash
# Stop what scripts/up.sh started: the worker first (and any flow run it still runs), then
# the server. Each was started in its own process group; flow runs may have their own, so
# every descendant is collected before anything is signalled. SIGTERM, then SIGKILL after
# $MNIST_STOP_TIMEOUT seconds (default 20). State (.prefect-local/home) is kept; delete
# .prefect-local/ for a clean slate.
#
# `scripts/down.sh --team` stops what `scripts/up.sh --team` started (settings:
# scripts/team-env.sh), in the reverse order: the process worker, the Dask workers, the Dask
# scheduler, the Prefect server, Redis, PostgreSQL (a fast shutdown: open sessions are ended,
# committed data is kept). Its state ($MNIST_TEAM_DIR: databases, secret, shared cache) is kept.
# `scripts/down.sh --team SERVICE...` stops only those (worker, dask-workers, dask-scheduler,
# server, redis, postgres): `scripts/down.sh --team redis && scripts/up.sh --team` restarts
# Redis.
set -uo pipefail
# shellcheck source=scripts/procs.sh
source "$(dirname "$0")/procs.sh"

if [ "${1:-}" = "--team" ]; then
  shift
  # shellcheck source=scripts/team-env.sh
  source "$(dirname "$0")/team-env.sh"
  RUN="$TEAM_RUN"
  services=("$@")
  [ ${#services[@]} -gt 0 ] || services=(worker dask-workers dask-scheduler server redis postgres)
  for service in "${services[@]}"; do
    case "$service" in
      worker | dask-scheduler | server | redis) stop "$service" ;;
      dask-workers)
        for pidfile in "$RUN"/dask-worker-*.pid; do
          [ -e "$pidfile" ] && stop "$(basename "$pidfile" .pid)"
        done ;;
      postgres)
        PGBIN="$(pg_bindir)"
        if [ -n "$PGBIN" ] && as_pg test -f "$TEAM_PGDATA/postmaster.pid"; then
          if as_pg "$PGBIN/pg_ctl" -D "$TEAM_PGDATA" -m fast -w -t 60 stop >/dev/null; then
            echo "postgres: stopped"
          else
            echo "postgres: pg_ctl stop failed; see $TEAM_PGLOG" >&2
          fi
        else
          echo "postgres: not running"
        fi ;;
      *) echo "down.sh --team: unknown service '$service' (worker, dask-workers," \
           "dask-scheduler, server, redis, postgres)" >&2; exit 2 ;;
    esac
  done
  exit 0
fi

# shellcheck source=scripts/env.sh
source "$(dirname "$0")/env.sh"
RUN="$MNIST_LOCAL_DIR/run"
stop worker
stop server
