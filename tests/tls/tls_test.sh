#!/usr/bin/env bash
# TLS end to end, with certificates made here by tools/make-certs.sh (no key
# is committed): logkvd with --tls-client-auth=require, reached by curl,
# openssl s_client, the C++ client (logkv) and logkv-bench; the refusals a
# user must be able to act on (no client certificate, one of another CA, an
# expired one, a revoked one (--tls-crl), the wrong CA, a name the certificate lacks, an expired server
# certificate, plaintext on a TLS port, HTTPS on the binary port); handshakes
# and records that trickle in, cut at the timeout; a
# certificate reload on SIGHUP that keeps an open connection and load running
# through it, and refuses an expired certificate; the expiry metric; a 3-node cluster over mutual TLS (the data
# plane's peers and the control plane's Raft transport), managed by the CLI
# over HTTPS (logkv nodes, logkv leave); peers refused for their certificate
# (another CA's, or one of the cluster CA not naming the node it claims to
# be), logged and counted.
#   tls_test.sh LOGKVD LOGKV LOGKV_BENCH MAKE_CERTS
set -euo pipefail
logkvd=$1
cli=$2
bench=$3
make_certs=$4
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
passed=0
ok() { passed=$((passed + 1)); echo "ok: $*"; }

certs=$work/certs
other=$work/other
"$make_certs" "$certs" ca
"$make_certs" "$certs" server node localhost 127.0.0.1
"$make_certs" "$certs" client alice
"$make_certs" "$certs" expired old localhost 127.0.0.1
"$make_certs" "$certs" expired oldclient
"$make_certs" "$certs" future later localhost 127.0.0.1
"$make_certs" "$other" ca
"$make_certs" "$other" client mallory

# Starts logkvd with the flags given; sets port and http_port.
start() {
  local name=$1
  shift
  "$logkvd" --data_dir="$work/$name" --listen=127.0.0.1:0 --http=127.0.0.1:0 --threads=2 "$@" \
    2>"$work/$name.log" &
  pids+=($!)
  port="" http_port=""
  for _ in $(seq 1 200); do
    port=$(grep -o 'listening on 127.0.0.1:[0-9]* (binary' "$work/$name.log" | head -1 | cut -d: -f2 | cut -d' ' -f1 || true)
    http_port=$(grep -o 'listening on 127.0.0.1:[0-9]* (HTTP' "$work/$name.log" | head -1 | cut -d: -f2 | cut -d' ' -f1 || true)
    [ -n "$port" ] && [ -n "$http_port" ] && return 0
    sleep 0.05
  done
  cat "$work/$name.log" >&2
  fail "logkvd $name did not start"
}

# cp, not the files themselves: the reload test replaces them.
cp "$certs/node.pem" "$work/live.pem"
cp "$certs/node.key" "$work/live.key"
start main --tls-cert="$work/live.pem" --tls-key="$work/live.key" --tls-ca="$certs/ca.pem" \
  --tls-client-auth=require
grep -q "(binary protocol, 2 threads, TLS)" "$work/main.log" || fail "no TLS in the listening line"
grep -q "(HTTPS, auth off)" "$work/main.log" || fail "no HTTPS in the listening line"
mtls=(--tls --cacert="$certs/ca.pem" --cert="$certs/alice.pem" --tls-key="$certs/alice.key")
target=--target=127.0.0.1:$port

# ---- Handshakes that succeed -------------------------------------------------------
"$cli" "$target" "${mtls[@]}" put greeting hello >/dev/null || fail "logkv put over mTLS"
[ "$("$cli" --target=localhost:"$port" "${mtls[@]}" get greeting)" = hello ] || fail "logkv get over mTLS"
ok "C++ client (logkv) over mutual TLS, by address and by name"

body=$(curl -sS --cacert "$certs/ca.pem" --cert "$certs/alice.pem" --key "$certs/alice.key" \
  "https://localhost:$http_port/kv/greeting") || fail "curl over HTTPS"
[ "$body" = '"hello"' ] || [ "$body" = 'hello' ] || fail "curl read '$body'"
curl -sS --cacert "$certs/ca.pem" --cert "$certs/alice.pem" --key "$certs/alice.key" \
  -X PUT -d '"from curl"' "https://127.0.0.1:$http_port/kv/curl" >/dev/null || fail "curl PUT"
