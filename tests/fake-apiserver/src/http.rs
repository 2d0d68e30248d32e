//! HTTP routing: discovery, the resource paths, and watch streams.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use crate::patch;
use crate::rbac;
use crate::selector::Filter;
use crate::store::{watch_event, ApiError, Change, Endpoint, ResourceType, Store, WatchStart};

/// Largest request body accepted.
const BODY_LIMIT: usize = 16 << 20;

/// What every request handler shares.
pub(crate) struct App {
    pub store: Arc<Store>,
    /// Turns true when the server stops; open watches end then.
    pub shutdown: watch::Receiver<bool>,
    pub addr: SocketAddr,
}

/// The router: one handler that reads the path itself.
pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/exec",
            axum::routing::any(crate::exec::exec),
        )
        .fallback(handle)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(app)
}

type Params = HashMap<String, String>;

async fn handle(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(params): Query<Params>,
    body: Bytes,
) -> Response {
    route(&app, &method, &uri, &headers, &params, &body).unwrap_or_else(|e| error_response(&e))
}

fn json_response(code: StatusCode, value: &Value) -> Response {
    let mut response = (code, value.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn ok(value: &Value) -> Response {
    json_response(StatusCode::OK, value)
}

pub(crate) fn error_response(e: &ApiError) -> Response {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &e.to_status())
}

fn route(
    app: &App,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    params: &Params,
    body: &[u8],
) -> Result<Response, ApiError> {
    let segments: Vec<String> = uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let is_get = method == Method::GET;
    match segs.as_slice() {
        ["healthz" | "readyz" | "livez", ..] if is_get => Ok("ok".into_response()),
        ["version"] if is_get => Ok(ok(&version())),
        ["api"] if is_get => Ok(ok(&json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": app.addr.to_string()}],
        }))),
        ["apis"] if is_get => {
            let groups = groups(&app.store.types());
            let groups: Vec<Value> = groups.iter().map(|(g, vs)| group_json(g, vs)).collect();
            Ok(ok(
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            ))
        }
        ["apis", group] if is_get => {
            let groups = groups(&app.store.types());
            let (g, vs) = groups
                .iter()
                .find(|(g, _)| g == group)
                .ok_or_else(ApiError::no_route)?;
            let mut body = group_json(g, vs);
            body["kind"] = json!("APIGroup");
            body["apiVersion"] = json!("v1");
            Ok(ok(&body))
        }
        ["openapi", "v3"] if is_get => Ok(ok(&openapi_root(&app.store.types()))),
        ["openapi", "v3", "api", "v1"] if is_get => {
            openapi_group_version(&app.store.types(), "", "v1")
        }
        ["openapi", "v3", "apis", group, version] if is_get => {
            openapi_group_version(&app.store.types(), group, version)
        }
        ["api", "v1"] if is_get => resource_list(app, "", "v1"),
        ["apis", group, version] if is_get => resource_list(app, group, version),
        ["api", "v1", rest @ ..] => resource(app, method, "", "v1", rest, headers, params, body),
        ["apis", group, version, rest @ ..] => {
            resource(app, method, group, version, rest, headers, params, body)
        }
        ["healthz" | "readyz" | "livez" | "version" | "api" | "apis", ..] => {
            Err(ApiError::method_not_allowed())
        }
        _ => Err(ApiError::no_route()),
    }
}

fn version() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0",
        "gitCommit": "60a317eadfcb839692a5eab88b2096f4d708f4f", "gitTreeState": "clean",
        "buildDate": "2025-04-23T13:07:56Z", "goVersion": "go1.24.2", "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// Groups in registration order, each with its versions, most preferred first.
fn groups(types: &[ResourceType]) -> Vec<(String, Vec<String>)> {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for t in types.iter().filter(|t| !t.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, versions)) if !versions.contains(&t.version) => {
                versions.push(t.version.clone())
            }
            Some(_) => {}
            None => groups.push((t.group.clone(), vec![t.version.clone()])),
        }
    }
    for (_, versions) in &mut groups {
        versions.sort_by_key(|v| version_priority(v));
    }
    groups
}

/// Kubernetes' version order: GA before beta before alpha, higher numbers first, others last.
fn version_priority(v: &str) -> (u8, std::cmp::Reverse<u64>, std::cmp::Reverse<u64>, String) {
    let parse = |v: &str| -> Option<(u8, u64, u64)> {
        let rest = v.strip_prefix('v')?;
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let major = rest[..digits].parse().ok()?;
        let tail = &rest[digits..];
        let (rank, minor) = if tail.is_empty() {
            (0, "0")
        } else if let Some(n) = tail.strip_prefix("beta") {
            (1, n)
        } else {
            (2, tail.strip_prefix("alpha")?)
        };
        Some((rank, major, minor.parse().ok()?))
    };
    match parse(v) {
        Some((rank, major, minor)) => (
            rank,
            std::cmp::Reverse(major),
            std::cmp::Reverse(minor),
            String::new(),
        ),
        None => (3, std::cmp::Reverse(0), std::cmp::Reverse(0), v.to_string()),
    }
}

