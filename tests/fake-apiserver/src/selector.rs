//! Label and field selectors, as sent in `?labelSelector=` and `?fieldSelector=`.
//!
//! Label selectors support `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` and `!k`,
//! joined by commas (AND). Field selectors support `path=v`, `path==v` and `path!=v` for any
//! dotted path into the object (`metadata.name`, `spec.nodeName`, `status.phase`); a missing
//! field compares as the empty string. Kubernetes only allows a few field paths per resource;
//! this fake allows all of them.

use serde_json::Value;

/// One label requirement.
#[derive(Debug, Clone, PartialEq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// One field requirement: the value at `path` equals (or, negated, differs from) `value`.
#[derive(Debug, Clone, PartialEq)]
struct FieldReq {
    path: Vec<String>,
    value: String,
    negate: bool,
}

/// A parsed pair of label and field selectors; an empty filter matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Filter {
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

impl Filter {
    /// Parses the two query parameters; the error names the term that could not be read.
    pub(crate) fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Filter, String> {
        let mut filter = Filter::default();
        for term in split_top_level(labels.unwrap_or("")) {
            filter.labels.push(parse_label(term)?);
        }
        for term in split_top_level(fields.unwrap_or("")) {
            filter.fields.push(parse_field(term)?);
        }
        Ok(filter)
    }

    /// Whether `obj` satisfies every requirement.
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|req| match req {
            LabelReq::Eq(k, v) => label(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => label(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
        });
        labels_ok
            && self.fields.iter().all(|req| {
                let mut cur = Some(obj);
                for part in &req.path {
                    cur = cur.and_then(|v| v.get(part));
                }
                let found = match cur {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    Some(Value::Bool(b)) => b.to_string(),
                    _ => String::new(),
                };
                (found == req.value) != req.negate
            })
    }
}

/// Splits at commas that are not inside parentheses, dropping empty terms.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_label(term: &str) -> Result<LabelReq, String> {
    let key = |k: &str| -> Result<String, String> {
        let k = k.trim();
        if k.is_empty() || k.contains(|c: char| c.is_whitespace() || "=!<>()".contains(c)) {
            return Err(format!("invalid label selector term {term:?}"));
        }
        Ok(k.to_string())
    };
    if let Some(rest) = term.strip_prefix('!') {
        return Ok(LabelReq::NotExists(key(rest)?));
    }
    if let Some(open) = term.find('(') {
        let inner = term[open + 1..]
            .strip_suffix(')')
            .ok_or_else(|| format!("unclosed parenthesis in label selector term {term:?}"))?;
        let values = inner.split(',').map(|v| v.trim().to_string()).collect();
        let mut head = term[..open].split_whitespace();
        let (k, op) = (head.next().unwrap_or(""), head.next().unwrap_or(""));
        return match op {
            "in" => Ok(LabelReq::In(key(k)?, values)),
            "notin" => Ok(LabelReq::NotIn(key(k)?, values)),
            _ => Err(format!(
                "invalid set operator in label selector term {term:?}"
            )),
        };
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(LabelReq::NotEq(key(k)?, v.trim().to_string()));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(LabelReq::Eq(key(k)?, v.trim().to_string()));
    }
    Ok(LabelReq::Exists(key(term)?))
}

fn parse_field(term: &str) -> Result<FieldReq, String> {
    let (path, value, negate) = if let Some((p, v)) = term.split_once("!=") {
        (p, v, true)
    } else if let Some((p, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        (p, v, false)
    } else {
        return Err(format!(
            "invalid field selector term {term:?}: expected path=value"
        ));
    };
    let path = path.trim();
    if path.is_empty() {
        return Err(format!("invalid field selector term {term:?}: empty path"));
    }
    Ok(FieldReq {
        path: path.split('.').map(str::to_string).collect(),
        value: value.trim().to_string(),
        negate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web", "tier": "fe"}},
               "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
    }

    fn hit(labels: &str, fields: &str) -> bool {
        Filter::parse(Some(labels), Some(fields))
            .expect("selector parses")
            .matches(&pod())
    }

    #[test]
    fn label_operators() {
        assert!(hit("app=web", ""));
        assert!(hit("app==web,tier", ""));
        assert!(!hit("app!=web", ""));
        assert!(hit("missing!=x", ""));
        assert!(hit("app in (db, web)", ""));
        assert!(!hit("app notin (db,web)", ""));
        assert!(hit("missing notin (a)", ""));
        assert!(hit("!missing", ""));
        assert!(!hit("!app", ""));
        assert!(hit("app in (web),tier=fe", ""));
        assert!(Filter::parse(Some("app in (web"), None).is_err());
        assert!(Filter::parse(Some("a b"), None).is_err());
    }

    #[test]
    fn field_paths() {
        assert!(hit("", "metadata.name=p,metadata.namespace==ns"));
        assert!(hit("", "spec.nodeName=n1"));
        assert!(!hit("", "spec.nodeName!=n1"));
        assert!(hit("", "status.phase=Running"));
        assert!(hit("", "spec.missing="));
        assert!(hit("", "spec.missing!=x"));
        assert!(Filter::parse(None, Some("nodeName")).is_err());
    }
}
