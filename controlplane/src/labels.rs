//! Label selectors over typed objects: the metav1 `LabelSelector` semantics the scheduler
//! (affinity, spreading) and the controllers (ReplicaSet, Deployment, Service selectors) share.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` satisfy a metav1 LabelSelector (an empty selector matches all).
pub fn selector_matches(sel: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let get = |k: &str| labels.and_then(|l| l.get(k));
    if let Some(ml) = &sel.match_labels {
        if ml.iter().any(|(k, v)| get(k) != Some(v)) {
            return false;
        }
    }
    sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => get(&e.key).is_some(),
            "DoesNotExist" => get(&e.key).is_none(),
            _ => false,
        }
    })
}

/// Whether `labels` contain every pair of a map selector (a Service's `spec.selector`).
/// An empty map selects nothing, as for Services: they are handled as "no selector".
pub fn map_selects(
    sel: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    !sel.is_empty()
        && sel
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn label_selectors() {
        let labels: BTreeMap<String, String> = [("app", "web"), ("tier", "fe")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let req = |op: &str, vals: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: op.into(),
                values: Some(vals.iter().map(|s| s.to_string()).collect()),
            }]),
            ..Default::default()
        };
        let cases = [
            (LabelSelector::default(), true),
            (
                LabelSelector {
                    match_labels: Some([("app".to_string(), "web".to_string())].into()),
                    ..Default::default()
                },
                true,
            ),
            (
                LabelSelector {
                    match_labels: Some([("app".to_string(), "db".to_string())].into()),
                    ..Default::default()
                },
                false,
            ),
            (req("In", &["web", "api"]), true),
            (req("NotIn", &["web"]), false),
            (req("Exists", &[]), true),
            (req("DoesNotExist", &[]), false),
            (req("Bogus", &[]), false),
        ];
        for (i, (sel, want)) in cases.into_iter().enumerate() {
            assert_eq!(selector_matches(&sel, Some(&labels)), want, "case {i}");
        }
    }

    #[test]
    fn map_selectors_select_nothing_when_empty() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let sel = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let cases = [
            (sel(&[]), false),
            (sel(&[("app", "web")]), true),
            (sel(&[("app", "db")]), false),
            (sel(&[("app", "web"), ("tier", "fe")]), false),
        ];
        for (s, want) in cases {
            assert_eq!(map_selects(&s, Some(&labels)), want, "{s:?}");
        }
    }
}
