#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) each, seeded from
# repo-format/testdata, and prints how many executions each ran.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# cargo-fuzz needs nightly compiler features (-Z sanitizer=address); on the
# stable toolchain RUSTC_BOOTSTRAP=1 enables them, which is what this script does.
# Crashes are written to fuzz/artifacts/<target>/; reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1

td=repo-format/testdata
seed() { # seed TARGET FILE [hex]
    mkdir -p "fuzz/corpus/$1"
    local out
    out="fuzz/corpus/$1/seed-$(basename "$2")"
    if [ "${3:-}" = hex ]; then
        python3 -c 'import sys; open(sys.argv[2],"wb").write(bytes.fromhex(open(sys.argv[1]).read().strip()))' "$2" "$out"
    else
        cp "$2" "$out"
    fi
}
seed envelope_open "$td/envelope-config.hex" hex
seed envelope_open "$td/pack-header.sealed.hex" hex
seed blob_open "$td/blob-data-zstd.hex" hex
seed pack_header "$td/pack-header.plain.hex" hex
seed index_file "$td/index.plain.hex" hex
seed tree "$td/tree-leaf.cbor"
seed tree "$td/tree-index.cbor"
seed snapshot "$td/snapshot.cbor"
seed key_file "$td/keyfile.json"
seed config "$td/config.cbor"
seed chunker "$td/chunker-lengths.txt"
seed protocol "$td/beacon.cbor"
seed protocol "$td/plan.cbor"

targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
mkdir -p fuzz/logs
for t in "${targets[@]}"; do
    cargo fuzz build -O "$t" >/dev/null 2>&1 || cargo fuzz build -O "$t"
    set +e
    cargo fuzz run -O "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 >"fuzz/logs/$t.log" 2>&1
    rc=$?
    set -e
    runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "fuzz/logs/$t.log" | grep -Eo '[0-9]+$' | tail -1)
    cov=$(grep -Eo 'cov: [0-9]+' "fuzz/logs/$t.log" | tail -1)
    if [ $rc -eq 0 ]; then
        echo "$t: ${runs:-?} executions in ${secs}s, $cov, no crash"
    else
        echo "$t: FAILED after ${runs:-?} executions; see fuzz/logs/$t.log and fuzz/artifacts/$t/"
        exit 1
    fi
done