[ "$("$cli" "$target" "${mtls[@]}" get curl)" = '"from curl"' ] || [ "$("$cli" "$target" "${mtls[@]}" get curl)" = 'from curl' ] || fail "curl's write not read back"
ok "curl over HTTPS with a client certificate"

out=$(openssl s_client -connect "127.0.0.1:$port" -servername localhost -CAfile "$certs/ca.pem" \
  -cert "$certs/alice.pem" -key "$certs/alice.key" -alpn logkv </dev/null 2>&1 || true)
grep -q "New, TLSv1.3" <<<"$out" || fail "s_client: $out"
grep -q "Verify return code: 0 (ok)" <<<"$out" || fail "s_client did not verify: $out"
grep -q "ALPN protocol: logkv" <<<"$out" || fail "s_client ALPN: $out"
out=$(openssl s_client -connect "127.0.0.1:$http_port" -CAfile "$certs/ca.pem" \
  -cert "$certs/alice.pem" -key "$certs/alice.key" -alpn h2,http/1.1 </dev/null 2>&1 || true)
grep -q "ALPN protocol: http/1.1" <<<"$out" || fail "s_client HTTPS ALPN: $out"
ok "openssl s_client: TLS 1.3, verified, ALPN logkv and http/1.1"

out=$(openssl s_client -connect "127.0.0.1:$port" -CAfile "$certs/ca.pem" -tls1_2 -brief </dev/null 2>&1 || true)
grep -q "Protocol version: TLSv1.2" <<<"$out" && fail "TLS 1.2 accepted without --tls-min-version=1.2"
ok "TLS 1.2 refused by default"

# OpenSSL's own order offers TLS_AES_256_GCM_SHA384 first; the server's
# preference (docs/tls.md, "Performance") picks AES-128-GCM.
out=$(openssl s_client -connect "127.0.0.1:$port" -CAfile "$certs/ca.pem" -cert "$certs/alice.pem" \
  -key "$certs/alice.key" -alpn logkv -brief </dev/null 2>&1 || true)
grep -q "Ciphersuite: TLS_AES_128_GCM_SHA256" <<<"$out" || fail "suite negotiated: $out"
ok "TLS_AES_128_GCM_SHA256 negotiated over a client's AES-256-GCM-first order"

"$bench" -p "$port" --tls --cacert "$certs/ca.pem" --cert "$certs/alice.pem" --key "$certs/alice.key" \
  -c 4 -n 2000 -P 4 -t set,get -q >/dev/null || fail "logkv-bench over mTLS"
ok "logkv-bench over mutual TLS"

# Pipelined batches of 1.5 MB each way: dozens of records per batch, records
# cut by the socket's reads and several in one read, on both ends. A record
# left undecrypted until a next read would leave the batch unanswered
# (timeout, not a clock threshold: it only stops a hang).
timeout 120 "$bench" -p "$port" --tls --cacert "$certs/ca.pem" --cert "$certs/alice.pem" \
  --key "$certs/alice.key" -c 2 -n 4096 -P 512 -d 3000 -r 64 -t set,get -q >/dev/null ||
  fail "large pipelined batches over TLS not all answered"
ok "pipelined batches of 512 requests of 3,000 bytes over TLS, answered completely"

# ---- Refusals a user can act on ------------------------------------------------------
expect_error() {  # DESCRIPTION PATTERN COMMAND...
  local what=$1 pattern=$2
  shift 2
  local out
  if out=$("$@" 2>&1); then fail "$what: succeeded: $out"; fi
  grep -qi -- "$pattern" <<<"$out" || fail "$what: expected /$pattern/ in: $out"
  ok "$what: $(tail -1 <<<"$out" | cut -c1-160)"
}
expect_error "no client certificate" "requires a client certificate" \
  "$cli" "$target" --tls --cacert="$certs/ca.pem" get greeting
expect_error "client certificate of another CA" "does not trust the client certificate" \
  "$cli" "$target" --tls --cacert="$certs/ca.pem" --cert="$other/mallory.pem" \
  --tls-key="$other/mallory.key" get greeting
expect_error "expired client certificate" "expired" \
  "$cli" "$target" --tls --cacert="$certs/ca.pem" --cert="$certs/oldclient.pem" \
  --tls-key="$certs/oldclient.key" get greeting
expect_error "curl without a client certificate" "alert\|certificate required\|error" \
  curl -sS --cacert "$certs/ca.pem" "https://localhost:$http_port/kv/greeting"
