#!/usr/bin/env bash
# logkvd's HTTP adapter against nginx answering a fixed 100-byte body: how close
# does a key-value server come to the fastest HTTP server that does no work?
#
#   bench/vs-nginx.sh                # 10 s per workload
#   DURATION=3 bench/vs-nginx.sh     # a quick run
#   bench/vs-nginx.sh --nginx-only   # just the nginx baseline (no logkvd needed)
#
# Workloads, each wrk -t2 -c50 -d${DURATION}s --latency, keys key:<n> for random n in
# [0, KEYS), values 100 bytes:
#   nginx GET             GET /v1/kv/key:<n> -> `return 200 "<100 bytes>"` (the ceiling)
#   logkv GET             GET /v1/kv/key:<n>, --auth=off
#   logkv PUT             PUT /v1/kv/key:<n> with 100 bytes, --auth=off
#   logkv GET (auth on)   the same with X-API-Key (a key made by /signup, /login, /apikeys)
#   logkv PUT (auth on)
# Before the GET runs, a wrk script PUTs every key once, so GETs find their key.
# Each server starts in a temporary folder on free loopback ports and is stopped
# before the next one starts, so they never share the CPU with each other.
#
# Environment: DURATION (seconds per workload, default 10), KEYS (default 10000),
# LOGKVD (server binary, default build-release/bin/logkvd; built if missing),
# LOGKVD_ARGS (extra flags, default "--threads=2"), NGINX (default /usr/sbin/nginx),
# NGINX_WORKERS (default 2: the same two server threads as logkvd's default here).
#
# On a 2-core machine wrk's two threads and the server's two share the cores,
# so the absolute figures are low; the ratio to nginx is what to compare.
# The logkvd runs pass --rate-limit=0 (off): the benchmark would otherwise measure the limiter.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench_name=vs-nginx
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
duration=${DURATION:-10}
keys=${KEYS:-10000}
nginx=${NGINX:-/usr/sbin/nginx}
nginx_workers=${NGINX_WORKERS:-2}
logkvd=${LOGKVD:-$root/build-release/bin/logkvd}
read -r -a logkvd_extra_args <<<"${LOGKVD_ARGS---threads=2}"
wrk_threads=2
wrk_connections=50
value_bytes=100
nginx_only=false


for arg in "$@"; do
  case $arg in
    --nginx-only) nginx_only=true ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown argument '$arg' (try --help)" ;;
  esac
done

