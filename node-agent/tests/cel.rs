//! The CEL rules (`x-kubernetes-validations`) of deploy/crds.yaml, run
//! through a CEL interpreter as the API server runs them at admission: a
//! run that names the wrong fields for its method, or a restore that names
//! both a target and a pod, is refused with the rule's message, and the
//! fields that say what a run reads cannot change once it exists.

use std::collections::BTreeSet;

use cel_interpreter::{Context, Program, Value};
use serde_json::json;

/// One rule: the kind, the path of the schema node that carries it (`spec`
/// or `spec.pvc`), the rule and its message.
struct Rule {
    kind: String,
    path: String,
    rule: String,
    message: String,
}

fn rules() -> Vec<Rule> {
    let yaml = coffer_node_agent::crd::crds_yaml().unwrap();
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&yaml) {
        let crd: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_string();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        walk(&kind, "", schema, &mut out);
    }
    out
}

fn walk(kind: &str, path: &str, node: &serde_json::Value, out: &mut Vec<Rule>) {
    if let Some(rules) = node["x-kubernetes-validations"].as_array() {
        for r in rules {
            out.push(Rule {
                kind: kind.into(),
                path: path.into(),
                rule: r["rule"].as_str().unwrap().into(),
                message: r["message"].as_str().unwrap().into(),
            });
        }
    }
    if let Some(props) = node["properties"].as_object() {
        for (name, child) in props {
            let p = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            walk(kind, &p, child, out);
        }
    }
}

/// Runs `rule` with `self` (and `oldSelf`); whether it holds.
fn holds(rule: &str, this: &serde_json::Value, old: Option<&serde_json::Value>) -> bool {
    let program = Program::compile(rule).unwrap_or_else(|e| panic!("{rule}: {e:?}"));
    let mut ctx = Context::default();
    ctx.add_variable("self", this.clone()).unwrap();
    if let Some(old) = old {
        ctx.add_variable("oldSelf", old.clone()).unwrap();
    }
    match program.execute(&ctx) {
        Ok(Value::Bool(b)) => b,
        other => panic!("{rule} on {this}: {other:?}"),
    }
}

/// The messages of the spec-level rules of `kind` that `spec` breaks.
fn refused(rules: &[Rule], kind: &str, spec: serde_json::Value) -> Vec<String> {
    rules
        .iter()
        .filter(|r| r.kind == kind && r.path == "spec")
        .filter(|r| !holds(&r.rule, &spec, None))
        .map(|r| r.message.clone())
        .collect()
}

#[test]
fn a_run_that_names_the_wrong_fields_for_its_method_is_refused_with_the_reason() {
    let rules = rules();
    let vb = |spec| refused(&rules, "VolumeBackup", spec);
    // What the agent, the controller and the schedules create pass.
    for ok in [
        json!({"method": "Filesystem", "pod": "db-0", "volume": "data", "repository": "default"}),
        json!({"method": "Snapshot", "pvc": "data-db-0", "repository": "default"}),
        json!({"method": "Snapshot", "pod": "db-0", "volume": "data", "repository": "default"}),
        json!({"method": "Command", "pod": "db-0", "volume": "command", "repository": "default"}),
    ] {
        assert_eq!(vb(ok.clone()), Vec::<String>::new(), "{ok}");
    }
    let wrong = vb(json!({"method": "Filesystem", "pvc": "data-db-0", "repository": "default"}));
    assert_eq!(wrong.len(), 1, "{wrong:?}");
    assert!(wrong[0].starts_with("method Filesystem reads a pod's volume"));
    let both = vb(json!({"method": "Snapshot", "pvc": "a", "pod": "db-0", "volume": "data"}));
    assert!(
        both[0].starts_with("method Snapshot reads spec.pvc"),
        "{both:?}"
    );
    let nothing = vb(json!({"method": "Snapshot"}));
    assert!(
        nothing[0].starts_with("method Snapshot reads spec.pvc"),
        "{nothing:?}"
    );
    let command = vb(json!({"method": "Command", "pvc": "a"}));
    assert!(command[0].starts_with("method Command runs a command in a pod"));

    let vr = |spec| refused(&rules, "VolumeRestore", spec);
    let snapshot = json!({"id": "latest"});
    assert!(vr(json!({"snapshot": snapshot, "pod": "db-0", "volume": "data"})).is_empty());
    assert!(vr(json!({"snapshot": snapshot, "target": {"pvc": "new"}})).is_empty());
    let both = vr(
        json!({"snapshot": snapshot, "target": {"pvc": "new"}, "pod": "db-0", "volume": "data"}),
    );
    assert_eq!(
        both,
        ["set spec.target (a new PVC) or spec.pod with spec.volume (in place): one of the two"]
    );
    let neither = vr(json!({"snapshot": snapshot}));
    assert_eq!(neither.len(), 1, "{neither:?}");
    let no_volume = vr(json!({"snapshot": snapshot, "pod": "db-0"}));
    assert_eq!(
        no_volume,
        ["spec.pod needs spec.volume: the volume to restore into"]
    );
}

