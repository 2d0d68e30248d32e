#!/bin/bash
# A/B of coffer builds on one corpus: per round and binary, a fresh local
# repository, a first backup and a full restore, each under GNU time with the
# page cache dropped (as root); then the repository's size. Binaries
# alternate within each round.
#
#   benches/ab.sh CORPUS BIN [BIN...]     (ROUNDS=3, WORKDIR=/tmp/coffer-ab)
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: benches/ab.sh CORPUS BIN [BIN...]" >&2
    exit 2
fi
corpus=$1
shift
work=${WORKDIR:-/tmp/coffer-ab}
export COFFER_PASSWORD=bench-password COFFER_REPOSITORY=$work/repo
mkdir -p "$work"
cold() {
    sync
    echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
}
for round in $(seq "${ROUNDS:-3}"); do
    for bin in "$@"; do
        rm -rf "$work/repo" "$work/out"
        "$bin" init > /dev/null 2>&1
        cold
        /usr/bin/time -f "round $round first   $bin %e s wall %U+%S s CPU %M KiB" \
            "$bin" backup "$corpus" > /dev/null
        cold
        /usr/bin/time -f "round $round restore $bin %e s wall %U+%S s CPU %M KiB" \
            "$bin" restore latest --target "$work/out" > /dev/null
        echo "round $round repository $bin $(du -sm "$work/repo" | cut -f1) MiB"
    done
done
rm -rf "$work/repo" "$work/out"
