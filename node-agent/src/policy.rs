//! What the cluster's administrator allows namespaced objects: the limits of
//! the trust model (the README's "Security model"). Set in the agent's and
//! the controller's configuration (flags or their environment variables),
//! handed by the controller to every mover it starts, and never raised by a
//! BackupRepository, a run or an annotation.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use coffer_engine::storage::TenantLimits;

/// The administrator's limits on what a tenant's objects may ask for.
#[derive(Clone, Debug, PartialEq, clap::Args)]
pub struct TenantPolicy {
    /// Local (file://) repositories named by a BackupRepository are allowed
    /// at or below these directories (repeatable or comma-separated; none by
    /// default)
    #[arg(
        long = "allow-file-repository",
        env = "ALLOW_FILE_REPOSITORY",
        value_delimiter = ',',
        value_name = "DIR"
    )]
    pub file_repositories: Vec<PathBuf>,
    /// Repositories whose URL starts with one of these (s3://bucket/team-a,
    /// say) may use the node's or the pod's own cloud identity (instance
    /// metadata, workload identity) when they give no credentials
    /// (repeatable or comma-separated; none by default)
    #[arg(
        long = "allow-ambient-credentials",
        env = "ALLOW_AMBIENT_CREDENTIALS",
        value_delimiter = ',',
        value_name = "URL_PREFIX"
    )]
    pub ambient_credentials: Vec<String>,
    /// The longest store timeout (options timeout, connect-timeout) a
    /// BackupRepository may set
    #[arg(long, env = "MAX_STORE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub max_store_timeout: Duration,
    /// The most store retries (option retries) a BackupRepository may set
    #[arg(long, env = "MAX_STORE_RETRIES", default_value_t = 10)]
    pub max_store_retries: u32,
    /// The most store connections (option connections) a BackupRepository may set
    #[arg(long, env = "MAX_STORE_CONNECTIONS", default_value_t = 64)]
    pub max_store_connections: usize,
    /// The most Argon2 memory, in MiB, a repository's key file may ask for;
    /// a key file that asks for more is not tried (keep it well below the
    /// agent's and the movers' memory limits)
    #[arg(long, env = "MAX_KDF_MEMORY_MIB", default_value_t = 256)]
    pub max_kdf_memory_mib: u32,
    /// The longest timeout a hook annotation may ask for
    #[arg(long, env = "MAX_HOOK_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
    pub max_hook_timeout: Duration,
    /// The longest a dump command (backup.coffer.dev/command) may run
    #[arg(long, env = "MAX_DUMP_DURATION", default_value = "6h", value_parser = parse_duration)]
    pub max_dump_duration: Duration,
}

impl Default for TenantPolicy {
    /// Nothing allowed beyond static credentials; the default caps.
    fn default() -> Self {
        TenantPolicy {
            file_repositories: Vec::new(),
            ambient_credentials: Vec::new(),
            max_store_timeout: Duration::from_secs(300),
            max_store_retries: 10,
            max_store_connections: 64,
            max_kdf_memory_mib: 256,
            max_hook_timeout: Duration::from_secs(30 * 60),
            max_dump_duration: Duration::from_secs(6 * 3600),
        }
    }
}

/// What a namespace's admin runs to let coffer work in it: the RoleBinding
/// of ClusterRole coffer-tenant (deploy/tenant.yaml) to the agent's and the
/// controller's accounts.
pub fn opt_in_command(namespace: &str) -> String {
    format!(
        "kubectl -n {namespace} create rolebinding coffer --clusterrole=coffer-tenant \
         --serviceaccount=coffer-system:coffer-agent --serviceaccount=coffer-system:coffer-controller"
    )
}

/// The command with which namespace `namespace`'s admin lets the
/// controller run application backups' and restores' pods there.
pub fn applications_opt_in_command(namespace: &str) -> String {
    format!(
        "kubectl -n {namespace} create rolebinding coffer-applications --clusterrole=coffer-applications \
         --serviceaccount=coffer-system:coffer-controller"
    )
}

