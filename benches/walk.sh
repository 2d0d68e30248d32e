#!/bin/bash
# The cold unchanged re-backup against the walk's lookahead threads, beside
# restic's, on one corpus: the walk is all that such a backup does.
# Usage: benches/walk.sh CORPUS WORKDIR [ROUNDS] (needs root to drop the
# page cache; restic from Debian).
set -e
cd "$(dirname "$0")/.."
cargo build --release --bin coffer
BIN=$PWD/target/release/coffer
src=${1:?usage: benches/walk.sh CORPUS WORKDIR [ROUNDS]}
W=${2:?usage: benches/walk.sh CORPUS WORKDIR [ROUNDS]}
rounds=${3:-3}
export COFFER_PASSWORD=bench RESTIC_PASSWORD=bench
mkdir -p "$W"
rm -rf "$W"/coffer "$W"/restic
"$BIN" init -r "$W"/coffer -q
"$BIN" backup -r "$W"/coffer -q "$src"
restic init -r "$W"/restic -q
restic backup -r "$W"/restic -q "$src"
cold() {
    sync
    echo 3 > /proc/sys/vm/drop_caches
    /usr/bin/time -f "%e %U %S %M" -o "$W"/t "$@" > /dev/null
    read -r e u s m < "$W"/t
    echo "wall=$e cpu=$(python3 -c "print(round($u+$s,2))") rss_mib=$((m/1024))"
}
for round in $(seq "$rounds"); do
    for n in 0 4 8; do
        echo "round $round coffer --walk-threads $n $(cold "$BIN" backup -r "$W"/coffer -q --walk-threads $n "$src")"
    done
    echo "round $round restic $(cold restic backup -r "$W"/restic -q "$src")"
done
rm -rf "$W"/coffer "$W"/restic