for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || die "$tool not found (tools/setup-deps.sh installs it)"
done
[[ -x $nginx ]] || die "no nginx at $nginx (apt-get install nginx-light)"
[[ $duration =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer, not '$duration'"
if [[ ! $keys =~ ^[1-9][0-9]*$ ]] || ((keys < wrk_threads)); then
  die "KEYS must be an integer >= $wrk_threads, not '$keys'"
fi

$nginx_only || ensure_release_binaries "$logkvd"

work=$(mktemp -d "${TMPDIR:-/tmp}/logkv-vs-nginx.XXXXXX")
server_pid=""
wrk_pid=""

stop_server() {
  # nginx's master stops its workers on SIGTERM; logkvd flushes and syncs.
  stop_pid "$server_pid"
  server_pid=""
}

cleanup() {
  if [[ -n $wrk_pid ]]; then
    kill -KILL "$wrk_pid" 2>/dev/null || true
    wait "$wrk_pid" 2>/dev/null || true
  fi
  stop_server
  rm -rf "$work"
}
trap cleanup EXIT
# Turn an interrupt into a normal exit so the EXIT trap stops the servers.
trap 'exit 130' INT TERM

value=$(head -c "$value_bytes" /dev/zero | tr '\0' 'v')

start_nginx() {
  local dir=$work/nginx
  mkdir -p "$dir"
  http_port=$(free_port)
  # Temp paths of the modules this build has, all inside the work folder, so
  # nothing is written to /var and no root is needed.
  local temp_paths="client_body_temp_path $dir/client_body;"
  local module
  for module in proxy fastcgi uwsgi scgi; do
    if ! "$nginx" -V 2>&1 | grep -q -- "--without-http_${module}_module"; then
      temp_paths+=$'\n'"  ${module}_temp_path $dir/$module;"
    fi
  done
  cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes $nginx_workers;
pid $dir/nginx.pid;
lock_file $dir/nginx.lock;
error_log $dir/error.log warn;
events {
  worker_connections 1024;
}
http {
  access_log off;
  $temp_paths
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$http_port;
    location /v1/kv/ {
      default_type application/octet-stream;
      return 200 "$value";
    }
  }
}
EOF
  "$nginx" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" 2>"$dir/nginx.stderr" &
  server_pid=$!
  wait_ready "$server_pid" "curl -sf -o /dev/null http://127.0.0.1:$http_port/v1/kv/probe" "$dir/nginx.stderr"
  local body
  body=$(curl -sf "http://127.0.0.1:$http_port/v1/kv/key:0")
  [[ ${#body} -eq $value_bytes ]] || die "nginx answered ${#body} bytes, not $value_bytes"
}

start_logkvd() {  # $1: label (a folder name), then extra flags
  local dir=$work/logkvd-$1
  shift
  mkdir -p "$dir/data"
  http_port=$(free_port)
  local protocol_port
  protocol_port=$(free_port)
  "$logkvd" --data-dir="$dir/data" --listen="127.0.0.1:$protocol_port" \
    --http="127.0.0.1:$http_port" --rate-limit=0 "$@" "${logkvd_extra_args[@]}" \
    2>"$dir/logkvd.log" &
  server_pid=$!
  # Any HTTP answer (even an error status) means the adapter is up.
  wait_ready "$server_pid" "curl -s -o /dev/null http://127.0.0.1:$http_port/health" "$dir/logkvd.log"
}

# Makes a user and an API key on the running logkvd; prints the key.
make_api_key() {
  local base=http://127.0.0.1:$http_port json=(-H 'Content-Type: application/json')
  local email=bench@example.com password=Bench-passw0rd-vs-nginx token
  curl -sf "${json[@]}" -X POST "$base/signup" \
    -d "{\"email\":\"$email\",\"username\":\"bench\",\"password\":\"$password\"}" >/dev/null ||
    die "POST /signup failed"
  token=$(curl -sf "${json[@]}" -X POST "$base/login" \
    -d "{\"email\":\"$email\",\"password\":\"$password\"}" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])') ||
    die "POST /login gave no access_token"
  curl -sf "${json[@]}" -H "Authorization: Bearer $token" -X POST "$base/apikeys" \
    -d '{"name":"bench","scopes":["read","write"]}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])' ||
    die "POST /apikeys gave no key"
}

# wrk scripts. Every one numbers its threads in setup(), so each thread seeds
# its own random sequence (GET, PUT) or takes its own slice of keys (preload).
# $1: the script's file, $2: extra request headers as a Lua table body.
write_scripts() {
  local headers=$2
  cat >"$1-get.lua" <<EOF
local next_id = 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end
local headers = { $headers }
function init(args)
  math.randomseed(os.time() * 1000 + id)
end
function request()
  return wrk.format("GET", "/v1/kv/key:" .. math.random(0, $keys - 1), headers)
end
EOF
  cat >"$1-put.lua" <<EOF
local next_id = 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end
local headers = { ["Content-Type"] = "application/octet-stream", $headers }
local value = string.rep("v", $value_bytes)
function init(args)
  math.randomseed(os.time() * 1000 + id)
end
function request()
  return wrk.format("PUT", "/v1/kv/key:" .. math.random(0, $keys - 1), headers, value)
end
EOF
  # wrk runs until -d ends whatever its threads do, so when a thread has an
  # answer for each key of its slice it leaves a marker file and stops, and the
  # shell interrupts wrk once every thread has (see preload).
  cat >"$1-preload.lua" <<EOF
local next_id = 0
local threads = {}
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end
local headers = { ["Content-Type"] = "application/octet-stream", $headers }
local value = string.rep("v", $value_bytes)
function init(args)
  local per_thread = math.ceil($keys / $wrk_threads)
  first = id * per_thread
  count = math.min(per_thread, $keys - first)
  issued, answered, failed, finished = 0, 0, 0, false
end
function request()
  -- Past the slice's end it rewrites the slice until the last answers arrive.
  local n = first + issued % count
  issued = issued + 1
  return wrk.format("PUT", "/v1/kv/key:" .. n, headers, value)
end
function response(status, headers, body)
  answered = answered + 1
  if status < 200 or status > 299 then failed = failed + 1 end
  if answered >= count and not finished then
    finished = true
    local marker = io.open("$work/preload-done-" .. id, "w")
    marker:write(tostring(failed))
    marker:close()
    wrk.thread:stop()
  end
end
function done(summary, latency, requests)
  local failures = 0
  for _, thread in ipairs(threads) do failures = failures + (thread:get("failed") or 0) end
  io.write(string.format("preload-failures: %d\n", failures))
end
EOF
}

# PUTs key:0 .. key:KEYS-1 once each. $1: script prefix.
preload() {
  local url=http://127.0.0.1:$http_port/ out=$work/preload.out
  rm -f "$work"/preload-done-*
  echo "vs-nginx: preloading $keys keys ..." >&2
  wrk -t"$wrk_threads" -c"$wrk_connections" -d300s -s "$1-preload.lua" "$url" >"$out" 2>&1 &
  wrk_pid=$!
  local ready=false
  for _ in $(seq 3000); do
    if [[ $(find "$work" -maxdepth 1 -name 'preload-done-*' | wc -l) -ge $wrk_threads ]]; then
      ready=true
      break
    fi
    kill -0 "$wrk_pid" 2>/dev/null || break
    sleep 0.1
  done
  # SIGINT makes wrk end its run early and still print its summary.
  kill -INT "$wrk_pid" 2>/dev/null || true
  wait "$wrk_pid" || true
  wrk_pid=""
  $ready || {
    cat "$out" >&2
    die "the preload did not finish (wrk output above)"
  }
  grep -q '^preload-failures: 0$' "$out" || {
    cat "$out" >&2
    die "the preload had failed requests (wrk output above)"
  }
}

# Runs one workload and appends "workload,rps,p50_ms,p99_ms,errors" to results.csv.
failures=0
run() {  # $1: workload label, $2: wrk script
  local label=$1 out=$work/run-$((++run_count)).out
  echo "vs-nginx: $label ..." >&2
  local rc=0
  wrk -t"$wrk_threads" -c"$wrk_connections" -d"${duration}s" --latency -s "$2" \
    "http://127.0.0.1:$http_port/" >"$out" 2>&1 || rc=$?
  if [[ $rc -ne 0 ]] || ! grep -q '^Requests/sec:' "$out"; then
    echo "vs-nginx: $label failed with status $rc:" >&2
    cat "$out" >&2
    failures=$((failures + 1))
    echo "$label,failed,-,-,-" >>"$work/results.csv"
    return 0
  fi
  # wrk prints latencies as e.g. 812.00us, 1.20ms or 1.05s; the table shows ms.
  awk -v label="$label" '
    function ms(text) {
      if (text ~ /us$/) return text / 1000
      if (text ~ /ms$/) return text + 0
      if (text ~ /m$/) return text * 60000
      if (text ~ /s$/) return text * 1000
      return text + 0
    }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    /^Requests\/sec:/ { rps = $2 }
    /Non-2xx or 3xx responses:/ { errors += $NF }
    /Socket errors:/ {
      for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) errors += $i + 0
    }
    END { printf "%s,%.0f,%.3f,%.3f,%d\n", label, rps, p50, p99, errors }' "$out" \
    >>"$work/results.csv"
}

run_count=0
: >"$work/results.csv"

start_nginx
write_scripts "$work/plain" ""
run "nginx GET" "$work/plain-get.lua"
stop_server

if ! $nginx_only; then
  start_logkvd auth-off --auth=off
  preload "$work/plain"
  run "logkv GET" "$work/plain-get.lua"
  run "logkv PUT" "$work/plain-put.lua"
  stop_server

  start_logkvd auth-on --auth=on
  api_key=$(make_api_key)
  # It is pasted into a Lua string.
  [[ $api_key =~ ^[[:print:]]+$ && $api_key != *[\"\\]* ]] || die "unexpected API key '$api_key'"
  write_scripts "$work/auth" "[\"X-API-Key\"] = \"$api_key\""
  preload "$work/auth"
  run "logkv GET (auth on)" "$work/auth-get.lua"
  run "logkv PUT (auth on)" "$work/auth-put.lua"
  stop_server
fi

echo
echo "logkvd vs nginx $("$nginx" -v 2>&1 | sed 's/.*nginx\///'): wrk -t$wrk_threads" \
  "-c$wrk_connections -d${duration}s, $value_bytes-byte values, $keys keys, $(nproc) cores;" \
  "latencies in ms; errors = non-2xx answers and socket errors"
echo
awk -F, '
  { rows[NR] = $0; if ($1 == "nginx GET") baseline = $2 }
  END {
    printf "%-22s %10s %9s %9s %8s %9s\n", "workload", "rps", "p50", "p99", "errors", "vs nginx"
    for (i = 1; i <= NR; i++) {
      split(rows[i], f, ",")
      ratio = (baseline + 0 > 0 && f[2] + 0 > 0) ? sprintf("%.2f", f[2] / baseline) : "-"
      printf "%-22s %10s %9s %9s %8s %9s\n", f[1], f[2], f[3], f[4], f[5], ratio
    }
  }' "$work/results.csv"

[[ $failures -eq 0 ]] || die "$failures run(s) failed (see above)"
