#!/usr/bin/env bash
# A full run of coffer-agent in a real (kind) cluster, on your machine. CI
# cannot run it (no container runtime there); the same steps are what a
# platform engineer does on any cluster.
#
#   deploy/e2e-kind.sh [--keep]
#
# It creates a one-node kind cluster (or reuses one of that name), builds the
# image from this checkout and loads it into the node, applies
# `kubectl apply -k deploy/`, creates a namespace with its own password Secret
# and BackupRepository, starts a busybox pod with an emptyDir volume and the
# backup annotations, triggers a backup, waits for its VolumeBackup to reach
# Completed and prints the snapshot id. Then it restores that snapshot into a
# second pod with a VolumeRestore and compares the files.
#
# Then the controller's path: it installs the CSI snapshot CRDs and
# snapshot-controller (external-snapshotter) and the csi-hostpath driver,
# fills a PVC on it, backs the PVC up with a VolumeBackup of method Snapshot
# (VolumeSnapshot, clone PVC, mover pod), checks that the run cleaned up after
# itself, restores the PVC's latest snapshot, found by its origin, into a new
# PVC in a second namespace (VolumeRestore target), and compares the files.
#
# Needs: docker, kind, kubectl on PATH; git and network access for the CSI
# parts.
#
# Options:
#   --keep          keep the cluster at the end (default: a cluster this
#                   script created is deleted on exit, success or not; a
#                   reused one is kept)
#   --no-snapshots  only the node agent's part (no CSI driver)
#
# Environment:
#   COFFER_E2E_CLUSTER      kind cluster name (default coffer-e2e)
#   COFFER_E2E_S3_ENDPOINT  an S3-compatible endpoint reachable from the kind
#                           node (e.g. http://172.17.0.1:9000 for a MinIO on
#                           the docker host); with it, the repository is
#                           s3://$COFFER_E2E_S3_BUCKET/e2e and the credentials
#                           come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
#                           Without it, the repository is
#                           file:///var/lib/coffer-repo: a directory ON THE
#                           NODE (inside the kind node container), mounted into
#                           the agent by an extra hostPath patch. A file://
#                           repository is only visible to the agent of the node
#                           it lives on, which is enough for one node.
#   COFFER_E2E_S3_BUCKET    bucket for the S3 case (default coffer-e2e; it must exist)
#   COFFER_E2E_SKIP_BUILD=1 use the image already in the local docker
#   COFFER_E2E_SNAPSHOTTER  external-snapshotter release (default v8.4.0)
#   COFFER_E2E_HOSTPATH     csi-driver-host-path release (default v1.17.0)
set -euo pipefail
cd "$(dirname "$0")/.."

keep=0
snapshots=1
for arg in "$@"; do
    case $arg in
    --keep) keep=1 ;;
    --no-snapshots) snapshots=0 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "unknown argument: $arg (try --help)" >&2
        exit 2
        ;;
    esac
done

cluster=${COFFER_E2E_CLUSTER:-coffer-e2e}
# The name deploy/ runs (kind load puts it on the node, so nothing is pulled).
image=registry.example.com/coffer/coffer-agent:0.1.0
ns=coffer-e2e
ns2=coffer-e2e-restore
ctx=kind-$cluster
k() { kubectl --context "$ctx" "$@"; }
say() { printf '==> %s\n' "$*"; }

tools="docker kind kubectl"
[ "$snapshots" = 0 ] || tools="$tools git"
for tool in $tools; do
    command -v "$tool" >/dev/null || {
        echo "$tool is not on PATH" >&2
        exit 1
    }
done

created=0
cleanup() {
    local rc=$?
    if [ "$created" = 1 ] && [ "$keep" = 0 ]; then
        say "deleting kind cluster $cluster (--keep to keep it)"
        kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
    elif [ "$rc" != 0 ]; then
        say "cluster $cluster kept for inspection: kubectl --context $ctx ..."
    fi
    exit "$rc"
}
trap cleanup EXIT

# Prints what the agent and the objects say, for a failed wait.
diagnose() {
    set +e
    say "diagnostics"
    k -n "$ns" get backuprepositories,volumebackups,volumerestores,pods,pvc -o wide
    k -n "$ns" get volumebackups,volumerestores -o yaml
    k -n "$ns" get backuprepository default -o yaml
    k -n "$ns" get events --sort-by=.lastTimestamp | tail -n 30
    k -n "$ns" get volumesnapshots -o yaml 2>/dev/null
    k -n "$ns2" get pods,pvc,events -o wide 2>/dev/null
    k -n coffer-system get pods -o wide
    k -n coffer-system logs daemonset/coffer-agent --tail=200
    k -n coffer-system logs deployment/coffer-controller --tail=200
    set -e
}

