#!/usr/bin/env bash
# Back up pod db-0's selected volumes now: every new value of the annotation
# starts one backup of each volume named in backup.coffer.dev/volumes.
#   usage: backup-now.sh [POD] [NAMESPACE]
# Then: kubectl -n team-a get volumebackups -l coffer.dev/pod=db-0 -w
set -euo pipefail
kubectl -n "${2:-team-a}" annotate pod "${1:-db-0}" "backup.coffer.dev/backup-now=$(date +%s)" --overwrite
