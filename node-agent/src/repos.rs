//! A namespace's repository: its BackupRepository, its password Secret and
//! its credentials Secret, all read from that namespace and handed to the
//! engine as values. There is no default password, and nothing comes from
//! the agent's own environment.
//!
//! Opened repositories are kept per (namespace, name) with a fingerprint of
//! everything that opened them; a changed spec or Secret opens it again.
//! (The engine runs Argon2 on a blocking thread, never on the executor.)

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use coffer_engine::{storage, InitOptions, Repository};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::Client;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::api::is_status;
use crate::crd::{BackupRepository, BackupRepositoryStatus, RepositoryPhase, SecretKeyRef};
use crate::policy::TenantPolicy;

/// Why a repository could not be used; the message names the object and the
/// next step, and becomes the BackupRepository's status message.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The BackupRepository does not exist.
    #[error("BackupRepository {name:?} not found in namespace {namespace:?}; create one (see the README's Kubernetes section)")]
    Missing {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Its password Secret or key is missing.
    #[error("{what}; create it: kubectl -n {namespace} create secret generic {secret} --from-literal={key}=$(head -c 32 /dev/urandom | base64)")]
    NoPassword {
        /// What is missing, in a sentence.
        what: String,
        /// Namespace.
        namespace: String,
        /// Secret name.
        secret: String,
        /// Key.
        key: String,
    },
    /// The namespace has not opted in: the agent (or a mover the controller
    /// could not grant them to) may not read its Secrets.
    #[error("namespace {namespace} has not allowed coffer to read its Secrets (403 reading Secret {secret:?}); its admin opts it in: {}", crate::policy::opt_in_command(namespace))]
    NotAllowed {
        /// Namespace.
        namespace: String,
        /// The Secret that could not be read.
        secret: String,
    },
    /// The credentials Secret is missing.
    #[error("credentials Secret {secret:?} not found in namespace {namespace:?}; create it with the store's keys (for S3: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")]
    NoCredentials {
        /// Namespace.
        namespace: String,
        /// Secret name.
        secret: String,
    },
    /// The engine refused it (wrong password, missing repository, store
    /// errors...).
    #[error("BackupRepository {namespace}/{name} ({url}): {source}")]
    Engine {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Its URL.
        url: String,
        /// The engine's error.
        #[source]
        source: coffer_engine::Error,
    },
    /// The API server failed.
    #[error("reading {what}: {source}")]
    Kube {
        /// What was being read.
        what: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// Opened repositories, shared by every run of the agent. Each repository
/// has its own lock, so a slow or hostile store (or an expensive key file)
/// holds up only the runs of its own repository; the map's lock is never
/// held across I/O or key derivation.
#[derive(Default)]
pub struct Repos {
    open: std::sync::Mutex<HashMap<RepoKey, Slot>>,
    /// What the administrator allows the namespaces' repositories.
    policy: TenantPolicy,
    /// Keys the fingerprints of what opened a repository (a password is
    /// never kept, not even hashed without a secret).
    fingerprint_key: [u8; 32],
}

/// One repository's place in the cache: empty until opened.
type Slot = Arc<Mutex<Option<Open>>>;

/// An opened repository, what opened it, and when it was last asked for.
struct Open {
    fingerprint: blake3::Hash,
    repo: Arc<Repository>,
    last_used: std::time::Instant,
}

/// (namespace, name)
type RepoKey = (String, String);

impl Repos {
    /// No repository open yet; each will be opened within `policy`.
    pub fn new(policy: TenantPolicy) -> Self {
        let mut fingerprint_key = [0u8; 32];
        let _ = getrandom::fill(&mut fingerprint_key);
        Repos {
            open: Default::default(),
            policy,
            fingerprint_key,
        }
    }

    /// The repository `key` opened with `fingerprint`, from the cache, or
    /// opened now by `open`. Only callers for the same repository wait for
    /// each other.
    async fn cached<E>(
        &self,
        key: RepoKey,
        fingerprint: blake3::Hash,
        open: impl std::future::Future<Output = Result<Repository, E>>,
    ) -> Result<Arc<Repository>, E> {
        let slot = {
            let mut map = self.open.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key).or_default().clone()
        };
        let mut entry = slot.lock().await;
        if let Some(e) = entry.as_mut().filter(|e| e.fingerprint == fingerprint) {
            e.last_used = std::time::Instant::now();
            return Ok(e.repo.clone());
        }
        let repo = Arc::new(open.await?);
        *entry = Some(Open {
            fingerprint,
            repo: repo.clone(),
            last_used: std::time::Instant::now(),
        });
        Ok(repo)
    }

    /// Forgets the repositories nobody used for `idle` and nobody holds
    /// now: their master keys leave memory (they are zeroed on drop).
    /// Returns how many were forgotten.
    pub fn evict_idle(&self, idle: std::time::Duration) -> usize {
        let mut map = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let before = map.len();
        map.retain(|_, slot| {
            // Being opened or used right now: keep.
            let Ok(entry) = slot.try_lock() else {
                return true;
            };
            match entry.as_ref() {
                None => false,
                Some(e) => e.last_used.elapsed() < idle || Arc::strong_count(&e.repo) > 1,
            }
        });
        before - map.len()
    }

    /// Opens (or reuses) `namespace/name`, creating it when `spec.init` asks
    /// and it does not exist. Records the outcome in the BackupRepository's
    /// status.
    pub async fn open(
        &self,
        client: &Client,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<Repository>, RepoError> {
        let api: Api<BackupRepository> = Api::namespaced(client.clone(), namespace);
        let repo = match api.get(name).await {
            Ok(r) => r,
            Err(e) if is_status(&e, 404) => {
                return Err(RepoError::Missing {
                    namespace: namespace.into(),
                    name: name.into(),
                })
            }
            Err(e) => {
                return Err(RepoError::Kube {
                    what: format!("BackupRepository {namespace}/{name}"),
                    source: e,
                })
            }
        };
        let result = self.open_spec(client, namespace, name, &repo).await;
        let now = crate::time::Timestamp::now();
        let mut status = match &result {
            Ok(r) => BackupRepositoryStatus {
                phase: Some(RepositoryPhase::Ready),
                repository_id: Some(hex::encode(&r.config().id)),
                message: None,
                ..Default::default()
            },
            Err(e) => BackupRepositoryStatus {
                phase: Some(RepositoryPhase::NotReady),
                repository_id: None,
                message: Some(e.to_string()),
                ..Default::default()
            },
        };
        status.last_checked = Some(now);
        status.observed_generation = repo.metadata.generation;
        status.conditions = repo
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let (ready, reason) = match &result {
            Ok(_) => (true, "Opened"),
            Err(_) => (false, "CannotOpen"),
        };
        crate::status::set_condition(
            &mut status.conditions,
            "Ready",
            ready,
            reason,
            status.message.clone().unwrap_or_default(),
            now,
        );
        for c in &mut status.conditions {
            c.observed_generation = repo.metadata.generation;
        }
        let seen = |s: &BackupRepositoryStatus| {
            (
                s.phase,
                s.message.clone(),
                s.observed_generation,
                s.conditions.len(),
            )
        };
        if repo.status.as_ref().map(seen) != Some(seen(&status)) {
            // Every field the agent owns, null included (a Ready status
            // clears the last message); the controller's maintenance
            // fields are left alone.
            let fields = serde_json::json!({
                "phase": status.phase,
                "repositoryID": status.repository_id,
                "message": status.message,
                "lastChecked": status.last_checked,
                "observedGeneration": status.observed_generation,
                "conditions": status.conditions,
            });
            let written = crate::report::patch_status::<BackupRepository>(
                client, namespace, name, fields, None,
            )
            .await;
            if written.as_ref().ok() != Some(&crate::report::Written::Applied) {
                tracing::warn!(
                    namespace,
                    repository = name,
                    "cannot update the BackupRepository's status: {written:?}"
                );
            }
        }
        result
    }

    async fn open_spec(
        &self,
        client: &Client,
        namespace: &str,
        name: &str,
        repo: &BackupRepository,
    ) -> Result<Arc<Repository>, RepoError> {
        let spec = &repo.spec;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let password = read_password(&secrets, namespace, name, &spec.password_secret_ref).await?;
        let mut options: Vec<(String, String)> = spec
            .options
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(cref) = &spec.credentials_secret_ref {
            let data = read_credentials(&secrets, namespace, &cref.name).await?;
            options.extend(credential_options(&spec.url, &data));
        }
        let mut fp = blake3::Hasher::new_keyed(&self.fingerprint_key);
        fp.update(serde_json::to_string(spec).unwrap_or_default().as_bytes());
        fp.update(&(password.len() as u64).to_le_bytes());
        fp.update(&password);
        for (k, v) in &options {
            fp.update(k.as_bytes());
            fp.update(&[0]);
            fp.update(v.as_bytes());
            fp.update(&[0]);
        }
        let fp = fp.finalize();
        let key = (namespace.to_string(), name.to_string());
        let engine_err = |source| RepoError::Engine {
            namespace: namespace.into(),
            name: name.into(),
            url: storage::redact(&spec.url),
            source,
        };
        // The engine derives keys (Argon2) on a blocking thread.
        let open = open_or_init(&spec.url, options, &password, spec.init, &self.policy);
        self.cached(key, fp, async { open.await.map_err(engine_err) })
            .await
    }
}

/// Reads Secret `name` of `namespace`; 403 is a namespace that has not
/// opted in, 404 is `missing`.
async fn read_secret(
    secrets: &Api<Secret>,
    namespace: &str,
    name: &str,
    missing: impl FnOnce() -> RepoError,
) -> Result<Secret, RepoError> {
    match secrets.get(name).await {
        Ok(s) => Ok(s),
        Err(e) if is_status(&e, 403) => Err(RepoError::NotAllowed {
            namespace: namespace.into(),
            secret: name.into(),
        }),
        Err(e) if is_status(&e, 404) => Err(missing()),
        Err(e) => Err(RepoError::Kube {
            what: format!("Secret {namespace}/{name}"),
            source: e,
        }),
    }
}

/// The password of BackupRepository `namespace/repository`, from the key
/// `pw_ref` names (a trailing newline dropped, as from a password file:
/// `kubectl create secret --from-file` keeps it, and the CLI drops it).
pub async fn read_password(
    secrets: &Api<Secret>,
    namespace: &str,
    repository: &str,
    pw_ref: &SecretKeyRef,
) -> Result<Zeroizing<Vec<u8>>, RepoError> {
    let no_password = |what: String| RepoError::NoPassword {
        what,
        namespace: namespace.into(),
        secret: pw_ref.name.clone(),
        key: pw_ref.key.clone(),
    };
    let secret = read_secret(secrets, namespace, &pw_ref.name, || {
        no_password(format!(
            "password Secret {:?} of BackupRepository {namespace}/{repository} not found",
            pw_ref.name
        ))
    })
    .await?;
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(&pw_ref.key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&pw_ref.key))
                .map(|s| s.clone().into_bytes())
        })
        .map(|p| Zeroizing::new(coffer_engine::keys::password_line(&p).to_vec()))
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            no_password(format!(
                "Secret {namespace}/{} has no key {:?} (or it is empty)",
                pw_ref.name, pw_ref.key
            ))
        })
}

