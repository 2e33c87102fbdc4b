# shellcheck shell=bash
# Source me (`source scripts/env.sh`) to point this shell's `prefect` commands at the local
# server that scripts/up.sh starts. Everything lives under .prefect-local/ (gitignored).
#
#   MNIST_LOCAL_DIR   state folder (default: <repo>/.prefect-local)
#   MNIST_PREFECT_PORT  server port on 127.0.0.1 (default: 4300)
#   MNIST_WORK_POOL   work pool name (default: local-process, as in prefect.yaml)
_mnist_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MNIST_ROOT="$_mnist_root"
export MNIST_LOCAL_DIR="${MNIST_LOCAL_DIR:-$_mnist_root/.prefect-local}"
export MNIST_PREFECT_PORT="${MNIST_PREFECT_PORT:-4300}"
export MNIST_WORK_POOL="${MNIST_WORK_POOL:-local-process}"
export PREFECT_HOME="$MNIST_LOCAL_DIR/home"        # profiles, SQLite database, result cache
export PREFECT_API_URL="http://127.0.0.1:${MNIST_PREFECT_PORT}/api"
export PREFECT_UI_URL="http://127.0.0.1:${MNIST_PREFECT_PORT}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
unset _mnist_root
