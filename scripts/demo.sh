#!/usr/bin/env bash
# The main job, on a fresh machine: build coffer, create a local repository,
# back up a directory into it, and list the snapshot. No server needed.
#
#   scripts/demo.sh [DIR_TO_BACK_UP] [REPOSITORY]
#
# Defaults: back up this checkout's engine/ into a new repository under /tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-engine}
repo=${2:-$(mktemp -d /tmp/coffer-demo.XXXXXX)/repo}
export COFFER_REPOSITORY="$repo"
export COFFER_PASSWORD="${COFFER_PASSWORD:-demo-password-change-me}"
# etcd support compiles etcd's protobuf files: protoc (Debian: protobuf-compiler).
scripts/apt-install.sh protoc protobuf-compiler
cargo build --release --quiet
bin=target/release/coffer
[ -e "$repo/config" ] || "$bin" init
"$bin" backup "$src"
"$bin" snapshots
echo
echo "repository: $repo (password in COFFER_PASSWORD)"
echo "restore with: COFFER_REPOSITORY=$repo COFFER_PASSWORD=... $bin restore latest --target /tmp/restored"
