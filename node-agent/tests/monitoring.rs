//! `deploy/components/monitoring`: every metric its alerts and its Grafana
//! dashboard name is one the agent or the controller exports, every label
//! they use is one of those metrics' labels (or a scrape target's), and the
//! ServiceMonitors keep the metrics' own `namespace` label.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use coffer_node_agent::metrics::{
    CopyLabels, MaintenanceLabels, Metrics, NamespaceLabels, RunLabels, ScheduleLabels,
    VolumeLabels,
};

/// Labels Prometheus adds to every series scraped through a ServiceMonitor.
const TARGET_LABELS: [&str; 5] = ["pod", "instance", "job", "service", "endpoint"];

fn component(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/components/monitoring")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every exported series name with its label names, from one sample of
/// each family.
fn exported() -> BTreeMap<String, BTreeSet<String>> {
    let m = Metrics::new();
    let s = String::new;
    m.runs
        .get_or_create(&RunLabels {
            kind: s(),
            namespace: s(),
            phase: s(),
        })
        .inc();
    let ns = NamespaceLabels {
        kind: s(),
        namespace: s(),
    };
    m.bytes.get_or_create(&ns).inc();
    m.bytes_added.get_or_create(&ns).inc();
    m.duration.get_or_create(&ns).observe(1.0);
    m.last_success
        .get_or_create(&VolumeLabels {
            namespace: s(),
            pod: s(),
            volume: s(),
        })
        .set(1.0);
    let job = MaintenanceLabels {
        namespace: s(),
        repository: s(),
        job: s(),
        result: s(),
    };
    m.maintenance.get_or_create(&job).inc();
    m.bytes_freed.get_or_create(&job).inc();
    let copy = CopyLabels {
        namespace: s(),
        repository: s(),
        destination: s(),
    };
    m.copy_last_success.get_or_create(&copy).set(1.0);
    m.copy_bytes.get_or_create(&copy).inc();
    let schedule = ScheduleLabels {
        namespace: s(),
        schedule: s(),
    };
    m.schedule_last_success.get_or_create(&schedule).set(1.0);
    m.schedule_last_run_succeeded
        .get_or_create(&schedule)
        .set(1);
    m.schedule_next_run.get_or_create(&schedule).set(1.0);
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in m.encode().lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_string()).or_default();
        if let Some(inside) = line[name_end..]
            .strip_prefix('{')
            .and_then(|r| r.split_once('}'))
        {
            for pair in inside.0.split(',') {
                labels.insert(pair.split('=').next().unwrap().to_string());
            }
        }
    }
    out.entry("coffer_controller_leading".into()).or_default();
    out.entry("coffer_runs_in_progress".into()).or_default();
    out
}

/// The `coffer_*` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("coffer_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Checks one expression; returns the labels its metrics carry.
fn check_expr(expr: &str, exported: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    let names = metric_names(expr);
    assert!(!names.is_empty(), "{expr:?} names no coffer metric");
    let mut labels: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
    for n in names {
        let found = exported
            .get(&n)
            .unwrap_or_else(|| panic!("{expr:?} names {n}, which nothing exports"));
        labels.extend(found.iter().cloned());
    }
    labels
}

/// The names between `{{` and `}}` (`{{ $labels.x }}` or `{{x}}`).
fn template_labels(text: &str) -> Vec<String> {
    text.split("{{")
        .skip(1)
        .filter_map(|t| t.split_once("}}"))
        .map(|(inside, _)| inside.trim().trim_start_matches("$labels.").to_string())
        .filter(|l| l != "$value")
        .collect()
}

#[test]
fn every_alert_names_exported_metrics_and_their_labels() {
    let exported = exported();
    let rule: serde_yaml::Value = serde_yaml::from_str(&component("prometheusrule.yaml")).unwrap();
    assert_eq!(rule["kind"], "PrometheusRule");
    let mut alerts = 0;
    for group in rule["spec"]["groups"].as_sequence().unwrap() {
        for r in group["rules"].as_sequence().unwrap() {
            let name = r["alert"].as_str().expect("every rule is an alert");
            let expr = r["expr"].as_str().unwrap();
            let labels = check_expr(expr, &exported);
            for text in [
                &r["annotations"]["summary"],
                &r["annotations"]["description"],
            ] {
                let text = text
                    .as_str()
                    .unwrap_or_else(|| panic!("{name} lacks a summary or description"));
                for l in template_labels(text) {
                    assert!(
                        labels.contains(&l),
                        "{name} uses label {l}, which {expr:?} does not carry"
                    );
                }
            }
            assert!(r["labels"]["severity"].as_str().is_some(), "{name}");
            alerts += 1;
        }
    }
    assert!(alerts >= 6, "{alerts} alerts");
}

#[test]
fn every_dashboard_query_names_exported_metrics_and_their_labels() {
    let exported = exported();
    let dash: serde_json::Value =
        serde_json::from_str(&component("coffer-dashboard.json")).unwrap();
    let mut queries = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let labels = check_expr(expr, &exported);
            for l in template_labels(t["legendFormat"].as_str().unwrap_or_default()) {
                assert!(
                    labels.contains(&l),
                    "legend {l} of {:?}: {expr:?} does not carry it",
                    panel["title"]
                );
            }
            queries += 1;
        }
    }
    assert!(queries >= 9, "{queries} queries");
    // Its namespace variable is the metrics' own label.
    assert!(dash
        .to_string()
        .contains("label_values(coffer_runs_total, namespace)"));
}

#[test]
fn the_service_monitors_scrape_both_services_and_keep_the_namespace_label() {
    let docs: Vec<serde_yaml::Value> =
        serde_yaml::Deserializer::from_str(&component("servicemonitors.yaml"))
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
    let services = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/service.yaml"),
    )
    .unwrap();
    let mut selected = BTreeSet::new();
    for d in &docs {
        assert_eq!(d["kind"], "ServiceMonitor");
        let app = d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
            .as_str()
            .unwrap();
        assert!(
            services.contains(&format!("app.kubernetes.io/name: {app}")),
            "no Service in deploy/service.yaml is labelled {app}"
        );
        for e in d["spec"]["endpoints"].as_sequence().unwrap() {
            assert_eq!(e["port"], "metrics");
            assert_eq!(
                e["honorLabels"], true,
                "namespace would become coffer-system"
            );
        }
        selected.insert(app.to_string());
    }
    assert_eq!(
        selected,
        BTreeSet::from(["coffer-agent".into(), "coffer-controller".into()])
    );
}
