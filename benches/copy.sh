#!/usr/bin/env bash
# `coffer copy` between two local repositories, on a corpus from
# ../shared/bench/gen_corpus.py (2G by default): the first copy with the same
# chunking (init --copy-chunker-params: blobs copied as they are) and with
# other chunk parameters (files re-chunked); a second copy (nothing to do);
# and a copy after `gen_corpus.py mutate` (5 % changed: the parent pair lets
# unchanged files and directories be taken from the last copy).
# Prints wall seconds, CPU seconds and peak RSS (GNU time) per step.
#
#   benches/copy.sh [SIZE] [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-2G}
work=${2:-/tmp/coffer-copy-bench}
gen=../shared/bench/gen_corpus.py
cargo build --release --quiet --bin coffer
coffer=$PWD/target/release/coffer
rm -rf "$work" && mkdir -p "$work"
python3 "$gen" gen --out "$work/corpus" --size "$size" >/dev/null
export COFFER_PASSWORD=bench-src COFFER_FROM_PASSWORD=bench-src
drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
measure() { # LABEL CMD...
    local label=$1; shift
    drop
    /usr/bin/time -f "%e %U %S %M" -o "$work/time" "$@" >/dev/null
    read -r wall user sys rss <"$work/time"
    printf '| %s | %.2f | %.2f | %.0f |\n' "$label" "$wall" "$(echo "$user + $sys" | bc)" "$((rss / 1024))"
}
"$coffer" -r "$work/src" init -q
"$coffer" -r "$work/src" backup -q "$work/corpus"
"$coffer" -r "$work/same" init -q --from-repo "$work/src" --copy-chunker-params
"$coffer" -r "$work/other" init -q --chunk-size 256KiB
echo "| step | wall s | CPU s | peak RSS MiB |"
echo "|---|---|---|---|"
measure "first copy, same chunking (blob by blob)" "$coffer" -r "$work/same" copy --from-repo "$work/src"
measure "first copy, other chunk size (re-chunked)" "$coffer" -r "$work/other" copy --from-repo "$work/src"
measure "second copy, nothing new" "$coffer" -r "$work/same" copy --from-repo "$work/src"
python3 "$gen" mutate --out "$work/corpus" >/dev/null
"$coffer" -r "$work/src" backup -q "$work/corpus"
measure "copy after a 5 % mutation, same chunking" "$coffer" -r "$work/same" copy --from-repo "$work/src"
measure "copy after a 5 % mutation, other chunk size" "$coffer" -r "$work/other" copy --from-repo "$work/src"
measure "check --read-data of the re-chunked copy" "$coffer" -r "$work/other" check --read-data
