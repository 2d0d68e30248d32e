//! Pod Security admission, as Kubernetes' built-in PodSecurity admission plugin enforces it on
//! pod creation: a namespace's `pod-security.kubernetes.io/enforce` label names a level of the
//! [Pod Security Standards], and a pod that fails a check of that level is refused.
//!
//! [`violations`] is a pure function of the level and the pod; the store asks it on every
//! creation of a core `v1` pod and refuses with [`refusal`]'s message. The checks, their order,
//! their reasons and their details follow `k8s.io/pod-security-admission/policy` at its latest
//! version, so that a refusal reads word for word as Kubernetes' does, for example:
//!
//! ```text
//! pods "mover" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false
//! (container "mover" must set securityContext.allowPrivilegeEscalation=false), runAsNonRoot != true
//! (pod or container "mover" must set securityContext.runAsNonRoot=true)
//! ```
//!
//! Left out: the `-version` label (every namespace gets `latest`), the `audit` and `warn` modes,
//! workload objects (Kubernetes only warns about them), pod updates, exemptions, the AppArmor,
//! Windows `hostProcess` and probe or lifecycle `host` checks, and the relaxations for pods in a
//! user namespace (off by default in Kubernetes too).
//!
//! [Pod Security Standards]: https://kubernetes.io/docs/concepts/security/pod-security-standards/

use std::collections::BTreeSet;

use serde_json::Value;

/// The namespace label that names the level its pods must meet.
pub(crate) const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// A level of the Pod Security Standards, from the least strict to the most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    /// No checks.
    Privileged,
    /// Prevents known privilege escalations: no host namespaces, ports or paths, no privileged
    /// containers, no capabilities beyond the container runtime's default set, and so on.
    Baseline,
    /// Baseline, plus current hardening practice: run as non-root, drop all capabilities,
    /// no privilege escalation, a seccomp profile, and only volumes that hold no host access.
    Restricted,
}

impl Level {
    /// The level a label value names. Kubernetes takes a value it does not know as
    /// `restricted`, the most strict level (`api.ParseLevel`).
    pub(crate) fn parse(value: &str) -> Level {
        match value {
            "privileged" => Level::Privileged,
            "baseline" => Level::Baseline,
            _ => Level::Restricted,
        }
    }

    /// The level a Namespace object enforces: its [`ENFORCE_LABEL`], or `privileged` (the
    /// default policy) where it has none.
    pub(crate) fn of_namespace(namespace: &Value) -> Level {
        let label = namespace
            .pointer("/metadata/labels")
            .and_then(|labels| labels.get(ENFORCE_LABEL))
            .filter(|value| !value.is_null());
        match label {
            None => Level::Privileged,
            Some(value) => Level::parse(value.as_str().unwrap_or("")),
        }
    }

