//! RBAC for service accounts. A request whose bearer token is a service account's user name,
//! `system:serviceaccount:{namespace}:{name}`, may do only what the Roles and ClusterRoles bound
//! to that account allow, decided as Kubernetes' RBAC authorizer decides: a rule matches on
//! API group, resource (`plural` or `plural/subresource`), verb and, when it lists any,
//! resource names; `*` matches anything. Any other token, or none, acts as a cluster admin.

use axum::http::{header, HeaderMap};
use serde_json::Value;

use crate::selector::Filter;
use crate::store::{ApiError, ResourceType, Store};

const GROUP: &str = "rbac.authorization.k8s.io";
const PREFIX: &str = "system:serviceaccount:";

/// What a request asks to do, in RBAC's terms.
pub(crate) struct Request<'a> {
    pub verb: &'a str,
    pub rt: &'a ResourceType,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

/// The service account (namespace, name) a request's bearer token names, if any.
fn account(headers: &HeaderMap) -> Option<(String, String)> {
    let token = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    let (ns, name) = token.strip_prefix(PREFIX)?.split_once(':')?;
    Some((ns.to_string(), name.to_string()))
}

/// `Ok` when the request may go ahead; 403 Forbidden, worded as Kubernetes words it, when not.
pub(crate) fn authorize(store: &Store, headers: &HeaderMap, req: &Request) -> Result<(), ApiError> {
    let Some((sa_ns, sa)) = account(headers) else {
        return Ok(());
    };
    if get_in(store, "", "serviceaccounts", Some(&sa_ns), Some(&sa)).is_none() {
        // A deleted account's token no longer authenticates.
        return Err(ApiError::unauthenticated());
    }
    let resource = match req.subresource {
        Some(sub) => format!("{}/{sub}", req.rt.plural),
        None => req.rt.plural.clone(),
    };
    let binds = |binding: &Value| {
        binding["subjects"].as_array().is_some_and(|subjects| {
            subjects.iter().any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"] == sa.as_str()
                    && s["namespace"] == sa_ns.as_str()
            })
        })
    };
    let allows = |role: &Value| {
        role["rules"]
            .as_array()
            .is_some_and(|rules| rules.iter().any(|rule| rule_allows(rule, req, &resource)))
    };
    let everything = Filter::default();
    let mut roles = Vec::new();
    if let Some(ns) = req.namespace {
        for b in list(store, "rolebindings", Some(ns), &everything) {
            if binds(&b) {
                let kind = b["roleRef"]["kind"].as_str().unwrap_or("");
                let plural = if kind == "ClusterRole" {
                    "clusterroles"
                } else {
                    "roles"
                };
                let scope = (plural == "roles").then_some(ns);
                roles.extend(get(store, plural, scope, b["roleRef"]["name"].as_str()));
            }
        }
    }
    for b in list(store, "clusterrolebindings", None, &everything) {
        if binds(&b) && b["roleRef"]["kind"] == "ClusterRole" {
            roles.extend(get(
                store,
                "clusterroles",
                None,
                b["roleRef"]["name"].as_str(),
            ));
        }
    }
    if roles.iter().any(allows) {
        return Ok(());
    }
    let mut message = format!(
        "User \"{PREFIX}{sa_ns}:{sa}\" cannot {} resource \"{resource}\" in API group \"{}\"",
        req.verb, req.rt.group
    );
    match req.namespace {
        Some(ns) => message.push_str(&format!(" in the namespace \"{ns}\"")),
        None => message.push_str(" at the cluster scope"),
    }
    Err(ApiError::unauthorized(
        req.rt,
        req.name.unwrap_or(""),
        &message,
    ))
}

fn rule_allows(rule: &Value, req: &Request, resource: &str) -> bool {
    let has = |field: &str, want: &str| {
        rule[field]
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x == want || x == "*"))
    };
    let names = rule["resourceNames"].as_array().filter(|n| !n.is_empty());
    let named = match names {
        None => true,
        Some(names) => req.name.is_some_and(|n| names.iter().any(|x| x == n)),
    };
    has("apiGroups", &req.rt.group) && has("resources", resource) && has("verbs", req.verb) && named
}

fn list(store: &Store, plural: &str, ns: Option<&str>, filter: &Filter) -> Vec<Value> {
    match store.resource(GROUP, "v1", plural) {
        Some(rt) => store.list(&rt, ns, filter).0,
        None => Vec::new(),
    }
}

fn get(store: &Store, plural: &str, ns: Option<&str>, name: Option<&str>) -> Option<Value> {
    get_in(store, GROUP, plural, ns, name)
}

fn get_in(
    store: &Store,
    group: &str,
    plural: &str,
    ns: Option<&str>,
    name: Option<&str>,
) -> Option<Value> {
    let rt = store.resource(group, "v1", plural)?;
    store.get(&rt, ns, name?).ok()
}

/// As the ServiceAccount admission plugin: a pod that names a ServiceAccount which does not
/// exist in its namespace is refused (a pod that names none runs as `default`, which is not
/// checked here).
pub(crate) fn admit_pod(
    store: &Store,
    rt: &ResourceType,
    ns: Option<&str>,
    pod: &Value,
) -> Result<(), ApiError> {
    let Some(account) = pod
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
    else {
        return Ok(());
    };
    let ns = ns
        .or_else(|| pod.pointer("/metadata/namespace").and_then(Value::as_str))
        .unwrap_or("default");
    if get_in(store, "", "serviceaccounts", Some(ns), Some(account)).is_some() {
        return Ok(());
    }
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    Err(ApiError::unauthorized(
        rt,
        name,
        &format!("error looking up service account {ns}/{account}: serviceaccount \"{account}\" not found"),
    ))
}
