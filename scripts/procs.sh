# shellcheck shell=bash
# Process helpers shared by up.sh, team-up.sh and down.sh: pid files, and stopping a process
# group with every descendant. Set RUN (the pid file folder) before calling.

# alive PID [COMMAND]: PID is a live process, not a zombie (a process killed a moment ago
# stays one until its new parent, often PID 1, reaps it, and `kill -0` still succeeds on
# it), and, if COMMAND is given, its command line contains COMMAND (a pid file older than a
# reboot may name an unrelated process)
alive() {
  local pid=$1 state
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  state=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ] || return 1
  [ -z "${2:-}" ] || tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2"
}

# running PIDFILE [COMMAND]: the process of that pid file is alive (see alive)
running() { [ -f "$1" ] && alive "$(cat "$1")" "${2:-}"; }

descendants() {  # every process below $1, children first listed after their parent
  local child
  for child in $(pgrep -P "$1" 2>/dev/null); do
    echo "$child"
    descendants "$child"
  done
}

stop() {
  local name=$1 pidfile="$RUN/$1.pid" pid pids alive waited=0
  if [ ! -f "$pidfile" ]; then
    echo "$name: not running (no $pidfile)"
    return
  fi
  pid=$(cat "$pidfile")
  if ! alive "$pid"; then
    echo "$name: not running (stale pid $pid)"
    rm -f "$pidfile"
    return
  fi
  pids="$pid $(descendants "$pid" | tr '\n' ' ')"
  kill -TERM -- "-$pid" 2>/dev/null  # the process group started by up.sh: one SIGTERM each
  for p in $pids; do  # descendants in process groups of their own (flow runs)
    [ "$(ps -o pgid= -p "$p" | tr -d ' ')" = "$pid" ] || kill -TERM "$p" 2>/dev/null
  done
  while :; do
    alive=""
    for p in $pids; do
      if kill -0 "$p" 2>/dev/null && [ "$(ps -o stat= -p "$p" | cut -c1)" != "Z" ]; then
        alive="$alive $p"
      fi
    done
    [ -z "$alive" ] && break
    if [ "$waited" -ge "${MNIST_STOP_TIMEOUT:-20}" ]; then
      echo "$name: still running after ${waited} s, killing:$alive"
      kill -KILL -- "-$pid" 2>/dev/null
      # shellcheck disable=SC2086
      kill -KILL $alive 2>/dev/null
      break
    fi
    sleep 1
    waited=$((waited + 1))
  done
  rm -f "$pidfile"
  echo "$name: stopped (pids $pids)"
}