/// A schedule of volumes cannot become one of applications, or back: its
/// runs, history and retention follow what it makes.
#[test]
fn a_schedule_cannot_switch_between_volumes_and_an_application() {
    let rules = rules();
    let rule = rules
        .iter()
        .find(|r| r.kind == "BackupSchedule" && r.path == "spec")
        .expect("the spec rule of BackupSchedule");
    let volumes = json!({"schedule": "@daily", "method": "Snapshot"});
    let application = json!({"schedule": "@daily", "application": {}});
    let later = json!({"schedule": "@hourly", "application": {"volumeData": false}});
    assert!(holds(&rule.rule, &volumes, Some(&volumes)));
    assert!(holds(&rule.rule, &later, Some(&application)));
    assert!(!holds(&rule.rule, &application, Some(&volumes)));
    assert!(!holds(&rule.rule, &volumes, Some(&application)));
    assert!(rule
        .message
        .starts_with("spec.application cannot be added or removed"));
}

#[test]
fn what_a_run_reads_cannot_change_once_it_exists() {
    let rules = rules();
    let immutable: BTreeSet<(String, String)> = rules
        .iter()
        .filter(|r| r.rule == "self == oldSelf")
        .map(|r| (r.kind.clone(), r.path.clone()))
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("VolumeBackup", "spec.method"),
        ("VolumeBackup", "spec.pod"),
        ("VolumeBackup", "spec.volume"),
        ("VolumeBackup", "spec.pvc"),
        ("VolumeBackup", "spec.repository"),
        ("VolumeRestore", "spec.snapshot"),
        ("VolumeRestore", "spec.pod"),
        ("VolumeRestore", "spec.volume"),
        ("VolumeRestore", "spec.target"),
        ("VolumeRestore", "spec.repository"),
        ("ApplicationBackup", "spec.repository"),
        ("ApplicationBackup", "spec.serviceAccountName"),
        ("ApplicationBackup", "spec.includedResources"),
        ("ApplicationBackup", "spec.excludedResources"),
        ("ApplicationBackup", "spec.includeRecreated"),
        ("ApplicationBackup", "spec.selector"),
        ("ApplicationBackup", "spec.volumeData"),
    ]
    .into_iter()
    .map(|(k, p)| (k.to_string(), p.to_string()))
    .collect();
    assert_eq!(immutable, expected);
    for r in rules.iter().filter(|r| r.rule == "self == oldSelf") {
        assert!(holds(&r.rule, &json!("a"), Some(&json!("a"))));
        assert!(
            !holds(&r.rule, &json!("b"), Some(&json!("a"))),
            "{}",
            r.path
        );
        let obj = json!({"pvc": "x", "storageClassName": "fast"});
        assert!(holds(&r.rule, &obj, Some(&obj)));
        let field = r.path.rsplit('.').next().unwrap();
        assert!(
            r.message
                .starts_with(&format!("spec.{field} cannot change")),
            "{}",
            r.message
        );
    }
    // spec.cancel stays free: it is how a run is stopped.
    assert!(!rules.iter().any(|r| r.path == "spec.cancel"));
}