expect_error "wrong CA on the client" "not signed by a CA of --cacert" \
  "$cli" "$target" --tls --cacert="$other/ca.pem" --cert="$certs/alice.pem" \
  --tls-key="$certs/alice.key" get greeting
expect_error "name mismatch" "does not name 'elsewhere.example'" \
  "$cli" "$target" "${mtls[@]}" --tls-server-name=elsewhere.example get greeting
expect_error "plaintext client on the TLS binary port" "this port speaks TLS" \
  "$cli" "$target" get greeting
out=$(curl -sS "http://127.0.0.1:$http_port/kv/greeting" || true)
grep -q "This port speaks HTTPS" <<<"$out" || fail "plaintext HTTP on HTTPS port: $out"
ok "plaintext HTTP on the HTTPS port: $out"
expect_error "TLS client on the HTTPS port" "does not speak logkv's binary protocol" \
  "$cli" --target=127.0.0.1:"$http_port" "${mtls[@]}" get greeting

start expired --tls-cert="$certs/old.pem" --tls-key="$certs/old.key"
grep -q "has expired" "$work/expired.log" || fail "no warning of an expired certificate"
expect_error "expired server certificate" "certificate has expired" \
  "$cli" --target=127.0.0.1:"$port" --tls --cacert="$certs/ca.pem" get greeting
start later --tls-cert="$certs/later.pem" --tls-key="$certs/later.key"
grep -q "is not valid yet" "$work/later.log" || fail "no warning of a certificate not valid yet"
expect_error "server certificate not valid yet" "certificate is not valid yet" \
  "$cli" --target=127.0.0.1:"$port" --tls --cacert="$certs/ca.pem" get greeting

# A client certificate its CA revoked (--tls-crl): refused, the others not.
"$make_certs" "$certs" client revoked
"$make_certs" "$certs" revoke revoked
start crl --tls-cert="$certs/node.pem" --tls-key="$certs/node.key" --tls-ca="$certs/ca.pem" \
  --tls-client-auth=require --tls-crl="$certs/crl.pem"
expect_error "revoked client certificate" "revoked" \
  "$cli" --target=127.0.0.1:"$port" --tls --cacert="$certs/ca.pem" --cert="$certs/revoked.pem" \
  --tls-key="$certs/revoked.key" get greeting
"$cli" --target=127.0.0.1:"$port" "${mtls[@]}" ping >/dev/null ||
  fail "a certificate that is not revoked is refused with --tls-crl"
ok "--tls-crl: a certificate that is not revoked is served"
# With revocation lists every client certificate's CA needs one, a cluster
# CA of its own (--peer-tls-ca) too: without it logkvd does not start (no
# peer could connect); with one (here a list that revokes nothing) it does.
rc=0
timeout 20 "$logkvd" --data_dir="$work/crl-peer" --listen=127.0.0.1:0 --http=127.0.0.1:0 \
  --tls-cert="$certs/node.pem" --tls-key="$certs/node.key" --tls-ca="$certs/ca.pem" \
  --tls-crl="$certs/crl.pem" --peer-tls-ca="$other/ca.pem" 2>"$work/crl-peer.log" || rc=$?
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || fail "logkvd started (or hung) without the cluster CA's list"
grep -q "no revocation list of the cluster CA" "$work/crl-peer.log" ||
  fail "no reason given: $(tail -3 "$work/crl-peer.log")"
ok "--tls-crl with a cluster CA of its own and no list of it: $(grep -o 'no revocation list of the cluster CA[^:]*' "$work/crl-peer.log" | head -1)"
"$make_certs" "$other" revoke
start crl-peer --tls-cert="$certs/node.pem" --tls-key="$certs/node.key" --tls-ca="$certs/ca.pem" \
  --tls-crl="$certs/crl.pem" --peer-tls-ca="$other/ca.pem" --peer-tls-crl="$other/crl.pem"
ok "--tls-crl with --peer-tls-crl of the cluster CA starts"

start tls12 --tls-cert="$certs/node.pem" --tls-key="$certs/node.key" --tls-min-version=1.2
out=$(openssl s_client -connect "127.0.0.1:$port" -CAfile "$certs/ca.pem" -tls1_2 -alpn logkv </dev/null 2>&1 || true)
grep -q "New, TLSv1.2" <<<"$out" || fail "TLS 1.2 with --tls-min-version=1.2: $out"
"$cli" --target=127.0.0.1:"$port" --tls --cacert="$certs/ca.pem" ping >/dev/null ||
  fail "ping over TLS"