    /// The name as labels and messages write it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// Why `pod` may not run at `level`: one entry per failed check, in Kubernetes' order and words,
/// `reason (detail)`. Empty when the pod is admitted.
pub(crate) fn violations(level: Level, pod: &Value) -> Vec<String> {
    let spec = Spec(pod.get("spec").unwrap_or(&Value::Null));
    let applies = |check: &&Check| check.level <= level;
    let replaced: Vec<&str> = CHECKS
        .iter()
        .filter(applies)
        .filter_map(|check| check.replaces)
        .collect();
    CHECKS
        .iter()
        .filter(applies)
        .filter(|check| !replaced.contains(&check.id))
        .filter_map(|check| (check.run)(&spec))
        .map(|v| format!("{} ({})", v.reason, v.detail))
        .collect()
}

/// The reason a refusal gives after `pods "name" is forbidden: `, or `None` when `pod` meets
/// `level`: `violates PodSecurity "restricted:latest": ` and the [`violations`].
pub(crate) fn refusal(level: Level, pod: &Value) -> Option<String> {
    let found = violations(level, pod);
    if found.is_empty() {
        return None;
    }
    Some(format!(
        "violates PodSecurity \"{}:latest\": {}",
        level.name(),
        found.join(", ")
    ))
}

/// One check of the standards.
struct Check {
    /// Kubernetes' id for it; messages list failed checks in the order of [`CHECKS`].
    id: &'static str,
    /// The least strict level that runs it.
    level: Level,
    /// The baseline check it replaces at the restricted level, being a stricter form of it.
    replaces: Option<&'static str>,
    run: fn(&Spec) -> Option<Violation>,
}

/// A failed check: a short reason and the detail that names containers, volumes or values.
struct Violation {
    reason: &'static str,
    detail: String,
}

/// Every check. As in Kubernetes, the baseline checks come first and the restricted ones after,
/// each group sorted by id (byte order, so `seLinuxOptions` before `seccompProfile_baseline`).
const CHECKS: &[Check] = &[
    Check {
        id: "capabilities_baseline",
        level: Level::Baseline,
        replaces: None,
        run: capabilities_baseline,
    },
    Check {
        id: "hostNamespaces",
        level: Level::Baseline,
        replaces: None,
        run: host_namespaces,
    },
    Check {
        id: "hostPathVolumes",
        level: Level::Baseline,
        replaces: None,
        run: host_path_volumes,
    },
    Check {
        id: "hostPorts",
        level: Level::Baseline,
        replaces: None,
        run: host_ports,
    },
    Check {
        id: "privileged",
        level: Level::Baseline,
        replaces: None,
        run: privileged,
    },
    Check {
        id: "procMount",
        level: Level::Baseline,
        replaces: None,
        run: proc_mount,
    },
    Check {
        id: "seLinuxOptions",
        level: Level::Baseline,
        replaces: None,
        run: se_linux_options,
    },
    Check {
        id: "seccompProfile_baseline",
        level: Level::Baseline,
        replaces: None,
        run: seccomp_baseline,
    },
    Check {
        id: "sysctls",
        level: Level::Baseline,
        replaces: None,
        run: sysctls,
    },
    Check {
        id: "allowPrivilegeEscalation",
        level: Level::Restricted,
        replaces: None,
        run: allow_privilege_escalation,
    },
    Check {
        id: "capabilities_restricted",
        level: Level::Restricted,
        replaces: Some("capabilities_baseline"),
        run: capabilities_restricted,
    },
    Check {
        // The same test as baseline's `procMount`, which Kubernetes relaxes for pods in a user
        // namespace where an option allows it; restricted never does.
        id: "procMount_restricted",
        level: Level::Restricted,
        replaces: Some("procMount"),
        run: proc_mount,
    },
    Check {
        id: "restrictedVolumes",
        level: Level::Restricted,
        replaces: Some("hostPathVolumes"),
        run: restricted_volumes,
    },
    Check {
        id: "runAsNonRoot",
        level: Level::Restricted,
        replaces: None,
        run: run_as_non_root,
    },
    Check {
        id: "runAsUser",
        level: Level::Restricted,
        replaces: None,
        run: run_as_user,
    },
    Check {
        id: "seccompProfile_restricted",
        level: Level::Restricted,
        replaces: Some("seccompProfile_baseline"),
        run: seccomp_restricted,
    },
];

/// The capabilities a container runtime grants by default, which baseline lets a container add.
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// The SELinux types baseline allows (the empty type is "not set").
const SELINUX_TYPES: &[&str] = &[
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

/// The sysctls that are namespaced and isolated from other pods, which baseline allows.
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_slow_start_after_idle",
    "net.ipv4.tcp_notsent_lowat",
];

/// The volume sources restricted allows: none of them reaches the host or a network share
/// that the cluster does not manage. (`image` is Kubernetes' image volume, allowed since 1.31.)
const RESTRICTED_VOLUME_SOURCES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// The seccomp profile types that keep a filter in place.
const CONFINED_SECCOMP: &[&str] = &["RuntimeDefault", "Localhost"];

/// A pod's `spec`, read as Kubernetes reads it: an absent or `null` field is unset.
struct Spec<'a>(&'a Value);

impl<'a> Spec<'a> {
    /// Init containers, containers and ephemeral containers, in that order.
    fn containers(&self) -> impl Iterator<Item = Container<'a>> {
        let spec = self.0;
        ["initContainers", "containers", "ephemeralContainers"]
            .into_iter()
            .filter_map(move |field| spec.get(field).and_then(Value::as_array))
            .flatten()
            .map(Container)
    }

    /// `spec.volumes`.
    fn volumes(&self) -> impl Iterator<Item = &'a Value> {
        self.0
            .get("volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    }

    /// A field of the pod-level `securityContext`.
    fn security(&self, field: &str) -> Option<&'a Value> {
        set(set(Some(self.0), "securityContext"), field)
    }

    /// Whether a boolean field of the spec is true.
    fn flag(&self, field: &str) -> bool {
        self.0.get(field).and_then(Value::as_bool) == Some(true)
    }

    /// Windows pods are exempt from the checks of Linux-only fields.
    fn is_windows(&self) -> bool {
        self.0.pointer("/os/name").and_then(Value::as_str) == Some("windows")
    }
}

/// One container of a pod.
#[derive(Clone, Copy)]
struct Container<'a>(&'a Value);

impl<'a> Container<'a> {
    fn name(self) -> &'a str {
        self.0.get("name").and_then(Value::as_str).unwrap_or("")
    }

    /// A field of the container's `securityContext`.
    fn security(self, field: &str) -> Option<&'a Value> {
        set(set(Some(self.0), "securityContext"), field)
    }

    /// The capabilities listed in `securityContext.capabilities.add` or `.drop`.
    fn capabilities(self, list: &str) -> impl Iterator<Item = &'a str> {
        set(self.security("capabilities"), list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
    }
}

/// `object[field]`, unless it is absent or `null`.
fn set<'a>(object: Option<&'a Value>, field: &str) -> Option<&'a Value> {
    object
        .and_then(|o| o.get(field))
        .filter(|value| !value.is_null())
}

/// The `type` of a seccomp profile, `""` where it names none.
fn seccomp_type(profile: &Value) -> &str {
    profile.get("type").and_then(Value::as_str).unwrap_or("")
}

fn pluralize(singular: &'static str, plural: &'static str, count: usize) -> &'static str {
    if count == 1 {
        singular
    } else {
        plural
    }
}