# Waits (bounded) until a label selector matches at least one object.
wait_exists() { # kind selector seconds
    local i
    for ((i = 0; i < $3; i += 2)); do
        if [ -n "$(k -n "$ns" get "$1" -l "$2" -o name 2>/dev/null)" ]; then
            return 0
        fi
        sleep 2
    done
    echo "no $1 with $2 after $3 s" >&2
    return 1
}

if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
    say "reusing kind cluster $cluster"
else
    say "creating kind cluster $cluster"
    created=1
    kind create cluster --name "$cluster" --wait 180s
fi

if [ "${COFFER_E2E_SKIP_BUILD:-}" != 1 ]; then
    say "building $image"
    docker build -f deploy/Dockerfile -t "$image" .
fi
say "loading $image into the node"
kind load docker-image "$image" --name "$cluster"

say "applying deploy/, with CLUSTER_NAME=$ctx in its one configuration"
# An overlay, as a user makes one: the cluster name goes into coffer-config,
# which the node agents and the controller both read (set on one of them
# alone, both would refuse to run: they compare their names).
overlay="$(mktemp -d .e2e-overlay.XXXXXX)"
cat >"$overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [../deploy]
configMapGenerator:
  - name: coffer-config
    behavior: merge
    literals: ["CLUSTER_NAME=$ctx"]
EOF
k apply -k "$overlay"
rm -rf "$overlay"
k wait --for=condition=Established --timeout=60s \
    crd/backuprepositories.coffer.dev crd/volumebackups.coffer.dev crd/volumerestores.coffer.dev

if [ -n "${COFFER_E2E_S3_ENDPOINT:-}" ]; then
    repo_url="s3://${COFFER_E2E_S3_BUCKET:-coffer-e2e}/e2e"
else
    repo_url=file:///var/lib/coffer-repo
    # The repository directory lives on the node; the agent needs it mounted.
    if ! k -n coffer-system get daemonset coffer-agent \
        -o jsonpath='{.spec.template.spec.volumes[*].name}' | grep -qw coffer-repo; then
        k -n coffer-system patch daemonset coffer-agent --type=json -p '[
          {"op": "add", "path": "/spec/template/spec/volumes/-",
           "value": {"name": "coffer-repo",
                     "hostPath": {"path": "/var/lib/coffer-repo", "type": "DirectoryOrCreate"}}},
          {"op": "add", "path": "/spec/template/spec/containers/0/volumeMounts/-",
           "value": {"name": "coffer-repo", "mountPath": "/var/lib/coffer-repo"}}]'
    fi
fi
k -n coffer-system rollout status daemonset/coffer-agent --timeout=180s

