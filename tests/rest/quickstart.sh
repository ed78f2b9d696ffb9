#!/usr/bin/env bash
# Smoke test: the Quick Start of seed 000 ("5. Create User & Get API Key" and
# "6. Use the KV Store"), run with curl as its README writes it, against one
# logkvd serving both of the seed's ports: --http=127.0.0.1:P1,127.0.0.1:P2
# where P1 plays the gateway's 8080 and P2 the user manager's 8081. jq is
# replaced by python3. Every status and body is checked.
#
# Usage: quickstart.sh path/to/logkvd
set -euo pipefail

LOGKVD=${1:?usage: quickstart.sh path/to/logkvd}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/logkv-quickstart.XXXXXX")
PID=""
cleanup() {
  if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  if [[ -f "$WORK/logkvd.log" ]]; then
    echo "---- logkvd output ----" >&2
    cat "$WORK/logkvd.log" >&2
  fi
  exit 1
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# json_field FILE EXPRESSION: prints EXPRESSION evaluated on the JSON in FILE
# (bound to j), e.g. json_field body 'j["access_token"]'.
json_field() {
  python3 -c 'import json, sys; j = json.load(open(sys.argv[1])); v = eval(sys.argv[2]); print(json.dumps(v) if not isinstance(v, str) else v)' "$1" "$2"
}

# expect_status WANT GOT WHAT
expect_status() {
  [[ "$2" == "$1" ]] || fail "$3: HTTP $2, want $1; body: $(cat "$WORK/body" 2>/dev/null)"
}

# expect_true FILE PYTHON-CONDITION WHAT: the condition holds for the JSON in FILE.
expect_true() {
  python3 -c 'import json, sys; j = json.load(open(sys.argv[1])); sys.exit(0 if eval(sys.argv[2]) else 1)' \
    "$1" "$2" || fail "$3: $2 does not hold for $(cat "$1")"
}

P1=$(free_port)
P2=$(free_port)
while [[ "$P2" == "$P1" ]]; do P2=$(free_port); done

"$LOGKVD" --auth=on --http=127.0.0.1:$P1,127.0.0.1:$P2 --listen=127.0.0.1:0 \
  --data-dir="$WORK/data" --log-level=warning 2>"$WORK/logkvd.log" &
PID=$!
# Ready when both HTTP addresses are announced (bounded wait).
for _ in $(seq 1 200); do
  if [[ $(grep -c "(HTTP" "$WORK/logkvd.log" || true) -ge 2 ]]; then break; fi
  kill -0 "$PID" 2>/dev/null || fail "logkvd exited at start-up"
  sleep 0.1
done
[[ $(grep -c "(HTTP" "$WORK/logkvd.log" || true) -ge 2 ]] || fail "logkvd did not start in time"

GATEWAY=http://localhost:$P1       # the seed's 8080
USER_MANAGER=http://localhost:$P2  # the seed's 8081
CURL=(curl --max-time 10 -s -o "$WORK/body" -w '%{http_code}')

# ---- 5. Create User & Get API Key ----------------------------------------------------

# Create user account
status=$("${CURL[@]}" -X POST $USER_MANAGER/signup \
  -H "Content-Type: application/json" \
  -d '{
    "email": "user@example.com",
    "username": "testuser",
    "password": "securepass123"
  }')
expect_status 201 "$status" "signup"
expect_true "$WORK/body" 'j["email"] == "user@example.com" and j["username"] == "testuser" and j["is_active"] is True and isinstance(j["id"], int) and j["created_at"].endswith("Z")' "signup body"

# Login to get JWT token
status=$("${CURL[@]}" -X POST $USER_MANAGER/login \
  -H "Content-Type: application/json" \
  -d '{
    "email": "user@example.com",
    "password": "securepass123"
  }')
expect_status 200 "$status" "login"
expect_true "$WORK/body" 'j["token_type"] == "Bearer" and j["expires_in"] == 3600 and j["user"]["username"] == "testuser"' "login body"
TOKEN=$(json_field "$WORK/body" 'j["access_token"]')
[[ -n "$TOKEN" ]] || fail "login gave no access_token"

# Create API key
status=$("${CURL[@]}" -X POST $USER_MANAGER/apikeys \
  -H "Content-Type: application/json" \
  -H "Authorization: Bearer $TOKEN" \
  -d '{
    "name": "My Application Key",
    "scopes": ["read", "write"],
    "expires_in_days": 90
  }')
expect_status 201 "$status" "create API key"
expect_true "$WORK/body" 'j["key"].startswith("ydht_") and j["key_prefix"] == j["key"][:8] and j["scopes"] == ["read", "write"] and j["name"] == "My Application Key"' "API key body"
API_KEY=$(json_field "$WORK/body" 'j["key"]')

echo "Your API Key: ${API_KEY:0:8}..."

# ---- 6. Use the KV Store ---------------------------------------------------------------

# Store a value (eventual consistency - default)
status=$("${CURL[@]}" -X PUT "$GATEWAY/v1/kv/user:123" \
  -H "X-API-Key: $API_KEY" \
  -H "Content-Type: application/json" \
  -d '{"name":"John Doe","email":"john@example.com"}')
expect_status 200 "$status" "store user:123"
expect_true "$WORK/body" 'j["success"] is True and j["key"] == "user:123" and isinstance(j["primary_node"], str) and isinstance(j["replicas"], int)' "store body"

# Store with strong consistency
status=$("${CURL[@]}" -X PUT "$GATEWAY/v1/kv/config:app" \
  -H "X-API-Key: $API_KEY" \
  -H "X-Consistency: strong" \
  -H "Content-Type: application/json" \
  -d '{"theme":"dark","language":"en"}')
expect_status 200 "$status" "store config:app (strong)"
expect_true "$WORK/body" 'j["success"] is True and j["key"] == "config:app"' "strong store body"

# Store with TTL (expires in 1 hour)
status=$("${CURL[@]}" -X PUT "$GATEWAY/v1/kv/session:abc123?ttl=1h" \
  -H "X-API-Key: $API_KEY" \
  -H "Content-Type: application/json" \
  -d '{"user_id":123,"expires":"2024-12-31"}')
expect_status 200 "$status" "store session:abc123 (ttl=1h)"
expect_true "$WORK/body" 'j["success"] is True and j["key"] == "session:abc123"' "ttl store body"

# Retrieve a value
status=$("${CURL[@]}" -X GET "$GATEWAY/v1/kv/user:123" \
  -H "X-API-Key: $API_KEY")
expect_status 200 "$status" "retrieve user:123"
[[ "$(cat "$WORK/body")" == '{"name":"John Doe","email":"john@example.com"}' ]] ||
  fail "retrieve user:123 gave $(cat "$WORK/body")"

# The strongly consistent and the TTL'd values read back (with strong reads too).
status=$("${CURL[@]}" -X GET "$GATEWAY/v1/kv/config:app" -H "X-API-Key: $API_KEY" \
  -H "X-Consistency: strong")
expect_status 200 "$status" "retrieve config:app (strong)"
[[ "$(cat "$WORK/body")" == '{"theme":"dark","language":"en"}' ]] ||
  fail "retrieve config:app gave $(cat "$WORK/body")"
status=$("${CURL[@]}" -X GET "$GATEWAY/v1/kv/session:abc123" -H "X-API-Key: $API_KEY")
expect_status 200 "$status" "retrieve session:abc123"
[[ "$(cat "$WORK/body")" == '{"user_id":123,"expires":"2024-12-31"}' ]] ||
  fail "retrieve session:abc123 gave $(cat "$WORK/body")"

# Delete a value
status=$("${CURL[@]}" -X DELETE "$GATEWAY/v1/kv/user:123" \
  -H "X-API-Key: $API_KEY")
expect_status 200 "$status" "delete user:123"
expect_true "$WORK/body" 'j["success"] is True and j["key"] == "user:123"' "delete body"

status=$("${CURL[@]}" -X GET "$GATEWAY/v1/kv/user:123" -H "X-API-Key: $API_KEY")
expect_status 404 "$status" "retrieve user:123 after delete"
expect_true "$WORK/body" 'j == {"error": "Key not found"}' "404 body"

# Both ports serve both sets of routes; without the key the gateway says 401.
status=$("${CURL[@]}" -X GET "$USER_MANAGER/v1/kv/config:app" -H "X-API-Key: $API_KEY")
expect_status 200 "$status" "retrieve config:app on the user manager's port"
status=$("${CURL[@]}" -X GET "$GATEWAY/v1/kv/config:app")
expect_status 401 "$status" "retrieve without X-API-Key"

echo "PASS: seed 000 Quick Start"