fn group_json(group: &str, versions: &[String]) -> Value {
    let gv = |v: &String| json!({"groupVersion": format!("{group}/{v}"), "version": v});
    json!({
        "name": group,
        "versions": versions.iter().map(gv).collect::<Vec<_>>(),
        "preferredVersion": versions.first().map(gv),
    })
}

/// The OpenAPI v3 index: one document per group version.
fn openapi_root(types: &[ResourceType]) -> Value {
    let mut paths = serde_json::Map::new();
    for t in types {
        let path = if t.group.is_empty() {
            "api/v1".to_string()
        } else {
            format!("apis/{}/{}", t.group, t.version)
        };
        let hash =
            openapi_doc(types, &t.group, &t.version).map(|doc| fnv1a(doc.to_string().as_bytes()));
        let url = format!("/openapi/v3/{path}?hash={:016X}", hash.unwrap_or(0));
        paths.insert(path, json!({"serverRelativeURL": url}));
    }
    json!({"paths": paths})
}

fn openapi_group_version(
    types: &[ResourceType],
    group: &str,
    version: &str,
) -> Result<Response, ApiError> {
    openapi_doc(types, group, version)
        .map(|doc| ok(&doc))
        .ok_or_else(ApiError::no_route)
}

/// A skeletal OpenAPI v3 document for one group version: no schemas, only the PATCH operations
/// with their `fieldValidation` parameter. That is what `kubectl apply` looks for before it
/// leaves validation to the server (which here accepts everything) instead of downloading
/// schemas to validate on the client.
fn openapi_doc(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    for t in types
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        let prefix = if group.is_empty() {
            "/api/v1".to_string()
        } else {
            format!("/apis/{group}/{version}")
        };
        let scope = if t.namespaced {
            "/namespaces/{namespace}"
        } else {
            ""
        };
        let patch = json!({"patch": {
            "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": t.kind},
            "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
            "responses": {"200": {"description": "OK"}},
        }});
        paths.insert(format!("{prefix}{scope}/{}/{{name}}", t.plural), patch);
    }
    (!paths.is_empty()).then(|| {
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": paths})
    })
}