# A namespace with the repository: its password Secret (the same password in
# every namespace, so that each opens the one repository), the S3
# credentials, and its BackupRepository `default`.
password=""
repository() { # namespace
    say "namespace $1: password Secret and BackupRepository ($repo_url)"
    k create namespace "$1" --dry-run=client -o yaml | k apply -f -
    if [ -z "$password" ]; then
        password=$(k -n "$ns" get secret coffer-repo -o jsonpath='{.data.password}' 2>/dev/null |
            base64 -d) || true
        [ -n "$password" ] || password=$(head -c 32 /dev/urandom | base64)
    fi
    k -n "$1" create secret generic coffer-repo --from-literal=password="$password" \
        --dry-run=client -o yaml | k apply -f -
    local s3=""
    if [ -n "${COFFER_E2E_S3_ENDPOINT:-}" ]; then
        : "${AWS_ACCESS_KEY_ID:?set AWS_ACCESS_KEY_ID for the S3 endpoint}"
        : "${AWS_SECRET_ACCESS_KEY:?set AWS_SECRET_ACCESS_KEY for the S3 endpoint}"
        k -n "$1" create secret generic coffer-s3 \
            --from-literal=AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
            --from-literal=AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" \
            --dry-run=client -o yaml | k apply -f -
        s3="  credentialsSecretRef: {name: coffer-s3}
  options: {s3.endpoint: \"$COFFER_E2E_S3_ENDPOINT\", s3.region: us-east-1}"
    fi
    k apply -f - <<EOF
apiVersion: coffer.dev/v1alpha1
kind: BackupRepository
metadata: {name: default, namespace: $1}
spec:
  url: $repo_url
  passwordSecretRef: {name: coffer-repo, key: password}
$s3
  init: true
EOF
}
repository "$ns"

# A pod that writes a few files into its volume (an emptyDir unless a
# claim is named), then sleeps.
pod_manifest() { # name annotations(yaml, indented 4) write-data(0|1) [namespace claim]
    local volume="emptyDir: {}"
    [ -z "${5:-}" ] || volume="persistentVolumeClaim: {claimName: $5}"
    cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: ${4:-$ns}
  annotations:
$2
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: busybox:1.36
      command: ["sh", "-c"]
      args:
        - |
          if [ "$3" = 1 ]; then
            mkdir -p /data/dir && echo hello > /data/hello.txt
            head -c 3000000 /dev/urandom > /data/dir/random.bin
            echo scratch > /data/skip.tmp
            sync
          fi
          exec sleep 86400
      volumeMounts: [{name: data, mountPath: /data}]
  volumes: [{name: data, $volume}]
EOF
}

say "pod $ns/source with an emptyDir volume and the backup annotations"
k -n "$ns" delete pod source target --ignore-not-found --wait=true --timeout=60s
pod_manifest source '    backup.coffer.dev/volumes: data
    backup.coffer.dev/exclude.data: "*.tmp"' 1 | k apply -f -
k -n "$ns" wait --for=condition=Ready pod/source --timeout=120s
sleep 2 # the files are written before `sleep`; give the shell a moment

say "backup now"
k -n "$ns" annotate pod source "backup.coffer.dev/backup-now=$(date +%s)" --overwrite
if ! wait_exists volumebackups coffer.dev/pod=source 60 ||
    ! k -n "$ns" wait --for=jsonpath='{.status.phase}'=Completed \
        volumebackups -l coffer.dev/pod=source --timeout=300s; then
    diagnose
    exit 1
fi
k -n "$ns" get volumebackups -l coffer.dev/pod=source
snapshot=$(k -n "$ns" get volumebackups -l coffer.dev/pod=source \
    -o jsonpath='{.items[0].status.snapshotID}')
say "snapshot: $snapshot"

say "restore it into a new pod's empty volume (VolumeRestore, policy IfEmpty)"
pod_manifest target '    coffer.dev/e2e: target' 0 | k apply -f -
k -n "$ns" wait --for=condition=Ready pod/target --timeout=120s
k -n "$ns" delete volumerestore e2e-restore --ignore-not-found
k apply -f - <<EOF
apiVersion: coffer.dev/v1alpha1
kind: VolumeRestore
metadata: {name: e2e-restore, namespace: $ns}
spec:
  snapshot: {id: "$snapshot"}
  pod: target
  volume: data
  policy: IfEmpty
EOF
if ! k -n "$ns" wait --for=jsonpath='{.status.phase}'=Completed \
    volumerestore/e2e-restore --timeout=300s; then
    diagnose
    exit 1
fi
# The checksums of a pod's /data, but *.tmp.
sums() { # namespace pod
    k -n "$1" exec "$2" -- sh -c 'cd /data && find . -type f ! -name "*.tmp" | sort | xargs md5sum'
}
same_files() { # namespace pod namespace pod
    if [ "$(sums "$1" "$2")" != "$(sums "$3" "$4")" ]; then
        echo "restored files differ:" >&2
        diff <(sums "$1" "$2") <(sums "$3" "$4") >&2 || true
        exit 1
    fi
}
same_files "$ns" source "$ns" target
if k -n "$ns" exec target -- test -e /data/skip.tmp; then
    echo "the excluded file skip.tmp was restored" >&2
    exit 1
fi
say "node agent passed: snapshot $snapshot backed up and restored byte for byte"
if [ "$snapshots" = 0 ]; then
    echo "$snapshot"
    exit 0
fi

snapshotter=${COFFER_E2E_SNAPSHOTTER:-v8.4.0}
hostpath=${COFFER_E2E_HOSTPATH:-v1.17.0}
if ! k get crd volumesnapshots.snapshot.storage.k8s.io >/dev/null 2>&1; then
    say "CSI snapshot CRDs and snapshot-controller (external-snapshotter $snapshotter)"
    k apply -k "https://github.com/kubernetes-csi/external-snapshotter/client/config/crd?ref=$snapshotter"
    k wait --for=condition=Established --timeout=60s \
        crd/volumesnapshots.snapshot.storage.k8s.io \
        crd/volumesnapshotclasses.snapshot.storage.k8s.io \
        crd/volumesnapshotcontents.snapshot.storage.k8s.io
    k apply -k "https://github.com/kubernetes-csi/external-snapshotter/deploy/kubernetes/snapshot-controller?ref=$snapshotter"
fi
k -n kube-system rollout status deployment/snapshot-controller --timeout=180s
if ! k get storageclass csi-hostpath-sc >/dev/null 2>&1; then
    say "csi-hostpath driver $hostpath"
    src=$(mktemp -d)
    git clone --quiet --depth 1 --branch "$hostpath" \
        https://github.com/kubernetes-csi/csi-driver-host-path "$src"
    kind get kubeconfig --name "$cluster" >"$src/kubeconfig"
    KUBECONFIG="$src/kubeconfig" "$src/deploy/kubernetes-latest/deploy.sh"
    k apply -f "$src/examples/csi-storageclass.yaml"
    rm -rf "$src"
fi
# The controller takes this class for the driver's PVCs.
k label volumesnapshotclass csi-hostpath-snapclass backup.coffer.dev/default=true --overwrite

say "controller"
k -n coffer-system rollout status deployment/coffer-controller --timeout=180s

say "PVC $ns/pg-data on csi-hostpath-sc, filled by pod $ns/writer"
k -n "$ns" delete pod writer --ignore-not-found --wait=true --timeout=60s
k -n "$ns" delete volumebackup e2e-snapshot --ignore-not-found --wait=true --timeout=300s
k apply -f - <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: pg-data, namespace: $ns}
spec:
  storageClassName: csi-hostpath-sc
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
EOF
pod_manifest writer '    coffer.dev/e2e: writer' 1 "$ns" pg-data | k apply -f -
k -n "$ns" wait --for=condition=Ready pod/writer --timeout=180s
sleep 2 # the files are written before `sleep`