/// `90s`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (write e.g. 30s, 2m, 1h)"))
}

/// Whether `url` starts with `prefix` at a boundary: the prefix is the
/// whole URL, ends with `/`, or is followed by `/` (`s3://b/team-a` allows
/// `s3://b/team-a/x`, not `s3://b/team-ab`).
fn url_prefix(url: &str, prefix: &str) -> bool {
    !prefix.is_empty()
        && url.starts_with(prefix)
        && (url.len() == prefix.len()
            || prefix.ends_with('/')
            || url.as_bytes().get(prefix.len()) == Some(&b'/'))
}

impl TenantPolicy {
    /// Checks a repository URL that a namespaced object names, and returns
    /// the limits to open its store with; or why it may not be used, naming
    /// the URL and what the administrator would have to allow.
    pub fn check_url(&self, url: &str) -> Result<TenantLimits, String> {
        let limits = TenantLimits {
            ambient_credentials: self.ambient_credentials.iter().any(|p| url_prefix(url, p)),
            max_timeout: self.max_store_timeout,
            max_retries: self.max_store_retries,
            max_connections: self.max_store_connections,
        };
        if url.starts_with("memory:") {
            return Err(format!(
                "repository {url}: in-memory repositories are for tests, not for a namespaced object"
            ));
        }
        if coffer_engine::storage::is_remote(url) {
            return Ok(limits);
        }
        if let Some((scheme, _)) = url.split_once("://").filter(|(s, _)| *s != "file") {
            return Err(format!(
                "repository {}: the scheme {scheme:?} is not supported; use s3://, gs://, az:// or file://",
                coffer_engine::storage::redact(url)
            ));
        }
        let path = Path::new(url.strip_prefix("file://").unwrap_or(url));
        self.local_path(path)?;
        Ok(limits)
    }

