#!/usr/bin/env bash
# Installs Debian packages unless their commands are already on the PATH.
#
#   scripts/apt-install.sh "COMMAND..." PACKAGE...
#
# Example: scripts/apt-install.sh "etcd etcdctl" etcd-server etcd-client
# Runs apt-get as root, or through sudo; otherwise says what to install.
set -euo pipefail
commands=$1
shift
missing=0
for c in $commands; do
    command -v "$c" >/dev/null || missing=1
done
[ "$missing" = 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then
    sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    echo "coffer: needs the Debian package(s) $*, for: $commands; install them (apt-get install $*) and run again" >&2
    exit 1
fi
echo "installing $* (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! "${sudo[@]}" apt-get install -y -q "$@" >/dev/null; then
    "${sudo[@]}" apt-get update -q >/dev/null
    "${sudo[@]}" apt-get install -y -q "$@" >/dev/null
fi
