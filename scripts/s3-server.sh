#!/usr/bin/env bash
# Starts a real S3-compatible server on 127.0.0.1 for the tests: moto's server
# mode, installed from PyPI into a virtualenv the first time (about 90 s, no
# compiling) and reused afterwards.
#
#   scripts/s3-server.sh start DIR   # prints the endpoint URL; state in DIR
#   scripts/s3-server.sh stop DIR
#
# Set COFFER_TEST_CACHE to keep the virtualenv elsewhere (default:
# ~/.cache/coffer-test).
set -euo pipefail
cmd=${1:?usage: s3-server.sh start|stop DIR}
dir=${2:?usage: s3-server.sh start|stop DIR}
cache=${COFFER_TEST_CACHE:-$HOME/.cache/coffer-test}
venv=$cache/moto-5.2.5

case $cmd in
start)
    mkdir -p "$dir" "$cache"
    if [ ! -x "$venv/bin/moto_server" ]; then
        echo "installing moto[server]==5.2.5 into $venv" >&2
        rm -rf "$venv"
        python3 -m venv "$venv" >&2
        "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]==5.2.5' >&2
    fi
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
    echo $! >"$dir/moto.pid"
    for _ in $(seq 1 100); do
        if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/')" 2>/dev/null; then
            echo "http://127.0.0.1:$port"
            exit 0
        fi
        sleep 0.1
    done
    echo "moto_server did not start; its log:" >&2
    cat "$dir/moto.log" >&2
    exit 1
    ;;
stop)
    if [ -f "$dir/moto.pid" ]; then
        kill "$(cat "$dir/moto.pid")" 2>/dev/null || true
        rm -f "$dir/moto.pid"
    fi
    ;;
*)
    echo "usage: s3-server.sh start|stop DIR" >&2
    exit 2
    ;;
esac