out=$(openssl s_client -connect "127.0.0.1:$port" -CAfile "$certs/ca.pem" -tls1_2 \
  -cipher ECDHE-ECDSA-AES128-SHA </dev/null 2>&1 || true)
grep -q "Cipher is ECDHE-ECDSA-AES128-SHA" <<<"$out" && fail "a CBC suite with a SHA-1 MAC was accepted: $out"
grep -qi "handshake failure\|no shared cipher\|alert" <<<"$out" ||
  fail "no handshake failure for a CBC suite: $out"
ok "--tls-min-version=1.2 accepts TLS 1.2, with AEAD suites only"

# --tls-ciphersuites: the suites offered, in the server's order. The client
# offers AES-128-GCM first: ChaCha20-Poly1305 is chosen by the server's order.
start suites --tls-cert="$certs/node.pem" --tls-key="$certs/node.key" \
  --tls-ciphersuites=TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256
out=$(openssl s_client -connect "127.0.0.1:$port" -CAfile "$certs/ca.pem" -alpn logkv -brief \
  -ciphersuites TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256 </dev/null 2>&1 || true)
grep -q "Ciphersuite: TLS_CHACHA20_POLY1305_SHA256" <<<"$out" ||
  fail "--tls-ciphersuites's first suite not chosen over the client's order: $out"
out=$(openssl s_client -connect "127.0.0.1:$port" -CAfile "$certs/ca.pem" -alpn logkv -brief \
  -ciphersuites TLS_AES_256_GCM_SHA384 </dev/null 2>&1 || true)
grep -q "Ciphersuite: TLS_AES_256_GCM_SHA384" <<<"$out" &&
  fail "a suite left out of --tls-ciphersuites was negotiated: $out"
grep -qi "handshake failure\|alert" <<<"$out" ||
  fail "no handshake failure for a suite left out of --tls-ciphersuites: $out"
"$bench" -p "$port" --tls --cacert "$certs/ca.pem" -c 2 -n 200 -t set,get -q >/dev/null ||
  fail "logkv-bench with --tls-ciphersuites"
ok "--tls-ciphersuites: its first suite chosen over the client's order, the others refused"
# Each refused at start-up, naming the flag (with TLS on or off). OpenSSL
# alone would skip a misspelt name in a list with a valid one, and take
# TLS 1.2 suites' standard names.
bad_suites=(
  "" "TLS_NO_SUCH_SUITE" "ECDHE-ECDSA-AES128-GCM-SHA256" "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
  "TLS_AES_128_GCM_SHA256:TLS_AES_128_GMC_SHA256" "TLS_AES_128_GCM_SHA256::TLS_AES_256_GCM_SHA384"
  "TLS_AES_128_GCM_SHA256:" "TLS_AES_128_GCM_SHA256:TLS_AES_128_GCM_SHA256")
for bad in "${bad_suites[@]}"; do
  for tls_flags in "--tls-cert=$certs/node.pem --tls-key=$certs/node.key" ""; do
    rc=0
    # shellcheck disable=SC2086
    out=$(timeout 30 "$logkvd" --data_dir="$work/badsuites" --listen=127.0.0.1:0 --http= \
      $tls_flags --tls-ciphersuites="$bad" 2>&1) || rc=$?
    [ "$rc" -eq 124 ] && fail "--tls-ciphersuites='$bad' ${tls_flags:+(TLS on) }started"
    [ "$rc" -ne 0 ] || fail "--tls-ciphersuites='$bad' exited 0: $out"
    want="--tls-ciphersuites"
    [ -n "$bad" ] && want="--tls-ciphersuites '$bad'"
    grep -qF -- "$want" <<<"$out" || fail "--tls-ciphersuites='$bad': $out"
  done
done
grep -q -- "--tls-ciphersuites is empty" <<<"$(timeout 30 "$logkvd" --data_dir="$work/badsuites" \
  --listen=127.0.0.1:0 --http= --tls-ciphersuites= 2>&1)" || fail "--tls-ciphersuites= not called empty"
ok "--tls-ciphersuites refuses an empty list, empty or repeated names, and names that are not one of the three TLS 1.3 suites"

