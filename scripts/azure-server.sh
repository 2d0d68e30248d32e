#!/usr/bin/env bash
# Starts Azurite (Microsoft's Azure Blob Storage emulator, from npm) on
# 127.0.0.1 for the tests and creates the container `coffer-test`.
#
#   scripts/azure-server.sh start DIR   # prints the blob endpoint; state in DIR
#   scripts/azure-server.sh stop DIR
#
# Installed into $COFFER_TEST_CACHE/azurite-3.35.0 (default ~/.cache/coffer-test)
# the first time (about 20 s) and reused.
set -euo pipefail
cmd=${1:?usage: azure-server.sh start|stop DIR}
dir=${2:?usage: azure-server.sh start|stop DIR}
cache=${COFFER_TEST_CACHE:-$HOME/.cache/coffer-test}
prefix=$cache/azurite-3.35.0

case $cmd in
start)
    mkdir -p "$dir" "$cache"
    if [ ! -x "$prefix/node_modules/.bin/azurite-blob" ]; then
        echo "installing azurite@3.35.0 into $prefix" >&2
        npm install --silent --no-audit --no-fund --prefix "$prefix" azurite@3.35.0 >&2
    fi
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$prefix/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$port" \
        --location "$dir/data" --skipApiVersionCheck >"$dir/azurite.log" 2>&1 &
    echo $! >"$dir/azurite.pid"
    # Create the container, signed with the emulator's well-known development
    # account key (public; documented by Microsoft).
    python3 - "$port" <<'PY'
import base64, email.utils, hashlib, hmac, sys, time, urllib.request
port, account, container = sys.argv[1], "devstoreaccount1", "coffer-test"
key = base64.b64decode("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")
for _ in range(100):
    date, version = email.utils.formatdate(usegmt=True), "2021-08-06"
    to_sign = ("PUT" + "\n" * 12 + f"x-ms-date:{date}\nx-ms-version:{version}\n"
               f"/{account}/{account}/{container}\nrestype:container")
    sig = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest()).decode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/{account}/{container}?restype=container", method="PUT",
        headers={"x-ms-date": date, "x-ms-version": version, "Content-Length": "0",
                 "Authorization": f"SharedKey {account}:{sig}"})
    try:
        urllib.request.urlopen(req)
        print(f"http://127.0.0.1:{port}")
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("Azurite did not start or refused to create the container")
PY
    ;;
stop)
    if [ -f "$dir/azurite.pid" ]; then
        kill "$(cat "$dir/azurite.pid")" 2>/dev/null || true
        rm -f "$dir/azurite.pid"
    fi
    ;;
*)
    echo "usage: azure-server.sh start|stop DIR" >&2
    exit 2
    ;;
esac
