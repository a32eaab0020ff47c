#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this one machine, for tests of failover and
# of quorum queues: started, stopped and inspected by this script, next to (and
# never instead of) the machine's main RabbitMQ node, which it does not touch.
#
# Every node runs as the user who runs this script, from its own directory
# under BACKA_CLUSTER_DIR, with its own env file, config file and plugins file,
# so nothing is read from /etc/rabbitmq. See deploy/cluster/README.md and
# `deploy/cluster/cluster.sh --help`.
set -euo pipefail

# Only the settings below decide how the nodes run: RABBITMQ_* and ERL_*
# variables from the caller (RABBITMQ_NODENAME, RABBITMQ_ENABLED_PLUGINS, a
# stale RABBITMQ_ENV_LOADED, ...) would otherwise win over the nodes' own env
# files. ERL_EPMD_PORT stays: it says where the machine's epmd listens.
for var in $(compgen -e); do
  case $var in
    ERL_EPMD_PORT) ;;
    RABBITMQ_* | ERL_*) unset "$var" ;;
  esac
done

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(cd -- "$script_dir/../.." && pwd -P)
cd -- "$repo"

name=${BACKA_CLUSTER_NAME:-backa}
base_port=${BACKA_CLUSTER_BASE_PORT:-5680}
dir=${BACKA_CLUSTER_DIR:-var/cluster}
timeout_s=${BACKA_CLUSTER_TIMEOUT:-120}
case $dir in
  /*) ;;
  *) dir=$repo/$dir ;;
esac
dir=${dir%/}
nodes=(1 2 3)
# Marks a directory as one this script made, so that `stop --purge` never
# deletes a directory that BACKA_CLUSTER_DIR names by mistake.
marker=.backa-cluster

usage() {
  cat <<EOF
Usage: deploy/cluster/cluster.sh COMMAND

A three-node RabbitMQ cluster on this machine, next to the main RabbitMQ node.

Commands:
  start          start the 3 nodes, join nodes 2 and 3 to node 1, wait until all
                 3 are running members (nodes already running are left as they are)
  stop [--purge] stop the nodes of this cluster that run; --purge also deletes
                 BACKA_CLUSTER_DIR (data, logs, cookie)
  status         which nodes run; exit 0 if all 3 run, 3 if some, 1 if none
  stop-node N    stop node N (1..3) and wait until it is down
  start-node N   start node N again and wait until it is back in the cluster
  urls           print the AMQP URLs of the nodes on one line, comma-separated
  ctl N ARGS...  run rabbitmqctl ARGS against node N with this cluster's cookie
  --help         this text

Settings (environment variables), with the values in effect now:
  BACKA_CLUSTER_DIR=$dir
      per node nodeN/ (mnesia, log, env, config and plugins files), and the
      Erlang cookie .erlang.cookie (default var/cluster in the repository)
  BACKA_CLUSTER_BASE_PORT=$base_port
      node N takes AMQP port BASE+N and Erlang distribution port BASE+N+20000
      (default 5680: 5681..5683 and 25681..25683), all on 127.0.0.1
  BACKA_CLUSTER_NAME=$name
      node N is \${NAME}N@localhost (default backa: backa1@localhost, ...)
  BACKA_CLUSTER_TIMEOUT=$timeout_s
      seconds to wait for a node to start or stop (default 120)
  BACKA_RABBITMQ_BIN=${BACKA_RABBITMQ_BIN:-}
      folder with the real rabbitmq-server and rabbitmqctl scripts (default
      /usr/lib/rabbitmq/bin if it exists, else the folder of rabbitmq-server
      on PATH, /usr/sbin or /usr/local/sbin)
EOF
}

say() { echo "==> $*"; }
die() {
  echo "cluster.sh: $*" >&2
  exit 1
}

# --- settings, checked before anything is started or deleted ---------------

check_settings() {
  [[ $name =~ ^[A-Za-z][A-Za-z0-9_-]*$ ]] ||
    die "BACKA_CLUSTER_NAME='$name' is not a usable node name; use letters, digits, '-' or '_', starting with a letter."
  if ! [[ $base_port =~ ^[1-9][0-9]{3,4}$ ]] || ((base_port < 1024 || base_port + 3 + 20000 > 65535)); then
    die "BACKA_CLUSTER_BASE_PORT='$base_port' is not a number from 1024 to 45532; set it to one."
  fi
  if ! [[ $timeout_s =~ ^[1-9][0-9]*$ ]]; then
    die "BACKA_CLUSTER_TIMEOUT='$timeout_s' is not a positive number of seconds; set it to one."
  fi
  # RabbitMQ's own scripts do not quote every path they pass on.
  [[ $dir =~ [[:space:]] ]] &&
    die "BACKA_CLUSTER_DIR='$dir' contains white space, which RabbitMQ's scripts do not handle; choose a path without."
  return 0
}

check_node_arg() {
  [[ ${1:-} =~ ^[123]$ ]] || die "'${1:-}' is not a node number; give 1, 2 or 3."
}

node_name() { echo "${name}$1@localhost"; }
amqp_port() { echo $((base_port + $1)); }
dist_port() { echo $((base_port + $1 + 20000)); }
node_dir() { echo "$dir/node$1"; }
node_log() { echo "$dir/node$1/log/$(node_name "$1").log"; }
# Mnesia's own record of the node's cluster, written when the node first boots
# and again when it joins: {AllNodes, DiscNodes}.
cluster_nodes_file() { echo "$dir/node$1/mnesia/$(node_name "$1")/cluster_nodes.config"; }
startup_log() { echo "$dir/node$1/log/startup_log"; }
url() { echo "amqp://guest:guest@127.0.0.1:$(amqp_port "$1")/"; }

# --- the RabbitMQ and Erlang programs --------------------------------------

bin=
epmd_bin=
find_programs() {
  if [[ -n ${BACKA_RABBITMQ_BIN:-} ]]; then
    bin=$BACKA_RABBITMQ_BIN
  elif [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
    # Debian's and the RPM's /usr/sbin/rabbitmq-server switch to the user
    # rabbitmq with su, which resets HOME (and so the Erlang cookie): the real
    # scripts are here.
    bin=/usr/lib/rabbitmq/bin
  else
    local found
    found=$(PATH=$PATH:/usr/sbin:/usr/local/sbin command -v rabbitmq-server) ||
      die "rabbitmq-server is not installed; install it (sudo apt-get install rabbitmq-server) or set BACKA_RABBITMQ_BIN to the folder that holds it."
    bin=$(dirname -- "$found")
  fi
  [[ -x $bin/rabbitmq-server && -x $bin/rabbitmqctl ]] ||
    die "$bin holds no rabbitmq-server and rabbitmqctl; set BACKA_RABBITMQ_BIN to the folder that holds them."
  epmd_bin=$(PATH=$PATH:/usr/lib/erlang/bin command -v epmd) ||
    die "epmd (Erlang) is not on PATH; install Erlang with RabbitMQ, or add its bin folder to PATH."
}

# Replaces this (sub)shell with "$@" in node N's environment: its env file,
# and HOME at the cluster directory, where rabbitmq-server and rabbitmqctl both
# read .erlang.cookie. Call it in a subshell.
exec_in_node_env() {
  local n=$1
  shift
  set -a
  HOME=$dir
  RABBITMQ_CONF_ENV_FILE=$(node_dir "$n")/rabbitmq-env.conf
  # shellcheck source=/dev/null
  . "$RABBITMQ_CONF_ENV_FILE"
  set +a
  exec "$@"
}

ctl() {
  local n=$1
  shift
  (exec_in_node_env "$n" "$bin/rabbitmqctl" -n "$(node_name "$n")" "$@")
}

# --- what runs ------------------------------------------------------------

# The nodes epmd knows of, as "name port" lines ("" if epmd does not run).
epmd_names() {
  "$epmd_bin" -names 2>/dev/null | sed -n 's/^name \([^ ]*\) at port \([0-9]*\)$/\1 \2/p' || true
}

# 0 if node N's Erlang VM is up (registered with epmd at its own port).
# A node of the same name at another port is someone else's: an error.
registered() {
  local n=$1 names port
  names=$(epmd_names)
  port=$(awk -v want="${name}$n" '$1 == want { print $2 }' <<<"$names")
  [[ -z $port ]] && return 1
  [[ $port == "$(dist_port "$n")" ]] ||
    die "a node named $(node_name "$n") already runs with distribution port $port, not $(dist_port "$n"); stop it or choose another BACKA_CLUSTER_NAME."
  return 0
}

# 0 if node N's Erlang VM answers rabbitmqctl with this cluster's cookie.
answers() { ctl "$1" -q ping >/dev/null 2>&1; }

# Stops with an error if node N runs, but not as a node of this cluster.
check_ours() {
  answers "$1" ||
    die "$(node_name "$1") runs but does not accept the cookie in $dir (another BACKA_CLUSTER_DIR?); stop it from its own directory, or set another BACKA_CLUSTER_NAME."
}

# 0 if RabbitMQ runs on node N (not only its Erlang VM).
rabbit_running() {
  ctl "$1" -q eval 'rabbit:is_running().' 2>/dev/null | grep -qx true
}

# Sets running_list to the nodes among "$@" on which RabbitMQ runs, asking
# them in parallel (every rabbitmqctl call starts an Erlang VM).
running_list=()
find_running() {
  local n pids=()
  running_list=()
  for n in "$@"; do
    if registered "$n"; then
      rabbit_running "$n" &
      pids[n]=$!
    fi
  done
  for n in "$@"; do
    if [[ -n ${pids[n]:-} ]] && wait "${pids[n]}"; then
      running_list+=("$n")
    fi
  done
}

# The JSON list KEY ("running_nodes", "disk_nodes") of node N's cluster_status.
cluster_list() {
  local n=$1 key=$2 out
  out=$(ctl "$n" -q cluster_status --formatter json 2>/dev/null) || return 1
  grep -o "\"$key\":\[[^]]*\]" <<<"$out" || echo "\"$key\":[]"
}

contains_node() { [[ $1 == *"\"$(node_name "$2")\""* ]]; }

# --- files ------------------------------------------------------------------

prepare_dir() {
  if [[ -d $dir && ! -e $dir/$marker && -n $(ls -A -- "$dir") ]]; then
    die "$dir exists, is not empty and was not made by this script; point BACKA_CLUSTER_DIR at a new or empty directory."
  fi
  mkdir -p -- "$dir"
  chmod 700 -- "$dir"
  echo "A RabbitMQ cluster of deploy/cluster/cluster.sh; \`cluster.sh stop --purge\` deletes this directory." >"$dir/$marker"
  local cookie=$dir/.erlang.cookie
  if [[ ! -s $cookie ]]; then
    rm -f -- "$cookie"
    (umask 077 && od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"$cookie.new")
    mv -- "$cookie.new" "$cookie"
  fi
  chmod 400 -- "$cookie"
  local n
  for n in "${nodes[@]}"; do write_node_files "$n"; done
}

# Rewritten on every start, so that a changed setting takes effect.
write_node_files() {
  local n=$1 nd
  nd=$(node_dir "$n")
  mkdir -p -- "$nd/log" "$nd/mnesia" "$nd/conf.d"
  # No plugins: the management and Prometheus plugins would each want a fixed
  # port (15672, 15692) that the main node may hold.
  echo '[].' >"$nd/enabled_plugins"
  cat >"$nd/rabbitmq.conf" <<EOF
# Node $n of the cluster of deploy/cluster/cluster.sh (rewritten on every start).
cluster_name = $name
listeners.tcp.1 = 127.0.0.1:$(amqp_port "$n")
cluster_partition_handling = pause_minority
# A shared machine: limits that block publishers only when the node really
# uses that much memory, or the disk is really full.
vm_memory_high_watermark.absolute = 1GB
disk_free_limit.absolute = 50MB
# Boot failures still reach log/startup_log; the log itself goes to the file.
log.console = false
log.file.level = info
EOF
  # Every path RabbitMQ would otherwise take from /etc/rabbitmq or
  # /var/lib/rabbitmq (the main node's) is named here.
  cat >"$nd/rabbitmq-env.conf" <<EOF
# Node $n of the cluster of deploy/cluster/cluster.sh (rewritten on every start).
# Replaces /etc/rabbitmq/rabbitmq-env.conf, which names the main node.
RABBITMQ_NODENAME=$(node_name "$n")
RABBITMQ_DIST_PORT=$(dist_port "$n")
RABBITMQ_CONFIG_FILE=$nd/rabbitmq.conf
RABBITMQ_CONFIG_FILES=$nd/conf.d
RABBITMQ_ADVANCED_CONFIG_FILE=$nd/advanced.config
RABBITMQ_ENABLED_PLUGINS_FILE=$nd/enabled_plugins
RABBITMQ_MNESIA_BASE=$nd/mnesia
RABBITMQ_LOG_BASE=$nd/log
RABBITMQ_MOTD_FILE=$nd/motd
RABBITMQ_PID_FILE=$nd/rabbitmq.pid
# As the main node: epmd and Erlang distribution on the loopback interface only.
ERL_EPMD_ADDRESS=127.0.0.1
ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
ERL_CRASH_DUMP=$nd/log/erl_crash.dump
EOF
}

# --- starting and stopping ----------------------------------------------------

port_in_use() { (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Starts node N's Erlang VM in the background, detached from this shell and its
# terminal; what it prints before its log is set up (why a boot failed) goes to
# log/startup_log. Sets launcher[N] to the pid of the process that is (or
# waits for) the VM.
launcher=()
launch() {
  local n=$1 nd port
  nd=$(node_dir "$n")
  for port in "$(amqp_port "$n")" "$(dist_port "$n")"; do
    port_in_use "$port" &&
      die "port $port of $(node_name "$n") is in use by another program; stop that or set BACKA_CLUSTER_BASE_PORT to another base."
  done
  say "starting $(node_name "$n") on $(amqp_port "$n")"
  local detach=()
  if command -v setsid >/dev/null; then detach=(setsid); fi
  (cd -- "$nd" && exec_in_node_env "$n" "${detach[@]}" "$bin/rabbitmq-server") \
    </dev/null >"$(startup_log "$n")" 2>&1 &
  launcher[n]=$!
}

# Why node N did not start, in one sentence, to stderr.
report_failure() {
  local n=$1 what=$2 reason
  reason=$(grep -m1 '^ERROR: ' "$(startup_log "$n")" 2>/dev/null | sed 's/^ERROR: //') || true
  echo "cluster.sh: $(node_name "$n") $what${reason:+ ($reason)}; see $(node_log "$n") and $(startup_log "$n"), then run \`$0 stop\`." >&2
}

# Waits until RabbitMQ has started on each of the nodes "$@"; says which did
# not. Returns 1 if any did not. Polls epmd and the AMQP port, which cost
# nothing, while the nodes boot, and asks rabbitmqctl (an Erlang VM each time,
# which would compete with the booting nodes for the CPU) only at the end.
await_nodes() {
  local n failed=0 deadline=$((SECONDS + timeout_s)) pending=("$@") still
  while ((${#pending[@]})); do
    still=()
    for n in "${pending[@]}"; do
      if registered "$n" && port_in_use "$(amqp_port "$n")"; then
        continue
      elif [[ -n ${launcher[n]:-} ]] && ! kill -0 "${launcher[n]}" 2>/dev/null; then
        report_failure "$n" "stopped while starting"
        failed=1
      elif ((SECONDS >= deadline)); then
        report_failure "$n" "did not start within ${timeout_s} s"
        failed=1
      else
        still+=("$n")
      fi
    done
    pending=("${still[@]+"${still[@]}"}")
    if ((${#pending[@]})); then sleep 0.2; fi
  done
  ((failed)) && return 1
  local pids=()
  for n in "$@"; do
    ctl "$n" -q await_startup --timeout "$timeout_s" >/dev/null 2>&1 &
    pids[n]=$!
  done
  for n in "$@"; do
    if ! wait "${pids[n]}"; then
      report_failure "$n" "did not finish starting"
      failed=1
    fi
  done
  return "$failed"
}

# 0 if node N's own data says it is clustered with node 1.
clustered() {
  local file
  file=$(cluster_nodes_file "$1")
  [[ -f $file ]] && grep -Eq "[[,']$(node_name 1)[],']" "$file"
}

# Makes node N (2 or 3) a member of node 1's cluster unless its data says it
# is one already (then it just had to start). A node that is not one has only
# booted fresh, alone: join_cluster resets it (rabbitmqctl join_cluster always
# resets the node first, so a separate reset would only cost time).
ensure_member() {
  local n=$1 out
  clustered "$n" && return 0
  say "joining $(node_name "$n") to $(node_name 1)"
  # join_cluster logs harmless errors about connection tracking tables of a
  # node whose app is stopped; its output is shown only if it fails.
  out=$(ctl "$n" -q stop_app 2>&1 && ctl "$n" -q join_cluster "$(node_name 1)" 2>&1 &&
    ctl "$n" -q start_app 2>&1) || {
    printf '%s\n' "$out" >&2
    die "$(node_name "$n") could not join $(node_name 1); see $(node_log "$n") and $(node_log 1), then run \`$0 stop --purge\` and start again."
  }
}

# Waits until the nodes "$@" are running members of the cluster, as another
# node that runs sees it (or, if none runs, as they see it themselves).
await_members() {
  local deadline=$((SECONDS + timeout_s)) asked ask=() running n missing
  for n in "${nodes[@]}"; do [[ " $* " == *" $n "* ]] || ask+=("$n"); done
  ask+=("$@")
  while :; do
    missing=()
    running=
    for asked in "${ask[@]}"; do
      registered "$asked" && running=$(cluster_list "$asked" running_nodes) && break
    done
    for n in "$@"; do contains_node "$running" "$n" || missing+=("$(node_name "$n")"); done
    ((${#missing[@]} == 0)) && return 0
    ((SECONDS >= deadline)) &&
      die "${missing[*]} did not become running members within ${timeout_s} s; see their logs under $dir, then run \`$0 stop\`."
    sleep 1
  done
}

# Stops node N gracefully and waits until its VM is gone: with the pid file,
# rabbitmqctl stop waits for that process to end (for at most the timeout).
stop_one() {
  local n=$1 deadline=$((SECONDS + timeout_s)) pid_file out args=()
  pid_file=$(node_dir "$n")/rabbitmq.pid
  if [[ -s $pid_file ]]; then args=("$pid_file"); fi
  say "stopping $(node_name "$n")"
  if ! out=$(
    exec_in_node_env "$n" timeout "$timeout_s" \
      "$bin/rabbitmqctl" -n "$(node_name "$n")" -q stop "${args[@]+"${args[@]}"}" 2>&1
  ) && registered "$n"; then
    check_ours "$n"
    printf '%s\n' "$out" >&2
    die "rabbitmqctl could not stop $(node_name "$n"); see $(node_log "$n")."
  fi
  while registered "$n"; do
    ((SECONDS >= deadline)) &&
      die "$(node_name "$n") did not stop within ${timeout_s} s; see $(node_log "$n")."
    sleep 0.2
  done
}

# --- commands -----------------------------------------------------------------

cmd_start() {
  prepare_dir
  local n to_start=() booting=()
  find_running "${nodes[@]}"
  for n in "${nodes[@]}"; do
    if [[ " ${running_list[*]} " == *" $n "* ]]; then
      say "$(node_name "$n") already runs on $(amqp_port "$n")"
    elif registered "$n"; then
      check_ours "$n"
      booting+=("$n") # up, but RabbitMQ not (yet, or paused): wait for it below
    else
      to_start+=("$n")
    fi
  done
  for n in "${to_start[@]+"${to_start[@]}"}"; do launch "$n"; done
  local waiting=("${to_start[@]+"${to_start[@]}"}" "${booting[@]+"${booting[@]}"}")
  if ((${#waiting[@]})); then
    say "waiting for ${#waiting[@]} node(s) to start"
    await_nodes "${waiting[@]}" || exit 1
  fi
  ensure_member 2
  ensure_member 3
  await_members "${nodes[@]}"
  if ((${#waiting[@]})); then
    say "cluster $name runs: $(cmd_urls)"
  else
    say "cluster $name already runs: $(cmd_urls)"
  fi
}

cmd_stop() {
  local purge=0
  case ${1:-} in
    "") ;;
    --purge) purge=1 ;;
    *) die "unknown option '$1' to stop; use \`stop\` or \`stop --purge\`." ;;
  esac
  if ((purge)) && [[ -e $dir && ! -e $dir/$marker ]]; then
    die "$dir was not made by this script, so it is not deleted; delete it yourself if it should go."
  fi
  local n pids=() failed=0
  for n in "${nodes[@]}"; do
    if registered "$n" && [[ ! -e $(node_dir "$n")/rabbitmq-env.conf ]]; then
      die "$(node_name "$n") runs but $dir does not hold its files (another BACKA_CLUSTER_DIR?); stop it from its own directory."
    fi
  done
  # All at once: each stop takes seconds, and a node that stops with the
  # others is back as soon as they are when `start` starts them together.
  for n in "${nodes[@]}"; do
    if registered "$n"; then
      stop_one "$n" &
      pids[n]=$!
    fi
  done
  for n in "${nodes[@]}"; do
    [[ -z ${pids[n]:-} ]] || wait "${pids[n]}" || failed=1
  done
  ((failed)) && exit 1
  local any=$((${#pids[@]} > 0))
  ((any)) || say "no node of cluster $name runs"
  if ((purge)) && [[ -e $dir ]]; then
    say "deleting $dir"
    rm -rf -- "$dir"
  fi
}

cmd_status() {
  local n count=0
  find_running "${nodes[@]}"
  for n in "${nodes[@]}"; do
    if [[ " ${running_list[*]} " == *" $n "* ]]; then
      echo "$(node_name "$n") $(url "$n") running"
      count=$((count + 1))
    elif registered "$n" && answers "$n"; then
      echo "$(node_name "$n") $(url "$n") starting, paused or stopped (its Erlang VM runs, RabbitMQ does not)"
    elif registered "$n"; then
      echo "$(node_name "$n") $(url "$n") runs, but with another cookie than the one in $dir"
    else
      echo "$(node_name "$n") $(url "$n") not running"
    fi
  done
  ((count == 3)) && return 0
  ((count > 0)) && return 3
  return 1
}

cmd_stop_node() {
  check_node_arg "${1:-}"
  local n=$1
  if registered "$n"; then
    stop_one "$n"
  else
    say "$(node_name "$n") does not run"
  fi
}

cmd_start_node() {
  check_node_arg "${1:-}"
  local n=$1
  [[ -d $(node_dir "$n")/mnesia ]] ||
    die "node $n has never run in $dir; run \`$0 start\` to start the whole cluster."
  local other others=0
  for other in "${nodes[@]}"; do
    if [[ $other != "$n" ]] && registered "$other"; then others=$((others + 1)); fi
  done
  # With pause_minority, one node of three alone would only pause.
  ((others > 0)) ||
    die "no other node of cluster $name runs, and a node alone pauses (pause_minority); run \`$0 start\` to start the cluster."
  prepare_dir
  if registered "$n"; then
    check_ours "$n"
  else
    launch "$n"
  fi
  await_nodes "$n" || exit 1
  if [[ $n != 1 ]]; then ensure_member "$n"; fi
  await_members "$n"
  say "$(node_name "$n") runs in cluster $name on $(amqp_port "$n")"
}

cmd_urls() {
  local n out=()
  for n in "${nodes[@]}"; do out+=("$(url "$n")"); done
  (
    IFS=,
    echo "${out[*]}"
  )
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case $cmd in
    -h | --help | help)
      usage
      return 0
      ;;
    "")
      usage >&2
      return 2
      ;;
  esac
  check_settings
  case $cmd in
    urls) cmd_urls ;;
    start | stop | status | stop-node | start-node | ctl)
      find_programs
      case $cmd in
        start) cmd_start ;;
        stop) cmd_stop "$@" ;;
        status) cmd_status ;;
        stop-node) cmd_stop_node "$@" ;;
        start-node) cmd_start_node "$@" ;;
        ctl)
          check_node_arg "${1:-}"
          local n=$1
          shift
          [[ -e $(node_dir "$n")/rabbitmq-env.conf ]] ||
            die "node $n has never run in $dir; run \`$0 start\` first."
          ctl "$n" "$@"
          ;;
      esac
      ;;
    *) die "unknown command '$cmd'; run \`$0 --help\` for the commands." ;;
  esac
}

main "$@"