start plain
expect_error "TLS client on a plaintext port" "plaintext\|does not speak TLS\|is that port plaintext" \
  "$cli" --target=127.0.0.1:"$port" --tls --cacert="$certs/ca.pem" --timeout=1s get greeting
plain_port=$port
# Its ClientHello is refused at once (not held as the start of a large
# frame until the timeout, 60 s here; the bound only stops a hang).
rc=0
out=$(timeout 20 openssl s_client -connect "127.0.0.1:$plain_port" </dev/null 2>&1) || rc=$?
[ "$rc" -ne 124 ] || fail "a TLS client on the plaintext binary port was held: $out"
grep -q "a TLS ClientHello on a port that speaks the binary protocol without TLS" \
  "$work/plain.log" || fail "no refusal of a ClientHello logged: $(tail -3 "$work/plain.log")"
ok "a ClientHello on the plaintext binary port is refused at once"

# A handshake, or a record after it, that trickles in a byte at a time is
# cut at the session's timeout: each byte keeps the connection from being
# idle, not from timing out (the bound in trickle.py only stops a hang).
start trickle --tls-cert="$certs/node.pem" --tls-key="$certs/node.key" \
  --http-idle-timeout-ms=1000 --binary-idle-timeout-ms=1000
# (A handshake is given at least 10 s: the four trickles run at once.)
trickles=()
for side in "binary $port" "HTTPS $http_port"; do
  read -r name side_port <<<"$side"
  python3 "$here/trickle.py" handshake "$side_port" >"$work/trickle-handshake-$name" 2>&1 &
  trickles+=("$!:a handshake trickling into the $name port:$work/trickle-handshake-$name")
  python3 "$here/trickle.py" record "$side_port" "$certs/ca.pem" >"$work/trickle-record-$name" 2>&1 &
  trickles+=("$!:a record trickling into the $name port:$work/trickle-record-$name")
done
for trickle in "${trickles[@]}"; do
  IFS=: read -r pid what file <<<"$trickle"
  wait "$pid" || fail "$what: $(cat "$file")"
  ok "$what: $(cat "$file")"
done
"$cli" --target=127.0.0.1:"$port" --tls --cacert="$certs/ca.pem" ping >/dev/null ||
  fail "ping over TLS after the trickles"

# ---- Reload on SIGHUP, keeping open connections -------------------------------------
main_pid=${pids[0]}
serial() {
  openssl s_client -connect "127.0.0.1:$1" -CAfile "$certs/ca.pem" -cert "$certs/alice.pem" \
    -key "$certs/alice.key" </dev/null 2>/dev/null | openssl x509 -noout -serial
}
main_port=$(grep -o 'listening on 127.0.0.1:[0-9]* (binary' "$work/main.log" | head -1 | cut -d: -f2 | cut -d' ' -f1)
before=$(serial "$main_port")
# A watch opened before the reload must see a write made after it.
"$cli" --target=127.0.0.1:"$main_port" "${mtls[@]}" watch --prefix=reload --count=1 \
  >"$work/watch.out" 2>&1 &
watch_pid=$!
sleep 0.5
"$make_certs" "$certs" server renewed localhost 127.0.0.1
cp "$certs/renewed.pem" "$work/live.pem"
cp "$certs/renewed.key" "$work/live.key"
# Load runs through the reload: no request may fail.
"$bench" -p "$main_port" --tls --cacert "$certs/ca.pem" --cert "$certs/alice.pem" \
  --key "$certs/alice.key" -c 8 -P 4 --duration 3s -t set -q >"$work/load.out" 2>&1 &
load_pid=$!
sleep 1
kill -HUP "$main_pid"
for _ in $(seq 1 100); do
  grep -q "SIGHUP: TLS certificate reloaded" "$work/main.log" && break
  sleep 0.05
done
grep -q "SIGHUP: TLS certificate reloaded" "$work/main.log" || fail "no reload logged"
after=$(serial "$main_port")
[ "$before" != "$after" ] || fail "the certificate served did not change ($before)"
"$cli" --target=127.0.0.1:"$main_port" "${mtls[@]}" put reload:k v >/dev/null
for _ in $(seq 1 100); do
  kill -0 "$watch_pid" 2>/dev/null || break
  sleep 0.05
