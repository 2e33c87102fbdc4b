# shellcheck shell=bash
# Process helpers shared by up.sh, team-up.sh and down.sh: pid files, and stopping a process
# group with every descendant. Set RUN (the pid file folder) before calling.

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

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
  if ! kill -0 "$pid" 2>/dev/null; then
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