say "VolumeBackup $ns/e2e-snapshot: method Snapshot"
k apply -f - <<EOF
apiVersion: coffer.dev/v1alpha1
kind: VolumeBackup
metadata: {name: e2e-snapshot, namespace: $ns}
spec: {method: Snapshot, pvc: pg-data, repository: default}
EOF
if ! k -n "$ns" wait --for=jsonpath='{.status.phase}'=Completed \
    volumebackup/e2e-snapshot --timeout=600s ||
    ! k -n "$ns" wait --for=jsonpath='{.status.stage}'=Done \
        volumebackup/e2e-snapshot --timeout=300s; then
    diagnose
    exit 1
fi
snapshot2=$(k -n "$ns" get volumebackup e2e-snapshot -o jsonpath='{.status.snapshotID}')
say "snapshot: $snapshot2; what the run made is gone:"
for o in pod/coffer-e2e-snapshot pvc/coffer-e2e-snapshot volumesnapshot/coffer-e2e-snapshot; do
    if k -n "$ns" get "$o" >/dev/null 2>&1; then
        echo "$ns/$o is still there after the run's cleanup" >&2
        diagnose
        exit 1
    fi
    echo "  $o: gone"
done

say "restore the latest snapshot of PVC pg-data into a new PVC $ns2/pg-data-copy"
# The target namespace opens the repository with its own BackupRepository
# of the same name: the same URL and password.
repository "$ns2"
k -n "$ns" delete volumerestore e2e-pvc-restore --ignore-not-found --wait=true --timeout=120s
k -n "$ns2" delete pod reader --ignore-not-found --wait=true --timeout=60s
k -n "$ns2" delete pvc pg-data-copy --ignore-not-found --wait=true --timeout=120s
k apply -f - <<EOF
apiVersion: coffer.dev/v1alpha1
kind: VolumeRestore
metadata: {name: e2e-pvc-restore, namespace: $ns}
spec:
  snapshot: {pvc: pg-data}
  target: {namespace: $ns2, pvc: pg-data-copy}
  repository: default
EOF
if ! k -n "$ns" wait --for=jsonpath='{.status.phase}'=Completed \
    volumerestore/e2e-pvc-restore --timeout=600s; then
    diagnose
    exit 1
fi
pod_manifest reader '    coffer.dev/e2e: reader' 0 "$ns2" pg-data-copy | k apply -f -
k -n "$ns2" wait --for=condition=Ready pod/reader --timeout=180s
same_files "$ns" writer "$ns2" reader
say "e2e passed: $snapshot (node agent) and $snapshot2 (CSI snapshot, restored into $ns2/pg-data-copy) byte for byte"
echo "$snapshot"
echo "$snapshot2"