done
if kill -0 "$watch_pid" 2>/dev/null; then kill "$watch_pid"; fail "the watch did not get the event"; fi
wait "$watch_pid" || fail "the watch opened before the reload failed: $(cat "$work/watch.out")"
grep -q "reload:k" "$work/watch.out" || fail "watch output: $(cat "$work/watch.out")"
wait "$load_pid" || fail "load during the reload failed: $(cat "$work/load.out")"
ok "SIGHUP reloads the certificate ($before -> $after); a watch opened before it and load running through it go on"

# A certificate that has expired, or is not valid yet, does not replace a
# valid one: the reload fails, says why, and the renewed certificate stays
# in use. $1: the certificate's name in $certs; $2: the reason logged; $3:
# the certificate in words.
reload_is_refused() {
  cp "$certs/$1.pem" "$work/live.pem"
  cp "$certs/$1.key" "$work/live.key"
  kill -HUP "$main_pid"
  for _ in $(seq 1 100); do
    grep -q "$2.*the one in use is valid until" "$work/main.log" && break
    sleep 0.05
  done
  grep -q "SIGHUP: TLS: .*$2.*the certificate in use is kept" "$work/main.log" ||
    fail "$3 was reloaded: $(tail -3 "$work/main.log")"
  [ "$(serial "$main_port")" = "$after" ] || fail "the certificate served changed to $3"
  "$cli" --target=127.0.0.1:"$main_port" "${mtls[@]}" ping >/dev/null ||
    fail "ping after a refused reload"
  ok "SIGHUP with $3 keeps the one in use and says why"
}
reload_is_refused old "expired at" "an expired certificate"
reload_is_refused later "is not valid before 2090-" "a certificate not valid yet"

# ---- Metrics -------------------------------------------------------------------------
main_http=$(grep -o 'listening on 127.0.0.1:[0-9]* (HTTP' "$work/main.log" | head -1 | cut -d: -f2 | cut -d' ' -f1)
metrics=$(curl -sS --cacert "$certs/ca.pem" --cert "$certs/alice.pem" --key "$certs/alice.key" \
  "https://localhost:$main_http/metrics?format=prometheus")
expiry=$(grep '^logkv_tls_cert_expiry_seconds ' <<<"$metrics" | awk '{print $2}')
[ -n "$expiry" ] || fail "no logkv_tls_cert_expiry_seconds"
awk -v e="$expiry" 'BEGIN { exit !(e > 86400 * 700) }' || fail "expiry $expiry"
failures=$(grep '^logkv_tls_handshake_failures_total ' <<<"$metrics" | awk '{print $2}')
[ "${failures:-0}" -ge 3 ] || fail "handshake failures counted: $failures"
ok "metrics: logkv_tls_cert_expiry_seconds=$expiry, handshake failures=$failures"
: "$plain_port"

# ---- A 3-node cluster over mutual TLS -------------------------------------------------
# Peers dial each other's TLS binary port with their node certificates; each
# refuses a ClusterHello without a certificate of the cluster CA.
"$make_certs" "$certs" server peer localhost 127.0.0.1
peer_flags=(--tls-cert="$certs/peer.pem" --tls-key="$certs/peer.key" --tls-ca="$certs/ca.pem"
  --peer-tls-cert="$certs/peer.pem" --peer-tls-key="$certs/peer.key" --peer-tls-ca="$certs/ca.pem"
  --cluster-secret=tls-test-secret --replicas=3 --gossip-interval-ms=100
  --tls-ciphersuites=TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256)
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
c1_control=$(free_port)
start c1 "${peer_flags[@]}" --control-port="$c1_control"
seed=$port
c1=$port
c1_http=$http_port
start c2 "${peer_flags[@]}" --seeds=127.0.0.1:"$seed"
c2=$port
c2_http=$http_port
start c3 "${peer_flags[@]}" --seeds=127.0.0.1:"$seed"
c3=$port
c3_http=$http_port
peer_tls=(--tls --cacert="$certs/ca.pem")
written=false
for _ in $(seq 1 200); do
  if "$cli" --target=127.0.0.1:"$c1" "${peer_tls[@]}" --timeout=2s put cluster:k replicated     >/dev/null 2>&1; then written=true; break; fi
  sleep 0.1