/// `"a", "b"`.
fn join_quote<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    let quoted: Vec<String> = items
        .into_iter()
        .map(|item| format!("\"{}\"", item.as_ref()))
        .collect();
    quoted.join(", ")
}

/// `container "a"` or `containers "a", "b"`.
fn containers_named(names: &[&str]) -> String {
    let noun = pluralize("container", "containers", names.len());
    format!("{noun} {}", join_quote(names))
}

/// Baseline: containers may add only capabilities from the runtime's default set.
fn capabilities_baseline(spec: &Spec) -> Option<Violation> {
    let mut containers = Vec::new();
    let mut added = BTreeSet::new();
    for c in spec.containers() {
        let extra: Vec<&str> = c
            .capabilities("add")
            .filter(|cap| !BASELINE_CAPABILITIES.contains(cap))
            .collect();
        if !extra.is_empty() {
            containers.push(c.name());
            added.extend(extra);
        }
    }
    (!containers.is_empty()).then(|| Violation {
        reason: "non-default capabilities",
        detail: format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_named(&containers),
            join_quote(&added)
        ),
    })
}

/// Baseline: the pod shares none of the host's network, process or IPC namespaces.
fn host_namespaces(spec: &Spec) -> Option<Violation> {
    let shared: Vec<&str> = ["hostIPC", "hostNetwork", "hostPID"]
        .into_iter()
        .filter(|field| spec.flag(field))
        .collect();
    (!shared.is_empty()).then(|| Violation {
        reason: "host namespaces",
        detail: shared.join(", "),
    })
}

/// Baseline: no `hostPath` volumes.
fn host_path_volumes(spec: &Spec) -> Option<Violation> {
    let names: Vec<&str> = spec
        .volumes()
        .filter(|v| set(Some(v), "hostPath").is_some())
        .map(|v| v.get("name").and_then(Value::as_str).unwrap_or(""))
        .collect();
    (!names.is_empty()).then(|| Violation {
        reason: "hostPath volumes",
        detail: format!(
            "{} {}",
            pluralize("volume", "volumes", names.len()),
            join_quote(&names)
        ),
    })
}

/// Baseline: no container port is bound on the host.
fn host_ports(spec: &Spec) -> Option<Violation> {
    let mut containers = Vec::new();
    // Sorted as text, as Kubernetes sorts them.
    let mut ports = BTreeSet::new();
    for c in spec.containers() {
        let host: Vec<i64> =
            c.0.get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|port| port.get("hostPort").and_then(Value::as_i64))
                .filter(|&port| port != 0)
                .collect();
        if !host.is_empty() {
            containers.push(c.name());
            ports.extend(host.iter().map(i64::to_string));
        }
    }
    (!containers.is_empty()).then(|| Violation {
        reason: "hostPort",
        detail: format!(
            "{} {} {} {}",
            containers_named(&containers),
            pluralize("uses", "use", containers.len()),
            pluralize("hostPort", "hostPorts", ports.len()),
            ports.into_iter().collect::<Vec<_>>().join(", ")
        ),
    })
}

/// Baseline: no privileged containers.
fn privileged(spec: &Spec) -> Option<Violation> {
    let containers: Vec<&str> = spec
        .containers()
        .filter(|c| c.security("privileged").and_then(Value::as_bool) == Some(true))
        .map(Container::name)
        .collect();
    (!containers.is_empty()).then(|| Violation {
        reason: "privileged",
        detail: format!(
            "{} must not set securityContext.privileged=true",
            containers_named(&containers)
        ),
    })
}

/// Baseline and restricted: `/proc` keeps its default masks.
fn proc_mount(spec: &Spec) -> Option<Violation> {
    let mut containers = Vec::new();
    let mut kinds = BTreeSet::new();
    for c in spec.containers() {
        if let Some(kind) = c.security("procMount") {
            let kind = kind.as_str().unwrap_or("");
            if kind != "Default" {
                containers.push(c.name());
                kinds.insert(kind);
            }
        }
    }
    (!containers.is_empty()).then(|| Violation {
        reason: "procMount",
        detail: format!(
            "{} must not set securityContext.procMount to {}",
            containers_named(&containers),
            join_quote(&kinds)
        ),
    })
}

/// Baseline: an SELinux type only from the container types, and no SELinux user or role, on the
/// pod or any container.
fn se_linux_options(spec: &Spec) -> Option<Violation> {
    let mut types = BTreeSet::new();
    let (mut user, mut role) = (false, false);
    let mut allowed = |options: &Value| {
        let text = |field: &str| options.get(field).and_then(Value::as_str).unwrap_or("");
        let mut ok = true;
        if !SELINUX_TYPES.contains(&text("type")) {
            types.insert(text("type").to_string());
            ok = false;
        }
        if !text("user").is_empty() {
            user = true;
            ok = false;
        }
        if !text("role").is_empty() {
            role = true;
            ok = false;
        }
        ok
    };
    let mut setters = Vec::new();
    if spec.security("seLinuxOptions").is_some_and(|o| !allowed(o)) {
        setters.push("pod".to_string());
    }
    let containers: Vec<&str> = spec
        .containers()
        .filter(|c| c.security("seLinuxOptions").is_some_and(|o| !allowed(o)))
        .map(Container::name)
        .collect();
    if !containers.is_empty() {
        setters.push(containers_named(&containers));
    }
    if setters.is_empty() {
        return None;
    }
    let mut wrong = Vec::new();
    if !types.is_empty() {
        let noun = pluralize("type", "types", types.len());
        wrong.push(format!("{noun} {}", join_quote(&types)));
    }
    if user {
        wrong.push("user may not be set".to_string());
    }
    if role {
        wrong.push("role may not be set".to_string());
    }
    Some(Violation {
        reason: "seLinuxOptions",
        detail: format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            setters.join(" and "),
            wrong.join("; ")
        ),
    })
}

