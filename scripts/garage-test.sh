#!/usr/bin/env bash
# The S3 conformance suite and the CLI round trip against Garage 2.5.0, a
# real distributed S3-compatible store with SigV4 authentication and
# persistence; then a backup during which Garage is SIGKILLed and restarted.
#
# Garage is built once with `cargo install --locked garage --version 2.5.0`
# (15-25 minutes on 2 cores) into $COFFER_TEST_CACHE/garage-2.5.0 (default
# ~/.cache/coffer-test) and reused. With COFFER_GARAGE_NO_INSTALL=1 a missing
# Garage is reported as skipped instead (CI does this).
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${COFFER_TEST_CACHE:-$HOME/.cache/coffer-test}
garage=$cache/garage-2.5.0/bin/garage
if [ ! -x "$garage" ]; then
    if [ "${COFFER_GARAGE_NO_INSTALL:-}" = 1 ]; then
        echo "garage tests: SKIPPED (Garage 2.5.0 is not installed at $garage; run scripts/garage-test.sh to build it)"
        exit 0
    fi
    echo "building Garage 2.5.0 into $cache/garage-2.5.0 (15-25 minutes)"
    cargo install --locked garage --version 2.5.0 --root "$cache/garage-2.5.0"
fi

dir=$(mktemp -d)
pid=
stop_garage() {
    if [ -n "$pid" ]; then
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=
    fi
}
trap 'stop_garage; rm -rf "$dir"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
rpc=$(free_port)
s3=$(free_port)
admin=$(free_port)
cat >"$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(openssl rand -hex 32 2>/dev/null || python3 -c 'import secrets; print(secrets.token_hex(32))')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin"
TOML
GARAGE_DEFAULT_ACCESS_KEY=GK$(python3 -c 'import secrets; print(secrets.token_hex(12))')
GARAGE_DEFAULT_SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
export GARAGE_DEFAULT_ACCESS_KEY GARAGE_DEFAULT_SECRET_KEY
export GARAGE_DEFAULT_BUCKET=coffer-test

start_garage() {
    "$garage" -c "$dir/garage.toml" server --single-node --default-bucket >>"$dir/garage.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 300); do
        if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$admin/health')" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "Garage did not become healthy; its log:" >&2
    tail -50 "$dir/garage.log" >&2
    exit 1
}
start_garage
echo "Garage 2.5.0 at http://127.0.0.1:$s3 (bucket $GARAGE_DEFAULT_BUCKET)"

export AWS_ACCESS_KEY_ID=$GARAGE_DEFAULT_ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$GARAGE_DEFAULT_SECRET_KEY
export AWS_REGION=garage
export COFFER_TEST_S3_ENDPOINT=http://127.0.0.1:$s3
export COFFER_TEST_S3_BUCKET=$GARAGE_DEFAULT_BUCKET
export COFFER_TEST_REQUIRE_S3=1
# Garage answers 200 to If-None-Match: * and overwrites: the probe must see it.
export COFFER_TEST_S3_CONDITIONAL=false

echo "== conformance suite and CLI round trip"
cargo test -p coffer-engine --lib the_s3_store_conforms -- --nocapture
cargo test --test s3

echo "== SIGKILL and restart of Garage in the middle of a backup"
cargo build --release --quiet
coffer=$PWD/target/release/coffer
export COFFER_PASSWORD=garage-test COFFER_CACHE_DIR=$dir/cache
export AWS_ENDPOINT_URL=$COFFER_TEST_S3_ENDPOINT AWS_ALLOW_HTTP=true
export COFFER_REPOSITORY=s3://$GARAGE_DEFAULT_BUCKET/kill-$$
src=$dir/src
mkdir -p "$src"
for i in $(seq 1 24); do head -c 20000000 /dev/urandom >"$src/f$i"; done
"$coffer" init --kdf-memory 64 --kdf-iterations 1 >/dev/null
"$coffer" backup "$src" >"$dir/backup1.log" 2>&1 &
backup=$!
sleep 1
if ! kill -0 "$backup" 2>/dev/null; then
    echo "the backup ended before Garage was killed; make the source larger" >&2
    exit 1
fi
echo "killing Garage (pid $pid) during the backup"
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
pid=
sleep 2
start_garage
echo "Garage restarted"
if wait "$backup"; then
    echo "the interrupted backup completed through its retries"
else
    echo "the interrupted backup failed cleanly (exit $?):"
    tail -3 "$dir/backup1.log"
fi
"$coffer" backup "$src"
"$coffer" check --read-data
"$coffer" restore latest --target "$dir/restored" >/dev/null
diff -r "$src" "$dir/restored"
echo "restored byte for byte after the restart"
echo "garage tests: PASSED"
