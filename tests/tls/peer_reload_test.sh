#!/usr/bin/env bash
# The peer links' certificates (the data plane's transport and the control
# plane's Raft transport) reloaded on SIGHUP, on real logkvd processes with
# certificates made here by tools/make-certs.sh:
#   - a cluster on CA 1 rotates to CA 2 (CA bundle, then node certificates,
#     each followed by SIGHUP) without dropping its open peer connections;
#     a node that trusts only CA 2 then joins it, which needs every peer
#     link's new handshakes to use the new certificates, both ways;
#   - that node leaves and joins again with `logkv join https://...` (POST
#     /join through the seed's HTTPS URL);
#   - after SIGHUP with a revocation list (--peer-tls-crl), a revoked peer
#     is refused on both links; an expired peer is refused; a CA dropped
#     from the bundle no longer passes;
#   - a node listening on port 0 claims its node id in its first hello, so
#     its certificate is held to it;
#   - the control plane's port off loopback without mutual TLS is refused
#     at start (validated before anything is bound).
#   peer_reload_test.sh LOGKVD LOGKV MAKE_CERTS
set -euo pipefail
logkvd=$1
cli=$2
make_certs=$3
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  for log in "$work"/*.log; do echo "---- $log" >&2; tail -15 "$log" >&2; done
  exit 1
}
passed=0
ok() { passed=$((passed + 1)); echo "ok: $*"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

ca1=$work/ca1
ca2=$work/ca2
"$make_certs" "$ca1" ca "logkv CA 1"
"$make_certs" "$ca2" ca "logkv CA 2"
for n in n1 n2; do "$make_certs" "$ca1" server "$n" localhost 127.0.0.1; done
for n in n1 n2 n3; do "$make_certs" "$ca2" server "$n" localhost 127.0.0.1; done
"$make_certs" "$ca1" server intruder intruder.example
"$make_certs" "$ca2" expired old 127.0.0.1
"$make_certs" "$ca1" revoke  # empty lists to start with
"$make_certs" "$ca2" revoke
cat "$ca1/ca.pem" "$ca2/ca.pem" >"$work/both-ca.pem"
secret=peer-reload-secret

# Each node reads its files from its own directory, replaced in place by
# the rotation: node.pem, node.key, ca.pem (the bundle), crl.pem.
setup_node() {  # NAME CERT_DIR CA_FILES... (the bundle)
  local name=$1 from=$2
  shift 2
  mkdir -p "$work/$name.files"
  cp "$from/$name.pem" "$work/$name.files/node.pem"
  cp "$from/$name.key" "$work/$name.files/node.key"
  cat "$@" >"$work/$name.files/ca.pem"
  cat "$ca1/crl.pem" "$ca2/crl.pem" >"$work/$name.files/crl.pem"
}
node_flags() {  # NAME
  local f=$work/$1.files
  echo --tls-cert="$f/node.pem" --tls-key="$f/node.key" --tls-ca="$f/ca.pem" \
    --peer-tls-cert="$f/node.pem" --peer-tls-key="$f/node.key" --peer-tls-ca="$f/ca.pem" \
    --peer-tls-crl="$f/crl.pem" --cluster-secret="$secret" --gossip-interval-ms=100
}
declare -A pid_of port_of http_of
start() {  # NAME FLAGS...
  local name=$1
  shift
  # shellcheck disable=SC2046
  "$logkvd" --data_dir="$work/$name" --listen=127.0.0.1:0 --http=127.0.0.1:0 --threads=1 \
    $(node_flags "$name") "$@" 2>>"$work/$name.log" &
  pids+=($!)
  pid_of[$name]=$!
  local port="" http_port=""
  for _ in $(seq 1 300); do
    port=$(grep -o 'listening on 127.0.0.1:[0-9]* (binary' "$work/$name.log" | tail -1 | cut -d: -f2 | cut -d' ' -f1 || true)
    http_port=$(grep -o 'listening on 127.0.0.1:[0-9]* (HTTP' "$work/$name.log" | tail -1 | cut -d: -f2 | cut -d' ' -f1 || true)
    [ -n "$port" ] && [ -n "$http_port" ] && break
    kill -0 "${pid_of[$name]}" 2>/dev/null || fail "logkvd $name exited"
    sleep 0.05
  done
  [ -n "$port" ] && [ -n "$http_port" ] || fail "logkvd $name did not start"
  port_of[$name]=$port
  http_of[$name]=$http_port
}
reloads() { grep -c "SIGHUP: TLS certificate reloaded" "$work/$1.log" || true; }
sighup() {  # NAME...: SIGHUP, and wait until each logged the reload
  local name before
  declare -A counts
  for name in "$@"; do counts[$name]=$(reloads "$name"); kill -HUP "${pid_of[$name]}"; done
  for name in "$@"; do
    before=${counts[$name]}
    for _ in $(seq 1 200); do [ "$(reloads "$name")" -gt "$before" ] && break; sleep 0.05; done
    [ "$(reloads "$name")" -gt "$before" ] || fail "$name did not log the reload"
    grep -q "SIGHUP: TLS:.*kept" "$work/$name.log" && fail "$name: a reload failed"
  done
  return 0
}
tls_client=(--tls --cacert="$work/both-ca.pem")
put() {  # NODE KEY VALUE, retried (bounded) while the cluster settles
  for _ in $(seq 1 150); do
    "$cli" --target=127.0.0.1:"${port_of[$1]}" "${tls_client[@]}" --timeout=2s put "$2" "$3" \
      >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}
read_back() {  # NODE KEY VALUE: true once the node reads VALUE
  for _ in $(seq 1 150); do
    [ "$("$cli" --target=127.0.0.1:"${port_of[$1]}" "${tls_client[@]}" get "$2" 2>/dev/null || true)" = "$3" ] &&
      return 0
    sleep 0.1
  done
  return 1
}
# Established connections to PORT, as local:peer pairs (one per line).
connections_to() { ss -Htn state established "( dport = :$1 )" | awk '{print $3 " " $4}' | sort; }
# Whether the certificate served on PORT verifies against CA alone.
verifies_with() {  # PORT CA CERT KEY
  openssl s_client -connect "127.0.0.1:$1" -CAfile "$2" -cert "$3" -key "$4" </dev/null 2>&1 |
    grep -q "Verify return code: 0 (ok)"
}
# The failure detector's and the configuration's state of the member whose
# binary port is PORT, as the node at HTTP_PORT lists it ("alive active").
member_state() {  # HTTP_PORT PORT
  "$cli" nodes --json --http-target=127.0.0.1:"$1" --cacert="$work/both-ca.pem" 2>/dev/null |
    python3 -c 'import json, sys
for n in json.load(sys.stdin)["nodes"]:
    if n["address"].endswith(":'"$2"'"): print(n.get("state"), n.get("member_state"))' || true
}
# Whether the control port at PORT accepts a connection showing CERT:
# prints the s_client transcript (the server's alert when it refuses).
control_handshake() {  # PORT CERT KEY
  timeout 10 openssl s_client -connect "127.0.0.1:$1" -CAfile "$work/both-ca.pem" -cert "$2" \
    -key "$3" -ign_eof </dev/null 2>&1 || true
}

# ---- A cluster on CA 1 -------------------------------------------------------------
setup_node n1 "$ca1" "$ca1/ca.pem"
setup_node n2 "$ca1" "$ca1/ca.pem"
c1_control=$(free_port)
start n1 --control-port="$c1_control"
start n2 --seeds=127.0.0.1:"${port_of[n1]}"
put n1 rotate:before one || fail "no write through the CA 1 cluster"
read_back n2 rotate:before one || fail "n2 does not read the write made on n1"
ok "2-node cluster over mutual TLS with CA 1 (n2 listens on port 0)"

# ---- Port 0: the first hello claims the node id -----------------------------------
# A node on port 0 whose certificate (of the cluster CA) does not name its
# address: it claims its node id (127.0.0.1:port) from its first hello, so
# it is held to it and refused; it used to claim none and pass on the CA alone.
setup_node intruder "$ca1" "$ca1/ca.pem"
"$logkvd" --data_dir="$work/intruder" --listen=127.0.0.1:0 --http=127.0.0.1:0 --threads=1 \
  $(node_flags intruder) --seeds=127.0.0.1:"${port_of[n1]}" --join-timeout-ms=3000 \
  2>"$work/intruder.log" &
pids+=($!)
intruder_pid=$!
for _ in $(seq 1 200); do kill -0 "$intruder_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$intruder_pid" 2>/dev/null && fail "the port-0 intruder is still running"
grep -q "refused cluster peer '127.0.0.1:[0-9]*': node '127.0.0.1:[0-9]*' is not in the member list and its certificate does not name 127.0.0.1" "$work/n1.log" ||
  fail "the port-0 node's refusal does not name its id: $(grep -i 'refused cluster peer' "$work/n1.log" | tail -3)"
grep -q "refused cluster peer ''" "$work/n1.log" && fail "a hello claimed no node id"
ok "a node listening on port 0 claims its node id in its first hello (held to it: refused)"

# ---- Rotation to CA 2, without dropping connections -------------------------------
peer_links_before=$(connections_to "${port_of[n2]}")
raft_links_before=$(connections_to "$c1_control")
[ -n "$peer_links_before" ] || fail "no peer connection to n2 before the reload"
[ -n "$raft_links_before" ] || fail "no Raft connection to n1 before the reload"
verifies_with "$c1_control" "$ca2/ca.pem" "$ca2/n3.pem" "$ca2/n3.key" &&
  fail "n1's control port already serves a CA 2 certificate"
# Step 1: every node trusts both CAs.
for n in n1 n2; do cat "$ca1/ca.pem" "$ca2/ca.pem" >"$work/$n.files/ca.pem"; done
sighup n1 n2
# Step 2: every node gets its CA 2 certificate.
for n in n1 n2; do
  cp "$ca2/$n.pem" "$work/$n.files/node.pem"
  cp "$ca2/$n.key" "$work/$n.files/node.key"
done
sighup n1 n2
grep -q "peer links from $work/n1.files/node.pem, CA $work/n1.files/ca.pem, CRL" "$work/n1.log" ||
  fail "the reload does not name the peer links' files"
verifies_with "$c1_control" "$ca2/ca.pem" "$ca2/n3.pem" "$ca2/n3.key" ||
  fail "n1's control port does not serve its CA 2 certificate"
put n2 rotate:after two || fail "no write after the rotation"
read_back n1 rotate:after two || fail "n1 does not read the write made on n2 after the rotation"
peer_links_after=$(connections_to "${port_of[n2]}")
raft_links_after=$(connections_to "$c1_control")
[ -n "$(comm -12 <(echo "$peer_links_before") <(echo "$peer_links_after"))" ] ||
  fail "the peer connections to n2 were dropped: before $peer_links_before, after $peer_links_after"
[ -n "$(comm -12 <(echo "$raft_links_before") <(echo "$raft_links_after"))" ] ||
  fail "the Raft connections to n1 were dropped: before $raft_links_before, after $raft_links_after"
ok "CA bundle and node certificates rotated by SIGHUP; the control port serves the new one; open peer and Raft connections kept"

# A node that trusts CA 2 only joins: each end of every new link (the data
# plane's and the Raft transport, dialled by n1 and n2 as well as by n3)
# must show a CA 2 certificate.
setup_node n3 "$ca2" "$ca2/ca.pem"
start n3 --seeds=127.0.0.1:"${port_of[n1]}"
put n3 rotate:n3 three || fail "n3 (CA 2 only) could not write: it did not join"
read_back n1 rotate:n3 three || fail "n1 does not read n3's write"
committed=false
for _ in $(seq 1 300); do
  [ "$(member_state "${http_of[n1]}" "${port_of[n3]}")" = "alive active" ] && { committed=true; break; }
  sleep 0.1
done
$committed || fail "n3 is not an active member: $(member_state "${http_of[n1]}" "${port_of[n3]}")"
grep -qi "unknown ca\|certificate verify failed" "$work/n3.log" && fail "n3 saw a certificate of CA 1"
ok "a node trusting only CA 2 joins: new peer and Raft handshakes use the reloaded certificates both ways"

# ---- POST /join through an https:// URL (logkv join) ------------------------------
"$cli" leave --http-target=127.0.0.1:"${http_of[n3]}" --cacert="$ca2/ca.pem" \
  --cluster-secret="$secret" >"$work/leave.out" 2>&1 || fail "logkv leave: $(cat "$work/leave.out")"
left=false
for _ in $(seq 1 300); do
  [[ "$(member_state "${http_of[n1]}" "${port_of[n3]}")" == left* ]] && { left=true; break; }
  sleep 0.1
done
$left || fail "n3 did not leave: $(member_state "${http_of[n1]}" "${port_of[n3]}")"
out=$("$cli" join "http://127.0.0.1:${http_of[n1]}" --http-target=127.0.0.1:"${http_of[n3]}" \
  --cacert="$ca2/ca.pem" --cluster-secret="$secret" 2>&1) && fail "an http:// URL of an HTTPS port joined: $out"
grep -q "speaks HTTPS, name it by an https:// URL" <<<"$out" || fail "http:// URL of an HTTPS port: $out"
joined=""
for _ in $(seq 1 30); do
  if joined=$("$cli" join "https://127.0.0.1:${http_of[n1]}" --http-target=127.0.0.1:"${http_of[n3]}" \
      --cacert="$ca2/ca.pem" --cluster-secret="$secret" 2>&1); then
    break
  fi
  joined="FAILED: $joined"
  sleep 0.5
done
grep -q "^joined through https://127.0.0.1:${http_of[n1]}" <<<"$joined" || fail "logkv join https://: $joined"
rejoined=false
for _ in $(seq 1 300); do
  [ "$(member_state "${http_of[n1]}" "${port_of[n3]}")" = "alive active" ] && { rejoined=true; break; }
  sleep 0.1
done
$rejoined || fail "n3 is not an active member after joining again: $(member_state "${http_of[n1]}" "${port_of[n3]}")"
ok "logkv join https://seed (POST /join through the seed's HTTPS URL): $joined"

# ---- Refusals after a reload: a revoked peer, an expired one, a CA dropped -------
# n2's certificate is revoked; n1 and n3 reload their lists.
"$make_certs" "$ca2" revoke n2
for n in n1 n3; do cat "$ca1/crl.pem" "$ca2/crl.pem" >"$work/$n.files/crl.pem"; done
raft_links_before=$(connections_to "$c1_control")
sighup n1 n3
out=$(control_handshake "$c1_control" "$ca2/n2.pem" "$ca2/n2.key")
grep -qi "alert certificate revoked" <<<"$out" || fail "n1's control port took a revoked certificate: $out"
out=$(control_handshake "$c1_control" "$ca2/n3.pem" "$ca2/n3.key")
grep -qi "alert" <<<"$out" && fail "n1's control port refused a certificate that is not revoked: $out"
# n2 restarted: its new connections carry the revoked certificate.
kill -TERM "${pid_of[n2]}"
wait "${pid_of[n2]}" || true
start n2 --seeds=127.0.0.1:"${port_of[n1]}"
revoked=false
for _ in $(seq 1 200); do
  if grep -q "refused cluster peer '[^']*': .*its certificate is revoked (--peer-tls-crl)" "$work/n1.log" ||
      grep -q "refused cluster peer '[^']*': .*its certificate is revoked (--peer-tls-crl)" "$work/n3.log"; then
    revoked=true
    break
  fi
  sleep 0.1
done
$revoked || fail "no peer link refused n2's revoked certificate"
ok "after SIGHUP with --peer-tls-crl, a revoked peer is refused (Raft transport and data plane)"

# An expired certificate of the cluster CA.
out=$(control_handshake "$c1_control" "$ca2/old.pem" "$ca2/old.key")
grep -qi "alert certificate expired" <<<"$out" || fail "n1's control port took an expired certificate: $out"
setup_node old "$ca2" "$ca2/ca.pem"
"$logkvd" --data_dir="$work/old" --listen=127.0.0.1:0 --http=127.0.0.1:0 --threads=1 \
  $(node_flags old) --seeds=127.0.0.1:"${port_of[n1]}" --join-timeout-ms=3000 2>"$work/old.log" &
pids+=($!)
old_pid=$!
for _ in $(seq 1 200); do kill -0 "$old_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$old_pid" 2>/dev/null && fail "a node with an expired certificate is still running"
grep -q "could not join the cluster" "$work/old.log" || fail "expired: $(tail -3 "$work/old.log")"
ok "a peer with an expired certificate is refused (Raft transport and data plane)"

# CA 1 dropped from n1's bundle: its certificates no longer pass.
out=$(control_handshake "$c1_control" "$ca1/n2.pem" "$ca1/n2.key")
grep -qi "alert" <<<"$out" && fail "CA 1 refused before it was dropped: $out"
cp "$ca2/ca.pem" "$work/n1.files/ca.pem"
sighup n1
out=$(control_handshake "$c1_control" "$ca1/n2.pem" "$ca1/n2.key")
grep -qi "alert unknown ca" <<<"$out" || fail "n1's control port took a CA 1 certificate after CA 1 was dropped: $out"
ok "a CA dropped from the bundle no longer passes after SIGHUP"

# A file that does not read: the reload fails, names the file, and the
# certificates in use stay (the control port still takes n3's).
echo "not a revocation list" >"$work/n1.files/crl.pem"
kill -HUP "${pid_of[n1]}"
for _ in $(seq 1 200); do grep -q "SIGHUP: TLS:.*kept" "$work/n1.log" && break; sleep 0.05; done
grep -q "SIGHUP: TLS: .*--peer-tls-crl $work/n1.files/crl.pem.*; the certificate in use is kept" "$work/n1.log" ||
  fail "no failed reload logged: $(grep 'SIGHUP: TLS' "$work/n1.log" | tail -2)"
out=$(control_handshake "$c1_control" "$ca2/n3.pem" "$ca2/n3.key")
grep -qi "alert" <<<"$out" && fail "n1's control port refused n3 after a failed reload: $out"
ok "a reload whose files do not read keeps the certificates in use: $(grep -o 'SIGHUP: TLS: .\{0,80\}' "$work/n1.log" | tail -1)"

# ---- The control plane's port off loopback needs mutual TLS -----------------------
# Validated before anything is bound: nothing listens, nothing is sent.
out=$("$logkvd" --data_dir="$work/public" --listen=0.0.0.0:0 --http=127.0.0.1:0 --auth=on \
  --tls-cert="$ca2/n3.pem" --tls-key="$ca2/n3.key" 2>&1) && fail "logkvd started: $out"
grep -q "refusing to run the control plane's Raft transport (--control-port) on 0.0.0.0 without TLS" <<<"$out" ||
  fail "no refusal of the control port: $out"
grep -q -- "--peer-tls-ca" <<<"$out" && grep -q -- "--insecure" <<<"$out" || fail "the refusal does not name the flags: $out"
ok "a non-loopback control port without --peer-tls-ca is refused: $(grep -o "refusing to run[^:]*" <<<"$out")"

echo "$passed passed, 0 failed"