done
$written || fail "no write through the TLS cluster: $(tail -5 "$work/c1.log")"
read_back=""
for _ in $(seq 1 100); do
  read_back=$("$cli" --target=127.0.0.1:"$c3" "${peer_tls[@]}" get cluster:k 2>/dev/null || true)
  [ "$read_back" = replicated ] && break
  sleep 0.1
done
[ "$read_back" = replicated ] || fail "node 3 read '$read_back'"
members=$(curl -sS --cacert "$certs/ca.pem"   "https://localhost:$(grep -o 'listening on 127.0.0.1:[0-9]* (HTTP' "$work/c2.log" | head -1 | cut -d: -f2 | cut -d' ' -f1)/members/")
[ "$(grep -o '"127.0.0.1:[0-9]*"' <<<"$members" | sort -u | wc -l)" -ge 3 ] || fail "members: $members"
: "$c2"
ok "3-node cluster over mutual TLS: written on node 1, read on node 3"

# A node without a certificate of the cluster CA is refused as a peer.
"$logkvd" --data_dir="$work/c4" --listen=127.0.0.1:0 --http=127.0.0.1:0 --threads=1 \
  --tls-cert="$certs/peer.pem" --tls-key="$certs/peer.key" --tls-ca="$certs/ca.pem" \
  --peer-tls-cert="$other/mallory.pem" --peer-tls-key="$other/mallory.key" \
  --peer-tls-ca="$certs/ca.pem" --cluster-secret=tls-test-secret --seeds=127.0.0.1:"$seed" \
  --join-timeout-ms=3000 2>"$work/c4.log" &
pids+=($!)
c4_pid=${pids[-1]}
for _ in $(seq 1 200); do
  kill -0 "$c4_pid" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$c4_pid" 2>/dev/null && fail "a peer with another CA's certificate is still running"
grep -q "could not join the cluster" "$work/c4.log" || fail "c4: $(tail -3 "$work/c4.log")"
ok "a peer with a certificate of another CA is refused (its TLS handshake fails)"

# A certificate of the cluster CA is not enough: it must name the node the
# peer claims to be. c5 joins with one naming only intruder.example (its
# node id is its 127.0.0.1 address); c6 claims to be member c2.
"$make_certs" "$certs" server intruder intruder.example
refusals_before=$(curl -sS --cacert "$certs/ca.pem" "https://127.0.0.1:$c1_http/metrics?format=prometheus" |
  awk '/^logkv_tls_peer_refusals_total / { print $2 }')
c2_id=$("$cli" nodes --http-target=127.0.0.1:"$c2_http" --cacert="$certs/ca.pem" --json |
  python3 -c 'import json, sys; print([n["id"] for n in json.load(sys.stdin)["nodes"] if n["address"].endswith(":'"$c2"'")][0])')
for intruder in c5 c6; do
  # A fixed port: the node id is then 127.0.0.1:port from the start.
  id_flag=(--listen=127.0.0.1:"$(free_port)")
  [ "$intruder" = c6 ] && id_flag+=(--node-id="$c2_id")
  "$logkvd" --data_dir="$work/$intruder" --http=127.0.0.1:0 --threads=1 \
    --tls-cert="$certs/peer.pem" --tls-key="$certs/peer.key" --tls-ca="$certs/ca.pem" \
    --peer-tls-cert="$certs/intruder.pem" --peer-tls-key="$certs/intruder.key" \
    --peer-tls-ca="$certs/ca.pem" --cluster-secret=tls-test-secret --seeds=127.0.0.1:"$seed" \
    "${id_flag[@]}" --join-timeout-ms=3000 2>"$work/$intruder.log" &
  pids+=($!)
  intruder_pid=${pids[-1]}
  for _ in $(seq 1 200); do
    kill -0 "$intruder_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$intruder_pid" 2>/dev/null && fail "$intruder, whose certificate does not name it, is still running"
  grep -q "join the cluster" "$work/$intruder.log" ||
    fail "$intruder: $(tail -3 "$work/$intruder.log")"
done
grep -q "refused cluster peer '127.0.0.1:[0-9]*': node '127.0.0.1:[0-9]*' is not in the member list and its certificate does not name 127.0.0.1" "$work/c1.log" ||
  fail "c5's refusal not logged: $(grep -i refused "$work/c1.log" | tail -3)"
grep -q "refused cluster peer '$c2_id': the certificate of cluster peer '$c2_id' does not name 127.0.0.1" "$work/c1.log" ||
  fail "c6's refusal not logged: $(grep -i refused "$work/c1.log" | tail -3)"
