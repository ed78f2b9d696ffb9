# shellcheck shell=bash
# Helpers shared by the comparison scripts in bench/ (sourced, not run).
# The sourcing script sets bench_name (its name in messages) and root (the
# checkout) first.

die() {
  echo "${bench_name:-bench}: $*" >&2
  exit 1
}

# A loopback port that nothing uses at the moment (the server binds it right after;
# a process that takes it in between makes the start fail, and the run says so).
free_port() {
  # Below the kernel's ephemeral range, from which outgoing connections take
  # their ports: a port picked inside it can be taken by one of them between
  # the pick and the bind, or while a server restarts on it.
  local port low=32768 top
  read -r low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
  [[ $low =~ ^[0-9]+$ ]] || low=32768
  top=$((low - 1))
  [[ $top -ge 21000 ]] || top=60999
  for _ in $(seq 100); do
    port=$(shuf -i "20000-$top" -n 1)
    if [[ -z $(ss -Htan "sport = :$port") ]]; then
      echo "$port"
      return 0
    fi
  done
  die "no free port found"
}

# Builds the Release tree build-release/ (as tools/run.sh does) when one of
# the binaries given is missing, then insists that all exist.
ensure_release_binaries() {
  local binary missing=false
  : "${root:?the sourcing script sets root}"
  for binary in "$@"; do [[ -x $binary ]] || missing=true; done
  if $missing; then
    echo "$bench_name: building the Release binaries into build-release/ ..." >&2
    (cd "$root" && LOGKV_BUILD_TYPE=Release tools/build.sh build-release \
      -DLOGKV_BUILD_TESTS=OFF -DLOGKV_FAULT_INJECTION=OFF) >&2
  fi
  for binary in "$@"; do [[ -x $binary ]] || die "no $(basename "$binary") at $binary"; done
}

# Stops process $1: SIGTERM (servers flush and sync), then SIGKILL after 10 s.
stop_pid() {
  local pid=$1
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# Waits (at most 30 s) until command $2 succeeds while process $1 lives; $3 =
# the log to show when it does not.
wait_ready() {
  local pid=$1 check=$2 log=$3
  for _ in $(seq 300); do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$log" >&2
      die "the server exited during start-up (log: above)"
    fi
    if eval "$check"; then return 0; fi
    sleep 0.1
  done
  tail -n 20 "$log" >&2
  die "the server was not ready after 30 s"
}

# Starts redis-server (appendonly yes, appendfsync everysec, no RDB) on a free loopback
# port in directory $1, in plaintext ($2 = plain) or TLS 1.3 only ($2 = tls, with the
# certificate $3/node.pem and CA $3/ca.pem, no client certificates), and waits until it
# answers PING. Sets server_pid and port.
start_redis_server() {
  local dir=$1 transport=$2 certs=${3:-}
  mkdir -p "$dir"
  port=$(free_port) || exit 1
  local listen=(--port "$port")
  local cli=(redis-cli -h 127.0.0.1 -p "$port")
  if [[ $transport == tls ]]; then
    listen=(--port 0 --tls-port "$port" --tls-cert-file "$certs/node.pem"
      --tls-key-file "$certs/node.key" --tls-ca-cert-file "$certs/ca.pem" --tls-auth-clients no
      --tls-protocols TLSv1.3)
    cli+=(--tls --cacert "$certs/ca.pem")
  fi
  redis-server --bind 127.0.0.1 "${listen[@]}" --protected-mode yes --save '' \
    --appendonly yes --appendfsync everysec --dir "$dir" --daemonize no \
    --logfile "$dir/redis.log" &
  server_pid=$!
  wait_ready "$server_pid" "[[ \$(${cli[*]} ping 2>/dev/null) == PONG ]]" "$dir/redis.log"
}

# Reads redis-benchmark's report (run without --csv, which has no 99.9th
# percentile) on stdin and prints one line per test: test,rps,p50,p99,p999
# (milliseconds). The p99.9 is the first row of its "Latency by percentile
# distribution" at or above 99.9% (HdrHistogram steps: 99.902% with enough
# requests), so it can only overstate Redis's.
redis_benchmark_rows() {
  tr '\r' '\n' | awk '
    /^====== / { test = $2; p999 = ""; next }
    /^Latency by percentile distribution/ { in_pct = 1; next }
    in_pct && /^[0-9.]+% <= / {
      pct = $1; sub(/%/, "", pct)
      if (p999 == "" && pct + 0 >= 99.9) p999 = $3
      next
    }
    { in_pct = 0 }
    /throughput summary:/ { rps = $3 }
    /avg +min +p50 +p95 +p99 +max/ { getline; print test "," rps "," $3 "," $5 "," p999 }'
}

# Reads logkv-bench --csv --csv-p999 on stdin and prints test,rps,p50,p99,p999.
logkv_bench_rows() {
  tr -d '"' | awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    NF >= 9 { print $1 "," $2 "," $col["p50_latency_ms"] "," $col["p99_latency_ms"] "," \
              $col["p999_latency_ms"] }'
}

# Makes the scratch directory $work (logkv-$1.XXXXXX under TMPDIR) and sets
# $server_pid empty; on exit the server in $server_pid is stopped and $work
# removed (an interrupt exits too, so that this runs).
start_scratch() {
  work=$(mktemp -d "${TMPDIR:-/tmp}/logkv-$1.XXXXXX")
  server_pid=""
  trap 'stop_pid "$server_pid"; rm -rf "$work"' EXIT
  trap 'exit 130' INT TERM
}