/// Baseline: a seccomp profile, where one is set, is `RuntimeDefault` or `Localhost` (so never
/// `Unconfined`).
fn seccomp_baseline(spec: &Spec) -> Option<Violation> {
    let mut setters = Vec::new();
    let mut types = BTreeSet::new();
    if let Some(profile) = spec.security("seccompProfile") {
        if !CONFINED_SECCOMP.contains(&seccomp_type(profile)) {
            setters.push("pod".to_string());
            types.insert(seccomp_type(profile));
        }
    }
    let mut containers = Vec::new();
    for c in spec.containers() {
        if let Some(profile) = c.security("seccompProfile") {
            if !CONFINED_SECCOMP.contains(&seccomp_type(profile)) {
                containers.push(c.name());
                types.insert(seccomp_type(profile));
            }
        }
    }
    if !containers.is_empty() {
        setters.push(containers_named(&containers));
    }
    (!setters.is_empty()).then(|| Violation {
        reason: "seccompProfile",
        detail: format!(
            "{} must not set securityContext.seccompProfile.type to {}",
            setters.join(" and "),
            join_quote(&types)
        ),
    })
}

/// Baseline: only the safe sysctls.
fn sysctls(spec: &Spec) -> Option<Violation> {
    let unsafe_names: Vec<&str> = spec
        .security("sysctls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|sysctl| sysctl.get("name").and_then(Value::as_str).unwrap_or(""))
        .filter(|name| !SAFE_SYSCTLS.contains(name))
        .collect();
    (!unsafe_names.is_empty()).then(|| Violation {
        reason: "forbidden sysctls",
        detail: unsafe_names.join(", "),
    })
}

/// Restricted: every container sets `allowPrivilegeEscalation: false`.
fn allow_privilege_escalation(spec: &Spec) -> Option<Violation> {
    if spec.is_windows() {
        return None;
    }
    let containers: Vec<&str> = spec
        .containers()
        .filter(|c| {
            c.security("allowPrivilegeEscalation")
                .and_then(Value::as_bool)
                != Some(false)
        })
        .map(Container::name)
        .collect();
    (!containers.is_empty()).then(|| Violation {
        reason: "allowPrivilegeEscalation != false",
        detail: format!(
            "{} must set securityContext.allowPrivilegeEscalation=false",
            containers_named(&containers)
        ),
    })
}

/// Restricted: every container drops `ALL` capabilities and adds none but `NET_BIND_SERVICE`.
fn capabilities_restricted(spec: &Spec) -> Option<Violation> {
    if spec.is_windows() {
        return None;
    }
    let mut keeping = Vec::new();
    let mut adding = Vec::new();
    let mut added = BTreeSet::new();
    for c in spec.containers() {
        if c.security("capabilities").is_none() {
            keeping.push(c.name());
            continue;
        }
        if !c.capabilities("drop").any(|cap| cap == "ALL") {
            keeping.push(c.name());
        }
        let extra: Vec<&str> = c
            .capabilities("add")
            .filter(|&cap| cap != "NET_BIND_SERVICE")
            .collect();
        if !extra.is_empty() {
            adding.push(c.name());
            added.extend(extra);
        }
    }
    let mut details = Vec::new();
    if !keeping.is_empty() {
        details.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_named(&keeping)
        ));
    }
    if !adding.is_empty() {
        details.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_named(&adding),
            join_quote(&added)
        ));
    }
    (!details.is_empty()).then(|| Violation {
        reason: "unrestricted capabilities",
        detail: details.join("; "),
    })
}

/// Restricted: volumes only of the sources in [`RESTRICTED_VOLUME_SOURCES`].
fn restricted_volumes(spec: &Spec) -> Option<Violation> {
    let mut names = Vec::new();
    let mut sources = BTreeSet::new();
    for volume in spec.volumes() {
        let Some(fields) = volume.as_object() else {
            continue;
        };
        let mut given = fields
            .iter()
            .filter(|(field, value)| *field != "name" && !value.is_null())
            .map(|(field, _)| field.as_str());
        // A volume that names no source gets an emptyDir from Kubernetes' defaulting.
        let Some(first) = given.next() else {
            continue;
        };
        if RESTRICTED_VOLUME_SOURCES.contains(&first)
            || given.any(|field| RESTRICTED_VOLUME_SOURCES.contains(&field))
        {
            continue;
        }
        names.push(volume.get("name").and_then(Value::as_str).unwrap_or(""));
        sources.insert(first);
    }
    (!names.is_empty()).then(|| Violation {
        reason: "restricted volume types",
        detail: format!(
            "{} {} {} {} {}",
            pluralize("volume", "volumes", names.len()),
            join_quote(&names),
            pluralize("uses", "use", names.len()),
            pluralize(
                "restricted volume type",
                "restricted volume types",
                sources.len()
            ),
            join_quote(&sources)
        ),
    })
}