    /// The local path a file repository URL names, when the administrator
    /// allows it.
    pub fn local_path(&self, path: &Path) -> Result<PathBuf, String> {
        let Some(clean) = clean_absolute(path) else {
            return Err(format!(
                "file repository {}: give an absolute path without '..'",
                path.display()
            ));
        };
        if !host_path_allowed(&clean, &self.file_repositories) {
            return Err(format!(
                "file repository {} is not at or below a directory the cluster's administrator \
                 allows for repositories (--allow-file-repository / ALLOW_FILE_REPOSITORY: {})",
                clean.display(),
                if self.file_repositories.is_empty() {
                    "none".to_string()
                } else {
                    self.file_repositories
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
        }
        Ok(clean)
    }

    /// What opening a tenant's repository may cost.
    pub fn open_limits(&self) -> coffer_engine::OpenLimits {
        coffer_engine::OpenLimits {
            max_kdf_memory_kib: self.max_kdf_memory_mib.saturating_mul(1024),
        }
    }

    /// A hook's timeout, as its annotation asks, within the cap.
    pub fn hook_timeout(&self, asked: Duration) -> Result<Duration, String> {
        if asked > self.max_hook_timeout {
            return Err(format!(
                "a hook timeout of {} is above the limit the cluster's administrator set ({})",
                humantime::format_duration(asked),
                humantime::format_duration(self.max_hook_timeout)
            ));
        }
        Ok(asked)
    }

    /// The mover flags that carry this policy: a mover applies the same
    /// limits as the controller that started it.
    pub fn mover_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in &self.file_repositories {
            out.push(format!("--allow-file-repository={}", p.display()));
        }
        for p in &self.ambient_credentials {
            out.push(format!("--allow-ambient-credentials={p}"));
        }
        out.push(format!(
            "--max-store-timeout={}",
            humantime::format_duration(self.max_store_timeout)
        ));
        out.push(format!("--max-store-retries={}", self.max_store_retries));
        out.push(format!(
            "--max-store-connections={}",
            self.max_store_connections
        ));
        out.push(format!("--max-kdf-memory-mib={}", self.max_kdf_memory_mib));
        out.push(format!(
            "--max-hook-timeout={}",
            humantime::format_duration(self.max_hook_timeout)
        ));
        out.push(format!(
            "--max-dump-duration={}",
            humantime::format_duration(self.max_dump_duration)
        ));
        out
    }
}

/// `path` without `.` components, refusing `..` and relative paths.
pub fn clean_absolute(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Whether a clean host path lies at or below one of the allowed prefixes
/// (whole components: `/data` allows `/data/x`, not `/database`).
pub fn host_path_allowed(clean: &Path, allow: &[PathBuf]) -> bool {
    allow
        .iter()
        .filter_map(|a| clean_absolute(a))
        .any(|a| clean.starts_with(&a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths_pass_only_what_the_administrator_allows() {
        let p = TenantPolicy {
            file_repositories: vec!["/srv/backups".into()],
            ambient_credentials: vec!["s3://bucket/team-a".into()],
            ..Default::default()
        };
        assert!(p.check_url("/srv/backups/team-a").is_ok());
        assert!(p.check_url("file:///srv/backups/x/y").is_ok());
        for bad in [
            "/srv/backupsX/a",
            "/srv/backups/../etc",
            "relative/path",
            "/var/lib/kubelet/pods",
            "file:///etc",
            "memory://",
            "ftp://host/x",
        ] {
            let e = p.check_url(bad).unwrap_err();
            assert!(
                e.contains("repositor") || e.contains("scheme"),
                "{bad}: {e}"
            );
        }
        let e = TenantPolicy::default()
            .check_url("/srv/backups/a")
            .unwrap_err();
        assert!(e.contains("none"), "{e}");
        assert!(
            p.check_url("s3://bucket/team-a")
                .unwrap()
                .ambient_credentials
        );
        assert!(
            p.check_url("s3://bucket/team-a/sub")
                .unwrap()
                .ambient_credentials
        );
        assert!(
            !p.check_url("s3://bucket/team-ab")
                .unwrap()
                .ambient_credentials
        );
        assert!(
            !p.check_url("s3://other/team-a")
                .unwrap()
                .ambient_credentials
        );
    }

    #[test]
    fn hook_timeouts_are_capped_and_the_policy_reaches_movers_whole() {
        let p = TenantPolicy {
            file_repositories: vec!["/srv/a".into(), "/srv/b".into()],
            ambient_credentials: vec!["gs://b/x".into()],
            max_hook_timeout: Duration::from_secs(60),
            ..Default::default()
        };
        assert!(p
            .hook_timeout(Duration::from_secs(61))
            .unwrap_err()
            .contains("1m"));
        assert_eq!(
            p.hook_timeout(Duration::from_secs(60)),
            Ok(Duration::from_secs(60))
        );
        #[derive(clap::Parser)]
        struct Args {
            #[command(flatten)]
            policy: TenantPolicy,
        }
        let args = p.mover_args();
        let parsed = <Args as clap::Parser>::try_parse_from(
            std::iter::once("mover".to_string()).chain(args),
        )
        .unwrap()
        .policy;
        assert_eq!(format!("{parsed:?}"), format!("{p:?}"));
    }

    #[test]
    fn allowed_prefixes_are_whole_components() {
        let allow = vec![
            PathBuf::from("/var/lib/rancher/k3s/storage"),
            PathBuf::from("/data/"),
        ];
        let ok = |p: &str| host_path_allowed(&clean_absolute(Path::new(p)).unwrap(), &allow);
        assert!(ok("/data"));
        assert!(ok("/data/db"));
        assert!(ok("/var/lib/rancher/k3s/storage/pvc-1_ns_x"));
        assert!(!ok("/database"));
        assert!(!ok("/var/lib/rancher"));
        assert!(!ok("/etc"));
        assert!(clean_absolute(Path::new("/data/../etc")).is_none());
        assert!(clean_absolute(Path::new("data")).is_none());
        assert_eq!(
            clean_absolute(Path::new("/data/./x/")).unwrap(),
            PathBuf::from("/data/x")
        );
    }
}