/// FNV-1a, for the `hash` that lets clients cache OpenAPI documents.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn resource_list(app: &App, group: &str, version: &str) -> Result<Response, ApiError> {
    let types: Vec<ResourceType> = app
        .store
        .types()
        .into_iter()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if types.is_empty() {
        return Err(ApiError::no_route());
    }
    let verbs = [
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ];
    let mut resources = Vec::new();
    for t in &types {
        resources.push(json!({
            "name": t.plural, "singularName": t.singular, "namespaced": t.namespaced,
            "kind": t.kind, "verbs": verbs, "shortNames": t.short_names,
        }));
        if t.status {
            resources.push(json!({
                "name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced,
                "kind": t.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    Ok(ok(&json!({
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": types[0].api_version(), "resources": resources,
    })))
}

/// The request's Content-Type, or "" when it has none.
fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Serves `/api/v1/...` and `/apis/{group}/{version}/...` below the version.
#[allow(clippy::too_many_arguments)]
fn resource(
    app: &App,
    method: &Method,
    group: &str,
    version: &str,
    rest: &[&str],
    headers: &HeaderMap,
    params: &Params,
    body: &[u8],
) -> Result<Response, ApiError> {
    let content_type = content_type(headers);
    if content_type.contains("protobuf") || content_type.contains("cbor") {
        // Typed client-go clients (`kubectl create configmap`) send protobuf: JSON only here.
        return Err(ApiError::unsupported_media_type(content_type));
    }
    let store = &app.store;
    let namespaced_collection = |p: &str| {
        store
            .resource(group, version, p)
            .is_some_and(|t| t.namespaced)
    };
    let (ns, plural, name, sub) = match *rest {
        [plural] => (None, plural, None, None),
        ["namespaces", ns, plural] if namespaced_collection(plural) => {
            (Some(ns), plural, None, None)
        }
        [plural, name] => (None, plural, Some(name), None),
        [plural, name, sub] => (None, plural, Some(name), Some(sub)),
        ["namespaces", ns, plural, name] => (Some(ns), plural, Some(name), None),
        ["namespaces", ns, plural, name, sub] => (Some(ns), plural, Some(name), Some(sub)),
        _ => return Err(ApiError::no_route()),
    };
    let rt = store
        .resource(group, version, plural)
        .ok_or_else(ApiError::no_route)?;
    if ns.is_some() && !rt.namespaced || name.is_some() && ns.is_none() && rt.namespaced {
        return Err(ApiError::no_route());
    }
    let endpoint = match sub {
        None => Endpoint::Main,
        Some("status") if rt.status => Endpoint::Status,
        Some(_) => return Err(ApiError::no_route()),
    };
    let param = |k: &str| params.get(k).map(String::as_str);
    let verb = match (method, name) {
        (&Method::GET, None) if matches!(param("watch"), Some("1" | "true")) => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, None) => "deletecollection",
        (&Method::DELETE, Some(_)) => "delete",
        _ => "",
    };
    rbac::authorize(
        store,
        headers,
        &rbac::Request {
            verb,
            rt: &rt,
            subresource: sub,
            namespace: ns,
            name,
        },
    )?;
    let dry_run = param("dryRun") == Some("All");
    // A grace period of 0, in the query or the DeleteOptions body: a force deletion.
    let force = *method == Method::DELETE
        && (param("gracePeriodSeconds") == Some("0")
            || serde_json::from_slice::<Value>(body)
                .is_ok_and(|o| o.get("gracePeriodSeconds") == Some(&json!(0))));
    let filter = || {
        Filter::parse(param("labelSelector"), param("fieldSelector")).map_err(ApiError::bad_request)
    };
    let Some(name) = name else {
        return match *method {
            Method::GET if matches!(param("watch"), Some("1" | "true")) => {
                Ok(watch_response(app, &rt, ns, &filter()?, params))
            }
            Method::GET => {
                let (items, rv) = store.list(&rt, ns, &filter()?);
                Ok(ok(&list_json(&rt, items, rv)))
            }
            Method::POST => {
                let body = parse_json(body)?;
                if rt.group.is_empty() && rt.plural == "pods" {
                    rbac::admit_pod(store, &rt, ns, &body)?;
                }
                let created = store.create(&rt, ns, body, dry_run)?;
                Ok(json_response(StatusCode::CREATED, &created))
            }
            Method::DELETE => {
                let (items, _) = store.list(&rt, ns, &filter()?);
                let mut deleted = Vec::new();
                for item in items {
                    let name = item
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let item_ns = item.pointer("/metadata/namespace").and_then(Value::as_str);
                    deleted.push(store.delete(
                        &rt,
                        item_ns.filter(|_| rt.namespaced),
                        name,
                        dry_run,
                        force,
                    )?);
                }
                Ok(ok(&list_json(&rt, deleted, store.resource_version())))
            }
            _ => Err(ApiError::method_not_allowed()),
        };
    };
    match *method {
        Method::GET => Ok(ok(&store.get(&rt, ns, name)?)),
        Method::PUT => {
            let body = parse_json(body)?;
            Ok(ok(&store.modify(
                &rt,
                ns,
                name,
                endpoint,
                dry_run,
                |_| Ok(body),
            )?))
        }
        Method::PATCH => patch_object(store, &rt, ns, name, endpoint, dry_run, headers, body),
        Method::DELETE if endpoint == Endpoint::Main => {
            Ok(ok(&store.delete(&rt, ns, name, dry_run, force)?))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

fn list_json(rt: &ResourceType, items: Vec<Value>, rv: u64) -> Value {
    json!({
        "kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(),
        "metadata": {"resourceVersion": rv.to_string()}, "items": items,
    })
}

#[allow(clippy::too_many_arguments)]
fn patch_object(
    store: &Store,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    endpoint: Endpoint,
    dry_run: bool,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let content_type = content_type(headers);
    let media = content_type.split(';').next().unwrap_or("").trim();
    let patched = match media {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            let mut patch = parse_json(body)?;
            if media.starts_with("application/strategic") {
                patch::strip_directives(&mut patch);
            }
            store.modify(rt, ns, name, endpoint, dry_run, |cur| {
                let mut new = cur.clone();
                patch::merge(&mut new, &patch);
                Ok(new)
            })?
        }
        "application/json-patch+json" => {
            let ops = parse_json(body)?;
            store.modify(rt, ns, name, endpoint, dry_run, |cur| {
                patch::json_patch(cur, &ops).map_err(|why| ApiError::invalid(rt, name, &why))
            })?
        }
        "application/apply-patch+yaml" => {
            let config: Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(_) => serde_yaml::from_slice(body).map_err(|e| {
                    ApiError::bad_request(format!(
                        "the apply configuration is neither JSON nor YAML: {e}"
                    ))
                })?,
            };
            let applied = store.modify(rt, ns, name, endpoint, dry_run, |cur| {
                let mut new = cur.clone();
                patch::merge(&mut new, &config);
                Ok(new)
            });
            match applied {
                Err(e) if e.code == 404 && endpoint == Endpoint::Main => {
                    let mut config = config;
                    if let Some(meta) = config.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.entry("name").or_insert_with(|| json!(name));
                    }
                    let created = store.create(rt, ns, config, dry_run)?;
                    return Ok(json_response(StatusCode::CREATED, &created));
                }
                other => other?,
            }
        }
        _ => return Err(ApiError::unsupported_media_type(content_type)),
    };
    Ok(ok(&patched))
}

/// A streaming watch: one JSON event per line, each sent as soon as it exists.
fn watch_response(
    app: &App,
    rt: &ResourceType,
    ns: Option<&str>,
    filter: &Filter,
    params: &Params,
) -> Response {
    let param = |k: &str| params.get(k).map(String::as_str);
    let rv = param("resourceVersion").unwrap_or("");
    let start = if param("sendInitialEvents") == Some("true") {
        Ok(WatchStart::InitialEvents)
    } else if rv.is_empty() || rv == "0" {
        Ok(WatchStart::Current)
    } else {
        rv.parse()
            .map(WatchStart::After)
            .map_err(|_| ApiError::expired(format!("too old resource version: {rv}")))
    };
    let mut lines = Vec::new();
    let stream_state = match start.and_then(|start| app.store.watch(rt, ns, filter, start)) {
        Ok(init) => {
            lines.extend(init.initial.into_iter().map(|(t, o)| event_line(t, &o)));
            if let Some(rv) = init.bookmark {
                let bookmark = json!({
                    "kind": rt.kind, "apiVersion": rt.api_version(),
                    "metadata": {"resourceVersion": rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}},
                });
                lines.push(event_line("BOOKMARK", &bookmark));
            }
            let timeout = param("timeoutSeconds")
                .and_then(|s| s.parse().ok())
                .map(Duration::from_secs);
            Some(Live {
                rx: init.rx,
                after: init.after,
                rt: rt.clone(),
                ns: ns.map(str::to_string),
                filter: filter.clone(),
                shutdown: app.shutdown.clone(),
                deadline: timeout.map(|t| tokio::time::Instant::now() + t),
            })
        }
        Err(e) => {
            lines.push(event_line("ERROR", &e.to_status()));
            None
        }
    };
    let initial = futures::stream::iter(lines.into_iter().map(Ok::<_, Infallible>));
    let live = futures::stream::unfold(stream_state, |state| async move {
        let mut live = state?;
        let line = live.next().await?;
        Some((Ok(line), Some(live)))
    });
    let mut response = Response::new(Body::from_stream(futures::StreamExt::chain(initial, live)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn event_line(kind: &str, object: &Value) -> String {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    line
}

/// The live part of a watch.
struct Live {
    rx: broadcast::Receiver<Arc<Change>>,
    after: u64,
    rt: ResourceType,
    ns: Option<String>,
    filter: Filter,
    shutdown: watch::Receiver<bool>,
    deadline: Option<tokio::time::Instant>,
}

impl Live {
    /// The next line to send; `None` ends the stream (timeout, shutdown, or after a 410).
    async fn next(&mut self) -> Option<String> {
        let deadline = self.deadline;
        let timeout = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(timeout);
        loop {
            tokio::select! {
                _ = &mut timeout => return None,
                _ = self.shutdown.wait_for(|stop| *stop) => return None,
                received = self.rx.recv() => match received {
                    Ok(change) if change.rv > self.after => {
                        if let Some((kind, obj)) = watch_event(&change, &self.rt, self.ns.as_deref(), &self.filter) {
                            return Some(event_line(kind, &obj));
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        self.deadline = Some(tokio::time::Instant::now());
                        let e = ApiError::expired(format!("watch fell {n} events behind; start again from a new list"));
                        return Some(event_line("ERROR", &e.to_status()));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|_| bytes[i] == b'%')
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_like_kubernetes() {
        let mut vs = vec!["v1alpha1", "v1beta1", "foo", "v2", "v1", "v1beta2"];
        vs.sort_by_key(|v| version_priority(v));
        assert_eq!(vs, ["v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]);
    }

    #[test]
    fn paths_are_percent_decoded() {
        assert_eq!(percent_decode("system%3Anode%2"), "system:node%2");
    }
}
