#!/bin/bash
# Restore peak RSS and time against the plan limit, on 2 and 8 GiB corpora.
# Usage: benches/plan_limit.sh WORKDIR (corpora made there when missing; needs
# root to drop the page cache, and about 30 GB of disk).
set -e
cd "$(dirname "$0")/.."
cargo build --release --bin coffer
BIN=$PWD/target/release/coffer
export COFFER_PASSWORD=bench
W=${1:?usage: benches/plan_limit.sh WORKDIR}
mkdir -p "$W"
for size in 2G 8G; do
  src="$W"/corpus-$size-1
  [ -d "$src" ] || python3 ../shared/bench/gen_corpus.py gen --out "$src" --size $size --seed 1
  repo="$W"/repo-$size
  rm -rf "$repo"
  "$BIN" init -r "$repo" -q
  "$BIN" backup -r "$repo" -q "$src"
  blobs=$("$BIN" stats -r "$repo" --json latest | python3 -c 'import json,sys; print(json.load(sys.stdin)["data_blobs"])')
  echo "corpus $size: $blobs data blobs"
  for limit in 100000000 65536 16384 4096; do
    for round in 1 2; do
      rm -rf "$W"/out; mkdir "$W"/out
      sync; echo 3 > /proc/sys/vm/drop_caches
      /usr/bin/time -f "%e %U %S %M" -o "$W"/t "$BIN" restore -r "$repo" -q latest --target "$W"/out --plan-limit $limit
      read -r e u s m < "$W"/t
      echo "$size limit=$limit round=$round wall=$e cpu=$(python3 -c "print(round($u+$s,1))") rss_mib=$((m/1024))"
    done
  done
  rm -rf "$W"/out "$repo"
done
