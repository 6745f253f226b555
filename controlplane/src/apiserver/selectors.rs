//! Label and field selectors (`?labelSelector=`, `?fieldSelector=`), parsed with
//! Kubernetes' grammar and matched against JSON objects.
//!
//! Labels: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, comma-separated
//! (all must hold). Fields: `f=v`, `f==v`, `f!=v` over a per-resource set of fields.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

/// Splits at top-level commas (not inside `(...)`).
fn split_terms(s: &str) -> Result<Vec<&str>, String> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unexpected right parenthesis".into());
                }
            }
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("found '(', expected: ',' or ')'".into());
    }
    terms.push(&s[start..]);
    Ok(terms
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect())
}

fn set_values(rest: &str) -> Result<Vec<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("found '{rest}', expected: '('"))?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut reqs = Vec::new();
        for term in split_terms(s)? {
            let req = if let Some(k) = term.strip_prefix('!') {
                Requirement::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = term.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once("==") {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once('=') {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, rest)) = term.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), set_values(rest)?)
            } else if let Some((k, rest)) = term.split_once(" in ") {
                Requirement::In(k.trim().into(), set_values(rest)?)
            } else if term.contains(char::is_whitespace) || term.contains('(') {
                return Err(format!("unable to parse requirement: {term}"));
            } else {
                Requirement::Exists(term.to_string())
            };
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// Builds the selector of a `metav1.LabelSelector` JSON (matchLabels + matchExpressions).
    pub fn from_json(sel: &Value) -> LabelSelector {
        let mut reqs = Vec::new();
        if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in m {
                reqs.push(Requirement::Equals(
                    k.clone(),
                    v.as_str().unwrap_or("").into(),
                ));
            }
        }
        for e in sel
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = e["key"].as_str().unwrap_or("").to_string();
            let values: Vec<String> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            reqs.push(match e["operator"].as_str() {
                Some("In") => Requirement::In(key, values),
                Some("NotIn") => Requirement::NotIn(key, values),
                Some("DoesNotExist") => Requirement::NotExists(key),
                _ => Requirement::Exists(key),
            });
        }
        LabelSelector(reqs)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches_labels(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.matches_labels(obj.pointer("/metadata/labels").and_then(Value::as_object))
    }
}

/// A parsed field selector; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

/// Fields every resource can be selected by, and the extra ones of some kinds.
fn field_pointer(kind: &str, field: &str) -> Option<&'static str> {
    match (kind, field) {
        (_, "metadata.name") => Some("/metadata/name"),
        (_, "metadata.namespace") => Some("/metadata/namespace"),
        ("Pod", "spec.nodeName") => Some("/spec/nodeName"),
        ("Pod", "spec.schedulerName") => Some("/spec/schedulerName"),
        ("Pod", "spec.restartPolicy") => Some("/spec/restartPolicy"),
        ("Pod", "status.phase") => Some("/status/phase"),
        ("Pod", "status.podIP") => Some("/status/podIP"),
        ("Node", "spec.unschedulable") => Some("/spec/unschedulable"),
        ("Namespace", "status.phase") => Some("/status/phase"),
        ("Secret", "type") => Some("/type"),
        ("Event", "involvedObject.name") => Some("/involvedObject/name"),
        ("Event", "involvedObject.kind") => Some("/involvedObject/kind"),
        ("Event", "involvedObject.namespace") => Some("/involvedObject/namespace"),
        ("Event", "involvedObject.uid") => Some("/involvedObject/uid"),
        ("Event", "reason") => Some("/reason"),
        ("Event", "type") => Some("/type"),
        _ => None,
    }
}

impl FieldSelector {
    /// Parses `s` for objects of `kind`; an unsupported field is kube's BadRequest text.
    pub fn parse(s: &str, kind: &str, api_version: &str) -> Result<FieldSelector, String> {
        let mut reqs = Vec::new();
        for term in split_terms(s)? {
            let (f, negate, v) = if let Some((f, v)) = term.split_once("!=") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, false, v)
            } else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                ));
            };
            let f = f.trim();
            if field_pointer(kind, f).is_none() {
                return Err(format!(
                    "\"{f}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\" (for {kind} in {api_version})"
                ));
            }
            reqs.push((f.to_string(), negate, v.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, kind: &str, obj: &Value) -> bool {
        self.0.iter().all(|(f, negate, want)| {
            let got = field_pointer(kind, f)
                .and_then(|p| obj.pointer(p))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                })
                .unwrap_or_default();
            (got == *want) != *negate
        })
    }

    /// The `metadata.name=<x>` value, if the selector pins one object.
    pub fn name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, negate, _)| f == "metadata.name" && !negate)
            .map(|(_, _, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let obj = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        let none = json!({"metadata": {}});
        let cases = [
            ("", true, true),
            ("app=web", true, false),
            ("app==web", true, false),
            ("app!=web", false, true),
            ("app=db", false, false),
            ("app in (web, db)", true, false),
            ("app notin (web,db)", false, true),
            ("app", true, false),
            ("!app", false, true),
            ("app=web,tier=front", true, false),
            ("app=web,tier=back", false, false),
            ("tier in (front),!missing", true, false),
        ];
        for (sel, on_obj, on_none) in cases {
            let s = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(s.matches(&obj), on_obj, "{sel} on labelled");
            assert_eq!(s.matches(&none), on_none, "{sel} on unlabelled");
        }
    }

    #[test]
    fn bad_label_selectors_fail() {
        for sel in ["app in (a", "app in a)", "a b"] {
            assert!(LabelSelector::parse(sel).is_err(), "{sel}");
        }
    }

    #[test]
    fn match_expressions_selector() {
        let sel = LabelSelector::from_json(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]
        }));
        assert!(sel.matches(&json!({"metadata": {"labels": {"app": "web"}}})));
        assert!(!sel.matches(&json!({"metadata": {"labels": {"app": "web", "tier": "db"}}})));
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let cases = [
            ("metadata.name=p", true),
            ("metadata.name!=p", false),
            ("metadata.namespace==ns", true),
            ("spec.nodeName=n1,status.phase=Running", true),
            ("spec.nodeName=", false),
            ("status.phase!=Pending", true),
        ];
        for (sel, want) in cases {
            let s = FieldSelector::parse(sel, "Pod", "v1").unwrap();
            assert_eq!(s.matches("Pod", &pod), want, "{sel}");
        }
        let unscheduled = json!({"metadata": {"name": "q"}, "spec": {}});
        assert!(FieldSelector::parse("spec.nodeName=", "Pod", "v1")
            .unwrap()
            .matches("Pod", &unscheduled));
        let err = FieldSelector::parse("spec.bogus=1", "Pod", "v1").unwrap_err();
        assert!(err.contains("is not a known field selector"), "{err}");
    }
}