refusals_after=$(curl -sS --cacert "$certs/ca.pem" "https://127.0.0.1:$c1_http/metrics?format=prometheus" |
  awk '/^logkv_tls_peer_refusals_total / { print $2 }')
[ "${refusals_after%.*}" -ge $(( ${refusals_before%.*} + 2 )) ] ||
  fail "logkv_tls_peer_refusals_total $refusals_before -> $refusals_after"
ok "peers with a certificate of the cluster CA not naming them are refused (logged; logkv_tls_peer_refusals_total $refusals_before -> $refusals_after)"

# The control plane's Raft transport speaks mutual TLS too: a certificate of
# the cluster CA completes the handshake, none is refused.
out=$(openssl s_client -connect "127.0.0.1:$c1_control" -CAfile "$certs/ca.pem" \
  -cert "$certs/peer.pem" -key "$certs/peer.key" </dev/null 2>&1 || true)
grep -q "New, TLSv1.3" <<<"$out" || fail "control port TLS: $out"
grep -q "Verify return code: 0 (ok)" <<<"$out" || fail "control port certificate: $out"
# -ign_eof: stay for the server's answer to the client's Finished.
out=$(timeout 10 openssl s_client -connect "127.0.0.1:$c1_control" -CAfile "$certs/ca.pem" -ign_eof \
  </dev/null 2>&1 || true)
grep -qi "alert certificate required\|alert handshake failure" <<<"$out" ||
  fail "control port without a client certificate: $out"
ok "the control plane's Raft transport is TLS 1.3 and wants a client certificate"

# --tls-ciphersuites covers the Raft transport too (the peers' data-plane
# links, which dial the binary ports, ran with it above).
out=$(openssl s_client -connect "127.0.0.1:$c1_control" -CAfile "$certs/ca.pem" -cert "$certs/peer.pem" \
  -key "$certs/peer.key" -ciphersuites TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256 -brief \
  </dev/null 2>&1 || true)
grep -q "Ciphersuite: TLS_CHACHA20_POLY1305_SHA256" <<<"$out" ||
  fail "control port: --tls-ciphersuites's first suite not chosen: $out"
out=$(openssl s_client -connect "127.0.0.1:$c1_control" -CAfile "$certs/ca.pem" -cert "$certs/peer.pem" \
  -key "$certs/peer.key" -ciphersuites TLS_AES_256_GCM_SHA384 -brief </dev/null 2>&1 || true)
grep -q "Ciphersuite: TLS_AES_256_GCM_SHA384" <<<"$out" &&
  fail "control port: a suite left out of --tls-ciphersuites was negotiated: $out"
ok "the Raft transport follows --tls-ciphersuites: its order, and nothing else"

# ---- The CLI's cluster commands over HTTPS -----------------------------------------------
nodes=$("$cli" nodes --http-target=127.0.0.1:"$c2_http" --cacert="$certs/ca.pem") ||
  fail "logkv nodes over HTTPS: $nodes"
for p in "$c1" "$c2" "$c3"; do grep -q "127.0.0.1:$p" <<<"$nodes" || fail "logkv nodes lacks $p: $nodes"; done
expect_error "logkv nodes in plaintext to an HTTPS port" "speaks HTTPS" \
  "$cli" nodes --http-target=127.0.0.1:"$c2_http"
expect_error "logkv nodes with the wrong CA" "certificate" \
  "$cli" nodes --http-target=127.0.0.1:"$c2_http" --cacert="$other/ca.pem"
"$cli" leave --http-target=127.0.0.1:"$c3_http" --cacert="$certs/ca.pem" \
  --cluster-secret=tls-test-secret >"$work/leave.out" 2>&1 || fail "logkv leave over HTTPS: $(cat "$work/leave.out")"
left=false
for _ in $(seq 1 300); do
  if ! "$cli" nodes --http-target=127.0.0.1:"$c1_http" --cacert="$certs/ca.pem" | grep -q "127.0.0.1:$c3 .*active"; then
    left=true
    break
  fi
  sleep 0.1
done
$left || fail "c3 is still active after logkv leave: $("$cli" nodes --http-target=127.0.0.1:"$c1_http" --cacert="$certs/ca.pem")"
ok "logkv nodes and logkv leave over HTTPS (--cacert)"

echo "$passed passed, 0 failed"