/// Restricted: `runAsNonRoot: true`, on the pod or on every container; a container's own value
/// overrides the pod's.
fn run_as_non_root(spec: &Spec) -> Option<Violation> {
    let mut setters = Vec::new();
    let pod = spec.security("runAsNonRoot").and_then(Value::as_bool);
    if pod == Some(false) {
        setters.push("pod".to_string());
    }
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for c in spec.containers() {
        match c.security("runAsNonRoot").and_then(Value::as_bool) {
            Some(true) => {}
            Some(false) => explicit.push(c.name()),
            None if pod == Some(true) => {}
            None => implicit.push(c.name()),
        }
    }
    if !explicit.is_empty() {
        setters.push(containers_named(&explicit));
    }
    if !setters.is_empty() {
        return Some(Violation {
            reason: "runAsNonRoot != true",
            detail: format!(
                "{} must not set securityContext.runAsNonRoot=false",
                setters.join(" and ")
            ),
        });
    }
    (!implicit.is_empty()).then(|| Violation {
        reason: "runAsNonRoot != true",
        detail: format!(
            "pod or {} must set securityContext.runAsNonRoot=true",
            containers_named(&implicit)
        ),
    })
}

/// Restricted: neither the pod nor a container sets `runAsUser: 0`.
fn run_as_user(spec: &Spec) -> Option<Violation> {
    let root = |value: Option<&Value>| value.and_then(Value::as_i64) == Some(0);
    let mut setters = Vec::new();
    if root(spec.security("runAsUser")) {
        setters.push("pod".to_string());
    }
    let containers: Vec<&str> = spec
        .containers()
        .filter(|c| root(c.security("runAsUser")))
        .map(Container::name)
        .collect();
    if !containers.is_empty() {
        setters.push(containers_named(&containers));
    }
    (!setters.is_empty()).then(|| Violation {
        reason: "runAsUser=0",
        detail: format!("{} must not set runAsUser=0", setters.join(" and ")),
    })
}

