//! `pods/exec` over WebSocket, subprotocol `v4.channel.k8s.io`, as the real
//! API server proxies it from the kubelet. There are no containers here:
//! the command runs as a local process, with `COFFER_FAKE_POD`
//! (`namespace/name`) and `COFFER_FAKE_CONTAINER` in its environment, so a
//! test's command can tell which pod it ran "in". The pod must exist and
//! be Running, and the container must be in its spec, or the answer is the
//! real server's error.
//!
//! Frames are binary: one channel byte (1 stdout, 2 stderr, 3 the final
//! `Status`), then data. A non-zero exit is a `Failure` Status with reason
//! `NonZeroExitCode` and the code as an `ExitCode` cause.

use std::process::Stdio;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use crate::http::App;
use crate::store::ApiError;

const PROTOCOL: &str = "v4.channel.k8s.io";

/// What the exec request asks for.
struct Request {
    command: Vec<String>,
    container: Option<String>,
}

fn parse(query: Option<&str>) -> Request {
    let mut r = Request {
        command: Vec::new(),
        container: None,
    };
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "command" => r.command.push(v.into_owned()),
            "container" => r.container = Some(v.into_owned()),
            _ => {}
        }
    }
    r
}

/// The handler of `/api/v1/namespaces/{ns}/pods/{name}/exec`.
pub(crate) async fn exec(
    State(app): State<Arc<App>>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: axum::http::HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let req = parse(query.as_deref());
    // RBAC as Kubernetes has it: `create` on `pods/exec` in the namespace.
    if let Some(rt) = app.store.resource("", "v1", "pods") {
        let asked = crate::rbac::Request {
            verb: "create",
            rt: &rt,
            subresource: Some("exec"),
            namespace: Some(&ns),
            name: Some(&name),
        };
        if let Err(e) = crate::rbac::authorize(&app.store, &headers, &asked) {
            return crate::http::error_response(&e);
        }
    }
    let container = match check(&app, &ns, &name, &req) {
        Ok(c) => c,
        Err(e) => return crate::http::error_response(&e),
    };
    ws.protocols([PROTOCOL])
        .on_upgrade(move |socket| run(socket, format!("{ns}/{name}"), container, req.command))
        .into_response()
}

/// The container the command runs in, or the real server's refusal.
fn check(app: &App, ns: &str, name: &str, req: &Request) -> Result<String, ApiError> {
    let rt = app
        .store
        .resource("", "v1", "pods")
        .ok_or_else(ApiError::no_route)?;
    let pod = app.store.get(&rt, Some(ns), name)?;
    if req.command.is_empty() {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
    let containers: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let container = match &req.container {
        Some(c) => c.clone(),
        None if containers.len() == 1 => containers[0].to_string(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: {containers:?}"
            )))
        }
    };
    if !containers.contains(&container.as_str()) {
        return Err(ApiError::bad_request(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
    if phase != "Running" {
        return Err(ApiError::bad_request(format!(
            "unable to upgrade connection: pod {name} is not running (phase {phase})"
        )));
    }
    Ok(container)
}

async fn run(mut socket: WebSocket, pod: String, container: String, command: Vec<String>) {
    let status = match spawn_and_stream(&mut socket, &pod, &container, &command).await {
        Ok(0) => json!({"metadata": {}, "status": "Success"}),
        Ok(code) => failure(
            format!(
                "command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"
            ),
            "NonZeroExitCode",
            Some(code),
        ),
        Err(e) => failure(
            format!("failed to exec in container: {e}"),
            "InternalError",
            None,
        ),
    };
    let _ = send(&mut socket, 3, status.to_string().as_bytes()).await;
    let _ = socket.send(Message::Close(None)).await;
}

fn failure(message: String, reason: &str, code: Option<i32>) -> Value {
    let mut s = json!({
        "metadata": {}, "status": "Failure", "message": message, "reason": reason,
    });
    if let Some(code) = code {
        s["details"] = json!({"causes": [{"reason": "ExitCode", "message": code.to_string()}]});
    }
    s
}

async fn send(socket: &mut WebSocket, channel: u8, data: &[u8]) -> Result<(), axum::Error> {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(channel);
    frame.extend_from_slice(data);
    socket.send(Message::Binary(frame.into())).await
}

/// Runs the command, sends its output as it comes, returns its exit code.
async fn spawn_and_stream(
    socket: &mut WebSocket,
    pod: &str,
    container: &str,
    command: &[String],
) -> std::io::Result<i32> {
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .env("COFFER_FAKE_POD", pod)
        .env("COFFER_FAKE_CONTAINER", container)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let (mut out_buf, mut err_buf) = (vec![0u8; 64 << 10], vec![0u8; 16 << 10]);
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        tokio::select! {
            n = stdout.read(&mut out_buf), if out_open => match n? {
                0 => out_open = false,
                n => send(socket, 1, &out_buf[..n]).await.map_err(std::io::Error::other)?,
            },
            n = stderr.read(&mut err_buf), if err_open => match n? {
                0 => err_open = false,
                n => send(socket, 2, &err_buf[..n]).await.map_err(std::io::Error::other)?,
            },
        }
    }
    let status = child.wait().await?;
    Ok(status.code().unwrap_or(128 + 9))
}