/// The keys of credentials Secret `name` (the store's credentials).
pub async fn read_credentials(
    secrets: &Api<Secret>,
    namespace: &str,
    name: &str,
) -> Result<BTreeMap<String, Vec<u8>>, RepoError> {
    let secret = read_secret(secrets, namespace, name, || RepoError::NoCredentials {
        namespace: namespace.into(),
        secret: name.into(),
    })
    .await?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
}

/// Opens the repository at `url` (named by a tenant's BackupRepository)
/// with `password`, within what `policy` allows: the URL, the options, the
/// process's own identity, the cost of its key files. Creates it first
/// when `init` asks and it does not exist (another writer creating it at
/// the same moment is fine).
pub async fn open_or_init(
    url: &str,
    options: Vec<(String, String)>,
    password: &[u8],
    init: bool,
    policy: &TenantPolicy,
) -> coffer_engine::Result<Repository> {
    let limits = policy
        .check_url(url)
        .map_err(coffer_engine::Error::InvalidArgument)?;
    let local = !url.contains("://") || url.starts_with("file://");
    let store = storage::open(
        url,
        &storage::OpenOptions {
            create: init && local,
            options,
            cache_dir: None,
            from_env: false,
            tenant: Some(limits),
        },
    )?;
    let exists = match store.size("config").await {
        Ok(_) => true,
        Err(e) if e.kind == storage::StoreErrorKind::NotFound => false,
        Err(e) => {
            return Err(coffer_engine::Error::Store {
                location: store.location(),
                source: e,
            })
        }
    };
    if !exists {
        if !init {
            return Err(coffer_engine::Error::RepositoryNotFound {
                location: storage::redact(url),
            });
        }
        store
            .prepare_container()
            .await
            .map_err(|e| coffer_engine::Error::Store {
                location: store.location(),
                source: e,
            })?;
        match Repository::init(store.clone(), password, InitOptions::default()).await {
            Ok(r) => return Ok(r),
            // Another node created it first: open it.
            Err(coffer_engine::Error::RepositoryExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Repository::open_with(store, password, &policy.open_limits()).await
}

/// Store options from a credentials Secret: keys named as the store's own
/// environment variables (`AWS_ACCESS_KEY_ID`, `AZURE_STORAGE_ACCOUNT_KEY`,
/// `GOOGLE_SERVICE_ACCOUNT_KEY`, ...) become `s3.`/`az.`/`gs.` options; keys
/// already in option form (`s3.endpoint`) pass as they are; other stores'
/// keys are left out.
pub fn credential_options(url: &str, data: &BTreeMap<String, Vec<u8>>) -> Vec<(String, String)> {
    let (scheme, env_prefix) = match url.split_once("://").map(|(s, _)| s) {
        Some("s3") => ("s3", "AWS_"),
        Some("gs") => ("gs", "GOOGLE_"),
        Some("az") => ("az", "AZURE_"),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for (k, v) in data {
        let Ok(v) = String::from_utf8(v.clone()) else {
            continue;
        };
        let v = v.trim_end_matches('\n').to_string();
        if k.starts_with(&format!("{scheme}.")) {
            out.push((k.clone(), v));
        } else if k.starts_with(env_prefix) {
            out.push((format!("{scheme}.{}", k.to_ascii_lowercase()), v));
        }
    }
    out
}

/// Applies `policy` to the snapshots of `repo` that pass `filter`, per
/// origin, and returns the plan and how many snapshots were forgotten. Only
/// the snapshots of `cluster` count, also when it is unset: an unset cluster
/// in a filter would match every cluster's snapshots. Shared by schedules'
/// retention pods and the node agent's retention of pods' schedules.
pub async fn forget_per_origin(
    repo: &coffer_engine::Repository,
    cluster: Option<&String>,
    filter: &coffer_engine::forget::Filter,
    policy: &coffer_engine::forget::Policy,
    cancel: &coffer_engine::CancelToken,
) -> Result<(coffer_engine::forget::ForgetPlan, usize), String> {
    forget_planned(repo, cluster, cancel, |snapshots| {
        coffer_engine::forget::plan(snapshots, policy, BY_ORIGIN, filter).map_err(|e| e.to_string())
    })
    .await
}

/// [`forget_per_origin`] for a schedule of application backups: each one
/// is kept or forgotten whole, as [`application_plan`] decides; `running`
/// are the schedule's ApplicationBackups not ended yet.
pub async fn forget_applications(
    repo: &coffer_engine::Repository,
    cluster: Option<&String>,
    filter: &coffer_engine::forget::Filter,
    policy: &coffer_engine::forget::Policy,
    running: &[String],
    cancel: &coffer_engine::CancelToken,
) -> Result<(coffer_engine::forget::ForgetPlan, usize), String> {
    forget_planned(repo, cluster, cancel, |snapshots| {
        application_plan(snapshots, policy, filter, running)
    })
    .await
}

/// Retention grouped by Kubernetes origin alone.
const BY_ORIGIN: coffer_engine::forget::GroupBy = coffer_engine::forget::GroupBy {
    host: false,
    paths: false,
    tags: false,
    origin: true,
};

/// Loads the snapshots of `cluster` (only those, also when it is unset),
/// plans with `plan`, and forgets what the plan removes.
async fn forget_planned(
    repo: &coffer_engine::Repository,
    cluster: Option<&String>,
    cancel: &coffer_engine::CancelToken,
    plan: impl FnOnce(
        &[(
            coffer_engine::format::SnapshotId,
            coffer_engine::format::snapshot::Snapshot,
        )],
    ) -> Result<coffer_engine::forget::ForgetPlan, String>,
) -> Result<(coffer_engine::forget::ForgetPlan, usize), String> {
    let mut snapshots = repo.snapshots().await.map_err(|e| e.to_string())?;
    snapshots.retain(|(_, s)| s.origin.as_ref().and_then(|o| o.cluster.as_ref()) == cluster);
    let plan = plan(&snapshots)?;
    let removed = coffer_engine::forget::execute(repo, &plan, cancel)
        .await
        .map_err(|e| e.to_string())?;
    Ok((plan, removed))
}

/// Retention of application backups. `policy` is applied per origin to
/// the objects' snapshots among `snapshots` that pass `filter` (those
/// tagged `coffer.dev/application-objects=NAME`); each application
/// backup's volume snapshots (tagged `coffer.dev/application=NAME` alone)
/// follow its objects' snapshot: kept with it, forgotten with it, with two
/// exceptions that keep data: a volume snapshot that `policy` keeps among
/// its own claim's (its origin's) stays, so that a claim whose backups
/// failed lately keeps its last good data; and one of an application
/// backup in `running` stays. The volume snapshots of a backup that has
/// no objects' snapshot (its capture failed) are forgotten once they are
/// older than the oldest application backup kept. Snapshots without an
/// application tag are left alone.
pub fn application_plan(
    snapshots: &[(
        coffer_engine::format::SnapshotId,
        coffer_engine::format::snapshot::Snapshot,
    )],
    policy: &coffer_engine::forget::Policy,
    filter: &coffer_engine::forget::Filter,
    running: &[String],
) -> Result<coffer_engine::forget::ForgetPlan, String> {
    use crate::names::{APPLICATION_TAG, OBJECTS_TAG};
    use coffer_engine::forget::{plan, Decision, GroupPlan};
    use coffer_engine::repository::snapshot_time;
    use std::collections::BTreeSet;
    let tagged = |s: &coffer_engine::format::snapshot::Snapshot, prefix: &str| {
        s.tags
            .iter()
            .find_map(|t| t.strip_prefix(prefix).map(str::to_string))
    };
    let (objects, volumes): (Vec<_>, Vec<_>) = snapshots
        .iter()
        .filter(|(_, s)| filter.matches(s) && tagged(s, APPLICATION_TAG).is_some())
        .cloned()
        .partition(|(_, s)| tagged(s, OBJECTS_TAG).is_some());
    let mut out = plan(&objects, policy, BY_ORIGIN, filter).map_err(|e| e.to_string())?;
    let application_of: BTreeMap<_, _> = snapshots
        .iter()
        .filter_map(|(id, s)| Some((*id, tagged(s, APPLICATION_TAG)?)))
        .collect();
    let time_of: BTreeMap<_, _> = snapshots
        .iter()
        .map(|(id, s)| (*id, snapshot_time(s)))
        .collect();
    let names = |pick: fn(&GroupPlan) -> &Vec<Decision>| -> BTreeSet<String> {
        out.groups
            .iter()
            .flat_map(|g| pick(g).iter())
            .filter_map(|d| application_of.get(&d.id).cloned())
            .collect()
    };
    let kept = names(|g| &g.keep);
    let forgotten = names(|g| &g.remove);
    let oldest_kept = out
        .groups
        .iter()
        .flat_map(|g| g.keep.iter())
        .filter_map(|d| time_of.get(&d.id))
        .min()
        .copied();
    // Per claim: what the policy keeps of each claim's own snapshots.
    let per_claim = if volumes.is_empty() {
        Vec::new()
    } else {
        plan(&volumes, policy, BY_ORIGIN, filter)
            .map_err(|e| e.to_string())?
            .groups
    };
    for g in per_claim {
        let mut follow = GroupPlan {
            key: g.key,
            keep: Vec::new(),
            remove: Vec::new(),
        };
        for mut d in g.keep.into_iter().chain(g.remove) {
            let app = application_of.get(&d.id).cloned().unwrap_or_default();
            let orphan = !kept.contains(&app)
                && !forgotten.contains(&app)
                && oldest_kept.is_some_and(|t| time_of.get(&d.id).is_some_and(|v| *v < t));
            if kept.contains(&app) {
                d.reasons.push(format!("application {app}"));
            } else if running.contains(&app) {
                d.reasons.push(format!("application {app} still running"));
            } else if !d.reasons.is_empty() {
                // Kept among its claim's own: the claim's last good data.
            } else if !(forgotten.contains(&app) || orphan) {
                d.reasons
                    .push(format!("application {app} not captured yet"));
            }
            if d.reasons.is_empty() {
                follow.remove.push(d);
            } else {
                follow.keep.push(d);
            }
        }
        let newest_first = |a: &Decision, b: &Decision| time_of.get(&b.id).cmp(&time_of.get(&a.id));
        follow.keep.sort_by(newest_first);
        follow.remove.sort_by(newest_first);
        out.groups.push(follow);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot of namespace `shop` at minute `min`, with `tags` and
    /// (for a volume) a claim.
    fn snapshot(
        i: u8,
        min: u32,
        pvc: Option<&str>,
        tags: &[String],
    ) -> (
        coffer_engine::format::SnapshotId,
        coffer_engine::format::snapshot::Snapshot,
    ) {
        use coffer_engine::format::snapshot::*;
        use coffer_engine::format::tree::{Node, NodeKind};
        use coffer_engine::format::{BlobId, SnapshotId};
        let mut root = Node::new("r", NodeKind::Dir);
        root.subtree = Some(BlobId([1; 32]));
        let s = Snapshot {
            version: SNAPSHOT_VERSION,
            time: format!("2026-12-07T10:{min:02}:00Z"),
            hostname: "h".into(),
            username: "u".into(),
            uid: 0,
            gid: 0,
            paths: vec!["/data".into()],
            tags: tags.to_vec(),
            root,
            parent: None,
            program: "t".into(),
            summary: SnapshotSummary::default(),
            origin: Some(KubernetesOrigin {
                cluster: Some("prod".into()),
                namespace: Some("shop".into()),
                pvc: pvc.map(str::to_string),
                ..Default::default()
            }),
            original: None,
            ignored_changes: Vec::new(),
        };
        (SnapshotId([i; 32]), s)
    }

    /// An application backup `app` at minute `min`: its objects' snapshot
    /// (unless `captured` is false) and one snapshot per claim of `claims`.
    fn application_of(
        first: u8,
        app: &str,
        min: u32,
        captured: bool,
        claims: &[&str],
    ) -> Vec<(
        coffer_engine::format::SnapshotId,
        coffer_engine::format::snapshot::Snapshot,
    )> {
        use crate::names::{application_tag, objects_tag, schedule_tag};
        let tags = vec![schedule_tag("nightly"), application_tag(app)];
        let mut out: Vec<_> = claims
            .iter()
            .zip(first..)
            .map(|(claim, id)| snapshot(id, min, Some(claim), &tags))
            .collect();
        if captured {
            let mut objects = tags.clone();
            objects.push(objects_tag(app));
            out.push(snapshot(first + 2, min + 1, None, &objects));
        }
        out
    }

    /// [`application_of`] with both claims.
    fn application(
        first: u8,
        app: &str,
        min: u32,
        captured: bool,
    ) -> Vec<(
        coffer_engine::format::SnapshotId,
        coffer_engine::format::snapshot::Snapshot,
    )> {
        application_of(first, app, min, captured, &["data-db-0", "data-db-1"])
    }

    /// Retention of application backups keeps or forgets each one whole:
    /// keep-last 2 over four backups forgets the two oldest's objects and
    /// volumes together, never a kept one's volumes; the volumes of a
    /// backup whose capture failed go once older than the oldest kept one,
    /// and stay while newer (a backup still going). Another schedule's
    /// snapshots are not touched.
    #[test]
    fn application_backups_are_kept_or_forgotten_whole() {
        let mut snaps = Vec::new();
        snaps.extend(application(10, "nightly-1", 0, true));
        snaps.extend(application(20, "nightly-2", 10, false));
        snaps.extend(application(30, "nightly-3", 20, true));
        snaps.extend(application(40, "nightly-4", 30, true));
        snaps.extend(application(50, "nightly-5", 40, true));
        snaps.extend(application(60, "nightly-6", 50, false));
        // Another schedule's application backup, older than all.
        snaps.push(snapshot(
            70,
            0,
            Some("data-db-0"),
            &[
                crate::names::schedule_tag("hourly"),
                crate::names::application_tag("hourly-1"),
            ],
        ));
        let filter = coffer_engine::forget::Filter {
            tags: vec![crate::names::schedule_tag("nightly")],
            ..Default::default()
        };
        let policy = coffer_engine::forget::Policy {
            last: 2,
            ..Default::default()
        };
        let plan = application_plan(&snaps, &policy, &filter, &[]).unwrap();
        let mut removed: Vec<u8> = plan.removed().iter().map(|id| id.0[0]).collect();
        removed.sort();
        // nightly-1, -3 (objects and volumes), nightly-2's orphan volumes.
        assert_eq!(removed, vec![10, 11, 12, 20, 21, 30, 31, 32]);
        let mut kept: Vec<u8> = plan
            .groups
            .iter()
            .flat_map(|g| g.keep.iter().map(|d| d.id.0[0]))
            .collect();
        kept.sort();
        // nightly-4, -5 whole; nightly-6's volumes (newer than every kept).
        assert_eq!(kept, vec![40, 41, 42, 50, 51, 52, 60, 61]);

        // The policy is the engine's: one that keeps nothing is refused.
        let none = coffer_engine::forget::Policy::default();
        assert!(application_plan(&snaps, &none, &filter, &[]).is_err());
    }

    /// Data is never lost to the whole-backup rule: a claim whose backups
    /// failed lately keeps its last good snapshot (the policy per claim
    /// keeps it), though its application backup is forgotten; the volumes
    /// of a backup still running stay, however old.
    #[test]
    fn a_claims_last_good_data_and_a_running_backups_volumes_stay() {
        let mut snaps = Vec::new();
        snaps.extend(application(10, "nightly-1", 0, true));
        snaps.extend(application_of(20, "nightly-2", 10, true, &["data-db-0"]));
        snaps.extend(application_of(30, "nightly-3", 20, true, &["data-db-0"]));
        // Started before nightly-3, still capturing (concurrencyPolicy Allow).
        snaps.extend(application_of(40, "nightly-x", 5, false, &["data-db-0"]));
        let filter = coffer_engine::forget::Filter {
            tags: vec![crate::names::schedule_tag("nightly")],
            ..Default::default()
        };
        let policy = coffer_engine::forget::Policy {
            last: 1,
            ..Default::default()
        };
        let running = ["nightly-x".to_string()];
        let plan = application_plan(&snaps, &policy, &filter, &running).unwrap();
        let mut removed: Vec<u8> = plan.removed().iter().map(|id| id.0[0]).collect();
        removed.sort();
        // nightly-1's objects and data-db-0, nightly-2 whole.
        assert_eq!(removed, vec![10, 12, 20, 22]);
        let reasons: BTreeMap<u8, Vec<String>> = plan
            .groups
            .iter()
            .flat_map(|g| g.keep.iter().map(|d| (d.id.0[0], d.reasons.clone())))
            .collect();
        assert_eq!(
            reasons.keys().copied().collect::<Vec<_>>(),
            vec![11, 30, 32, 40]
        );
        assert_eq!(
            reasons[&11],
            vec!["last".to_string()],
            "data-db-1's last good data"
        );
        assert_eq!(
            reasons[&40],
            vec!["application nightly-x still running".to_string()]
        );
        // Each claim and the objects are origins of their own.
        assert_eq!(plan.groups.len(), 3, "{plan:#?}");

        // Once it ended without its objects, its volumes go (older than
        // the oldest backup kept).
        let plan = application_plan(&snaps, &policy, &filter, &[]).unwrap();
        assert!(plan.removed().iter().any(|id| id.0[0] == 40));
    }

    async fn memory_repo() -> Repository {
        let store = storage::open_location("memory://", true).unwrap();
        let init = InitOptions {
            kdf: coffer_engine::keys::KdfCost {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
            ..Default::default()
        };
        Repository::init(store, b"pw", init).await.unwrap()
    }

    fn key(ns: &str) -> RepoKey {
        (ns.to_string(), "default".to_string())
    }

    /// One repository whose store never answers holds up only its own
    /// runs: another namespace's repository opens meanwhile. (Before, one
    /// lock over every repository was held across the opening.)
    #[tokio::test]
    async fn a_store_that_hangs_holds_up_only_its_own_repository() {
        let repos = Arc::new(Repos::new(TenantPolicy::default()));
        let fp = blake3::hash(b"spec");
        let hung = {
            let repos = repos.clone();
            tokio::spawn(async move {
                repos
                    .cached(key("slow"), fp, async {
                        std::future::pending::<Result<Repository, String>>().await
                    })
                    .await
            })
        };
        tokio::task::yield_now().await;
        let other = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            repos.cached(key("fast"), fp, async {
                Ok::<_, String>(memory_repo().await)
            }),
        )
        .await
        .expect("another namespace's repository waited for the hung one");
        assert!(other.is_ok());
        hung.abort();
    }

    /// A repository is opened once per fingerprint, reopened when its spec
    /// or password changes, and closed when idle and held by nobody.
    #[tokio::test]
    async fn repositories_are_reused_then_closed_when_idle() {
        let repos = Repos::new(TenantPolicy::default());
        let opens = std::sync::atomic::AtomicUsize::new(0);
        let open = || async {
            opens.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, String>(memory_repo().await)
        };
        let a = blake3::hash(b"a");
        let first = repos.cached(key("ns"), a, open()).await.unwrap();
        let again = repos.cached(key("ns"), a, open()).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(opens.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Held by a run: not closed, however idle.
        assert_eq!(repos.evict_idle(std::time::Duration::ZERO), 0);
        drop((first, again));
        assert_eq!(repos.evict_idle(std::time::Duration::from_secs(3600)), 0);
        assert_eq!(repos.evict_idle(std::time::Duration::ZERO), 1);
        let reopened = repos.cached(key("ns"), a, open()).await.unwrap();
        assert_eq!(opens.load(std::sync::atomic::Ordering::SeqCst), 2);
        let changed = repos
            .cached(key("ns"), blake3::hash(b"b"), open())
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&reopened, &changed));
        assert_eq!(opens.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn credentials_map_to_the_store_of_the_url() {
        let data: BTreeMap<String, Vec<u8>> = [
            ("AWS_ACCESS_KEY_ID", "AKIA"),
            ("AWS_SECRET_ACCESS_KEY", "secret\n"),
            ("AZURE_STORAGE_ACCOUNT_KEY", "az"),
            ("s3.endpoint", "http://127.0.0.1:9000"),
            ("unrelated", "x"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
        let o = credential_options("s3://bucket/team-a", &data);
        assert_eq!(
            o,
            vec![
                ("s3.aws_access_key_id".to_string(), "AKIA".to_string()),
                ("s3.aws_secret_access_key".into(), "secret".into()),
                ("s3.endpoint".into(), "http://127.0.0.1:9000".into()),
            ]
        );
        let o = credential_options("az://c/p", &data);
        assert_eq!(
            o,
            vec![("az.azure_storage_account_key".to_string(), "az".to_string())]
        );
        assert!(credential_options("/local/path", &data).is_empty());
    }
}