/// Restricted: a `RuntimeDefault` or `Localhost` seccomp profile, on the pod or on every
/// container; a container's own profile overrides the pod's.
fn seccomp_restricted(spec: &Spec) -> Option<Violation> {
    if spec.is_windows() {
        return None;
    }
    let mut setters = Vec::new();
    let mut types = BTreeSet::new();
    let mut pod_confined = false;
    if let Some(profile) = spec.security("seccompProfile") {
        if CONFINED_SECCOMP.contains(&seccomp_type(profile)) {
            pod_confined = true;
        } else {
            setters.push("pod".to_string());
            types.insert(seccomp_type(profile));
        }
    }
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for c in spec.containers() {
        match c.security("seccompProfile") {
            Some(profile) if CONFINED_SECCOMP.contains(&seccomp_type(profile)) => {}
            Some(profile) => {
                explicit.push(c.name());
                types.insert(seccomp_type(profile));
            }
            None if pod_confined => {}
            None => implicit.push(c.name()),
        }
    }
    if !explicit.is_empty() {
        setters.push(containers_named(&explicit));
    }
    if !setters.is_empty() {
        return Some(Violation {
            reason: "seccompProfile",
            detail: format!(
                "{} must not set securityContext.seccompProfile.type to {}",
                setters.join(" and "),
                join_quote(&types)
            ),
        });
    }
    (!implicit.is_empty()).then(|| Violation {
        reason: "seccompProfile",
        detail: format!(
            "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
            containers_named(&implicit)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A pod named `p` with `spec`.
    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": spec})
    }

    /// A pod with one container `c` whose securityContext is `security`.
    fn container_pod(security: Value) -> Value {
        pod(json!({"containers": [{"name": "c", "image": "busybox", "securityContext": security}]}))
    }

    /// A container's securityContext that restricted admits.
    fn hardened() -> Value {
        json!({
            "runAsNonRoot": true,
            "runAsUser": 1000,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    }

    /// `hardened()` with `changes` merged in (a `null` removes a field).
    fn hardened_with(changes: Value) -> Value {
        let mut security = hardened();
        for (field, value) in changes.as_object().expect("changes are an object") {
            if value.is_null() {
                security.as_object_mut().expect("an object").remove(field);
            } else {
                security[field] = value.clone();
            }
        }
        security
    }

    /// The violations of `pod` at baseline.
    fn baseline(pod: &Value) -> Vec<String> {
        violations(Level::Baseline, pod)
    }

    /// The violations of `pod` at restricted.
    fn restricted(pod: &Value) -> Vec<String> {
        violations(Level::Restricted, pod)
    }

    #[test]
    fn the_enforce_label_names_the_level() {
        let ns = |labels: Value| json!({"metadata": {"name": "n", "labels": labels}});
        let cases = [
            (json!({"name": "n"}), Level::Privileged),
            (ns(json!({})), Level::Privileged),
            (ns(json!({ENFORCE_LABEL: "privileged"})), Level::Privileged),
            (ns(json!({ENFORCE_LABEL: "baseline"})), Level::Baseline),
            (ns(json!({ENFORCE_LABEL: "restricted"})), Level::Restricted),
            // Kubernetes takes a value it does not know as the most strict level.
            (ns(json!({ENFORCE_LABEL: "Baseline"})), Level::Restricted),
            (ns(json!({ENFORCE_LABEL: ""})), Level::Restricted),
            // The version label changes nothing.
            (
                ns(
                    json!({ENFORCE_LABEL: "baseline", "pod-security.kubernetes.io/enforce-version": "v1.20"}),
                ),
                Level::Baseline,
            ),
            (
                ns(json!({"pod-security.kubernetes.io/warn": "restricted"})),
                Level::Privileged,
            ),
        ];
        for (namespace, level) in cases {
            assert_eq!(Level::of_namespace(&namespace), level, "{namespace}");
        }
    }

    #[test]
    fn privileged_checks_nothing() {
        let anything = pod(json!({
            "hostNetwork": true,
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
            "containers": [{"name": "c", "securityContext": {"privileged": true, "runAsUser": 0}}],
        }));
        assert!(violations(Level::Privileged, &anything).is_empty());
        assert_eq!(refusal(Level::Privileged, &anything), None);
    }

    #[test]
    fn a_minimal_pod_meets_baseline_but_not_restricted() {
        let minimal = pod(json!({"containers": [{"name": "c", "image": "busybox"}]}));
        assert!(baseline(&minimal).is_empty());
        let reasons: Vec<String> = restricted(&minimal)
            .iter()
            .map(|v| v.split(" (").next().unwrap_or("").to_string())
            .collect();
        assert_eq!(
            reasons,
            [
                "allowPrivilegeEscalation != false",
                "unrestricted capabilities",
                "runAsNonRoot != true",
                "seccompProfile",
            ]
        );
    }

    #[test]
    fn a_hardened_pod_meets_restricted() {
        let hardened_pod = pod(json!({
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "scratch", "emptyDir": {}},
                {"name": "config", "configMap": {"name": "c"}},
                {"name": "token", "projected": {"sources": []}},
                {"name": "defaulted"},
            ],
            "containers": [{"name": "c", "securityContext": hardened(),
                "ports": [{"containerPort": 8080, "hostPort": 0}]}],
        }));
        assert_eq!(restricted(&hardened_pod), Vec::<String>::new());
        // Pod-level runAsNonRoot and seccompProfile cover the containers.
        let pod_level = pod(json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}},
            "containers": [{"name": "c", "securityContext": hardened_with(json!({"runAsNonRoot": null, "seccompProfile": null}))}],
        }));
        assert_eq!(restricted(&pod_level), Vec::<String>::new());
    }

    #[test]
    fn the_refusal_names_the_level_and_every_violation_in_kubernetes_order() {
        let root = pod(json!({"containers": [{"name": "mover", "securityContext": {
            "runAsUser": 0, "capabilities": {"add": ["DAC_READ_SEARCH"]}}}]}));
        assert_eq!(
            refusal(Level::Restricted, &root).as_deref(),
            Some(
                "violates PodSecurity \"restricted:latest\": \
                 allowPrivilegeEscalation != false (container \"mover\" must set securityContext.allowPrivilegeEscalation=false), \
                 unrestricted capabilities (container \"mover\" must set securityContext.capabilities.drop=[\"ALL\"]; \
                 container \"mover\" must not include \"DAC_READ_SEARCH\" in securityContext.capabilities.add), \
                 runAsNonRoot != true (pod or container \"mover\" must set securityContext.runAsNonRoot=true), \
                 runAsUser=0 (container \"mover\" must not set runAsUser=0), \
                 seccompProfile (pod or container \"mover\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
            )
        );
        assert_eq!(
            refusal(Level::Baseline, &root).as_deref(),
            Some(
                "violates PodSecurity \"baseline:latest\": non-default capabilities \
                 (container \"mover\" must not include \"DAC_READ_SEARCH\" in securityContext.capabilities.add)"
            )
        );
        // Baseline checks come before restricted ones.
        let host = pod(
            json!({"hostPID": true, "containers": [{"name": "c", "securityContext": hardened()}],
            "volumes": [{"name": "v", "nfs": {"server": "s", "path": "/"}}]}),
        );
        assert_eq!(
            restricted(&host),
            [
                "host namespaces (hostPID)",
                "restricted volume types (volume \"v\" uses restricted volume type \"nfs\")",
            ]
        );
    }

    #[test]
    fn host_namespaces_are_refused() {
        let shared = pod(
            json!({"hostNetwork": true, "hostPID": true, "hostIPC": true,
            "containers": [{"name": "c"}]}),
        );
        assert_eq!(
            baseline(&shared),
            ["host namespaces (hostIPC, hostNetwork, hostPID)"]
        );
        let unshared = pod(json!({"hostNetwork": false, "containers": [{"name": "c"}]}));
        assert!(baseline(&unshared).is_empty());
    }

    #[test]
    fn privileged_containers_are_refused_in_every_container_list() {
        let privileged = json!({"privileged": true});
        let all = pod(json!({
            "initContainers": [{"name": "init", "securityContext": privileged}],
            "containers": [{"name": "main", "securityContext": {"privileged": false}}],
            "ephemeralContainers": [{"name": "debug", "securityContext": privileged}],
        }));
        assert_eq!(
            baseline(&all),
            ["privileged (containers \"init\", \"debug\" must not set securityContext.privileged=true)"]
        );
    }

    #[test]
    fn baseline_allows_only_the_default_capabilities() {
        let default_set = container_pod(
            json!({"capabilities": {"add": ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "NET_BIND_SERVICE"]}}),
        );
        assert!(baseline(&default_set).is_empty());
        let extra = container_pod(
            json!({"capabilities": {"add": ["SYS_ADMIN", "CHOWN", "DAC_READ_SEARCH"]}}),
        );
        assert_eq!(
            baseline(&extra),
            ["non-default capabilities (container \"c\" must not include \"DAC_READ_SEARCH\", \"SYS_ADMIN\" in securityContext.capabilities.add)"]
        );
    }

    #[test]
    fn host_path_volumes_are_refused() {
        let host = pod(json!({"containers": [{"name": "c"}], "volumes": [
            {"name": "a", "hostPath": {"path": "/var"}},
            {"name": "b", "emptyDir": {}},
            {"name": "c", "hostPath": {"path": "/etc"}},
        ]}));
        assert_eq!(baseline(&host), ["hostPath volumes (volumes \"a\", \"c\")"]);
        // Restricted replaces the check with its own, stricter one.
        assert_eq!(
            restricted(&pod(
                json!({"containers": [{"name": "c", "securityContext": hardened()}],
                "volumes": [{"name": "a", "hostPath": {"path": "/var"}}]})
            )),
            ["restricted volume types (volume \"a\" uses restricted volume type \"hostPath\")"]
        );
    }

    #[test]
    fn host_ports_are_refused() {
        let ports = pod(json!({"containers": [
            {"name": "a", "ports": [{"containerPort": 80, "hostPort": 80}, {"containerPort": 443, "hostPort": 443}]},
            {"name": "b", "ports": [{"containerPort": 9000, "hostPort": 0}, {"containerPort": 9001}]},
        ]}));
        assert_eq!(
            baseline(&ports),
            ["hostPort (container \"a\" uses hostPorts 443, 80)"]
        );
    }

    #[test]
    fn proc_mount_must_be_default() {
        assert!(baseline(&container_pod(json!({"procMount": "Default"}))).is_empty());
        let unmasked = container_pod(json!({"procMount": "Unmasked"}));
        let expected = [
            "procMount (container \"c\" must not set securityContext.procMount to \"Unmasked\")",
        ];
        assert_eq!(baseline(&unmasked), expected);
        let hardened_unmasked = container_pod(hardened_with(json!({"procMount": "Unmasked"})));
        assert_eq!(restricted(&hardened_unmasked), expected);
    }

    #[test]
    fn selinux_options_allow_only_container_types() {
        for allowed in [
            "container_t",
            "container_init_t",
            "container_kvm_t",
            "container_engine_t",
        ] {
            let options = json!({"seLinuxOptions": {"type": allowed, "level": "s0:c1,c2"}});
            assert!(baseline(&container_pod(options)).is_empty(), "{allowed}");
        }
        let bad = pod(json!({
            "securityContext": {"seLinuxOptions": {"type": "spc_t"}},
            "containers": [{"name": "c", "securityContext": {"seLinuxOptions": {"user": "system_u", "role": "system_r"}}}],
        }));
        assert_eq!(
            baseline(&bad),
            ["seLinuxOptions (pod and container \"c\" set forbidden securityContext.seLinuxOptions: \
              type \"spc_t\"; user may not be set; role may not be set)"]
        );
    }

    #[test]
    fn seccomp_unconfined_is_refused() {
        let unconfined = pod(json!({
            "securityContext": {"seccompProfile": {"type": "Unconfined"}},
            "containers": [
                {"name": "a", "securityContext": {"seccompProfile": {"type": "Unconfined"}}},
                {"name": "b", "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}},
            ],
        }));
        let expected = ["seccompProfile (pod and container \"a\" must not set securityContext.seccompProfile.type to \"Unconfined\")"];
        assert_eq!(baseline(&unconfined), expected);
        // Baseline leaves an unset profile alone; restricted requires one.
        let unset = pod(json!({"containers": [{"name": "c"}]}));
        assert!(baseline(&unset).is_empty());
        let hardened_unconfined = pod(json!({
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": hardened_with(json!({"seccompProfile": {"type": "Unconfined"}}))}],
        }));
        assert_eq!(
            restricted(&hardened_unconfined),
            ["seccompProfile (container \"c\" must not set securityContext.seccompProfile.type to \"Unconfined\")"]
        );
        let missing = container_pod(hardened_with(json!({"seccompProfile": null})));
        assert_eq!(
            restricted(&missing),
            ["seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"]
        );
    }

    #[test]
    fn only_safe_sysctls_are_allowed() {
        let sysctls = |names: &[&str]| {
            let list: Vec<Value> = names
                .iter()
                .map(|n| json!({"name": n, "value": "1"}))
                .collect();
            pod(json!({"securityContext": {"sysctls": list}, "containers": [{"name": "c"}]}))
        };
        assert!(baseline(&sysctls(&[
            "net.ipv4.tcp_syncookies",
            "kernel.shm_rmid_forced"
        ]))
        .is_empty());
        assert_eq!(
            baseline(&sysctls(&[
                "kernel.msgmax",
                "net.ipv4.tcp_syncookies",
                "net.core.somaxconn"
            ])),
            ["forbidden sysctls (kernel.msgmax, net.core.somaxconn)"]
        );
    }

    #[test]
    fn restricted_allows_only_volumes_without_host_access() {
        let volumes = pod(json!({
            "containers": [{"name": "c", "securityContext": hardened()}],
            "volumes": [
                {"name": "claim", "persistentVolumeClaim": {"claimName": "x"}},
                {"name": "csi", "csi": {"driver": "d"}},
                {"name": "api", "downwardAPI": {"items": []}},
                {"name": "eph", "ephemeral": {"volumeClaimTemplate": {}}},
                {"name": "secret", "secret": {"secretName": "s"}},
                {"name": "share", "nfs": {"server": "s", "path": "/"}},
                {"name": "repo", "gitRepo": {"repository": "r"}},
            ],
        }));
        assert_eq!(
            restricted(&volumes),
            ["restricted volume types (volumes \"share\", \"repo\" use restricted volume types \"gitRepo\", \"nfs\")"]
        );
        assert!(baseline(&volumes).is_empty());
    }

    #[test]
    fn privilege_escalation_must_be_explicitly_off() {
        for value in [json!(null), json!(true)] {
            let escalating =
                container_pod(hardened_with(json!({"allowPrivilegeEscalation": value})));
            assert_eq!(
                restricted(&escalating),
                ["allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false)"]
            );
        }
    }

    #[test]
    fn run_as_non_root_on_the_pod_or_every_container() {
        let implicit = container_pod(hardened_with(json!({"runAsNonRoot": null})));
        assert_eq!(
            restricted(&implicit),
            ["runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true)"]
        );
        // A container's false overrides the pod's true.
        let overridden = pod(json!({
            "securityContext": {"runAsNonRoot": true},
            "containers": [
                {"name": "a", "securityContext": hardened_with(json!({"runAsNonRoot": false}))},
                {"name": "b", "securityContext": hardened_with(json!({"runAsNonRoot": null}))},
            ],
        }));
        assert_eq!(
            restricted(&overridden),
            ["runAsNonRoot != true (container \"a\" must not set securityContext.runAsNonRoot=false)"]
        );
        // The pod's false is refused even where every container sets true.
        let pod_false = pod(json!({
            "securityContext": {"runAsNonRoot": false},
            "containers": [{"name": "a", "securityContext": hardened()}],
        }));
        assert_eq!(
            restricted(&pod_false),
            ["runAsNonRoot != true (pod must not set securityContext.runAsNonRoot=false)"]
        );
    }

    #[test]
    fn run_as_user_zero_is_refused() {
        let root = pod(json!({
            "securityContext": {"runAsUser": 0},
            "initContainers": [{"name": "i", "securityContext": hardened_with(json!({"runAsUser": 0}))}],
            "containers": [{"name": "c", "securityContext": hardened()}],
        }));
        assert_eq!(
            restricted(&root),
            ["runAsUser=0 (pod and container \"i\" must not set runAsUser=0)"]
        );
        assert!(baseline(&root).is_empty());
    }

    #[test]
    fn restricted_capabilities_drop_all_and_add_at_most_net_bind_service() {
        let bind = container_pod(hardened_with(
            json!({"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}),
        ));
        assert!(restricted(&bind).is_empty());
        let keeping = container_pod(hardened_with(
            json!({"capabilities": {"drop": ["NET_RAW"], "add": ["CHOWN"]}}),
        ));
        assert_eq!(
            restricted(&keeping),
            ["unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]; \
              container \"c\" must not include \"CHOWN\" in securityContext.capabilities.add)"]
        );
        let unset = container_pod(hardened_with(json!({"capabilities": null})));
        assert_eq!(
            restricted(&unset),
            ["unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"])"]
        );
        // Baseline's capability check gives way to restricted's.
        let sys_admin = container_pod(hardened_with(
            json!({"capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}}),
        ));
        assert_eq!(
            restricted(&sys_admin),
            ["unrestricted capabilities (container \"c\" must not include \"SYS_ADMIN\" in securityContext.capabilities.add)"]
        );
    }

    #[test]
    fn windows_pods_skip_the_linux_only_checks() {
        let windows = pod(json!({
            "os": {"name": "windows"},
            "securityContext": {"runAsNonRoot": true},
            "containers": [{"name": "c"}],
        }));
        assert!(
            restricted(&windows).is_empty(),
            "{:?}",
            restricted(&windows)
        );
    }
}
