#!/usr/bin/env bash
# A property-based run of the HTTP API against its OpenAPI document (host/openapi.json): schemathesis, from
# PyPI at the version pinned below, generates requests from the document for every route and checks each answer
# (no 5xx, statuses, content types and bodies as documented). The service runs the repository's mParticle flows on a
# throwaway store, with the mParticle connection pointed at a closed loopback port (runs fail and wait for their
# resends, which is fine here): nothing leaves the machine. Run by .ci/run after `cargo test`, with the debug
# binary it built; usage: tests/api/fuzz.sh [path to flowhost].
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
SCHEMATHESIS_VERSION=4.32.5
flowhost=$(realpath "${1:-target/debug/flowhost}")
venv=target/schemathesis-$SCHEMATHESIS_VERSION
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi

work=$(mktemp -d)
server=
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
# The flows whose every connection is mParticle's, which the config below points at loopback: a fuzzed event or
# webhook must not start a run that calls a public host (the Antavo and HTTP examples name real ones).
mkdir "$work/flows"
python3 - "$work/flows" flows/*.json <<'PY'
import json, shutil, sys
for path in sys.argv[2:]:
    flow = json.load(open(path))
    connections = flow.get("connections") if isinstance(flow, dict) else None
    if connections and all(c.get("connector") == "mparticle" for c in connections.values()):
        shutil.copy(path, sys.argv[1])
PY
cat > "$work/flowhost.toml" <<TOML
listen = "127.0.0.1:0"
store = "flowhost.db"
api_token = { secret = "FLOWHOST_API_TOKEN" }
flows = ["flows"]

[connectors]
allow_private = true

[secrets]
environment = true
allow = ["MPARTICLE_*"]

[connections.mparticle]
inbound_token = { secret = "MPARTICLE_INBOUND_TOKEN" }
config = { eventsApiUrl = "http://127.0.0.1:9/v2", authUrl = "http://127.0.0.1:9/oauth/token", platformApiUrl = "http://127.0.0.1:9" }
TOML
MPARTICLE_API_KEY=fuzz-key MPARTICLE_API_SECRET=fuzz-secret MPARTICLE_CLIENT_ID=fuzz-id MPARTICLE_CLIENT_SECRET=fuzz-secret \
  MPARTICLE_INBOUND_TOKEN=fuzz-api-token FLOWHOST_API_TOKEN=fuzz-api-token \
  "$flowhost" serve --config "$work/flowhost.toml" > "$work/stdout" 2> "$work/server.log" &
server=$!
for _ in $(seq 600); do
  grep -q "serving on " "$work/stdout" 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { cat "$work/server.log"; echo "flowhost serve did not start" >&2; exit 1; }
  sleep 0.5
done
url=$(grep -o "serving on [^ ]*" "$work/stdout" | head -1 | cut -d' ' -f3)
[ -n "$url" ] || { cat "$work/server.log"; echo "flowhost serve did not say where it listens" >&2; exit 1; }

status=0
# From the throwaway directory, where schemathesis leaves its cache.
(cd "$work" && "$root/$venv/bin/schemathesis" --config-file "$root/tests/api/schemathesis.toml" run "$url/v1/openapi.json" --max-examples "${FUZZ_EXAMPLES:-50}" \
  --header "Authorization: Bearer fuzz-api-token" \
  --workers 1 --suppress-health-check all --no-color) || status=$?
if grep -q "panicked" "$work/server.log"; then
  grep -A5 "panicked" "$work/server.log" >&2
  status=1
fi
exit $status
