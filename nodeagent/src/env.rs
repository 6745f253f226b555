//! A container's environment as Kubernetes builds it: `envFrom` sources first (configMap
//! and secret, with their prefix), then `env` in order, each value either literal (with
//! `$(VAR)` references to earlier variables expanded) or from a configMap key, a secret
//! key or a pod field.

use std::collections::BTreeMap;

use controlplane::client::Api;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// A referenced object or key is missing: CreateContainerConfigError.
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Api(#[from] controlplane::client::ClientError),
}

/// Values only the node knows.
#[derive(Clone, Debug, Default)]
pub struct NodeFields {
    pub node_name: String,
    pub pod_ip: String,
    pub host_ip: String,
}

async fn configmap<C: Api>(
    api: &C,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, String>, EnvError> {
    match api.get::<ConfigMap>(Some(ns), name).await {
        Ok(c) => Ok(c.data.unwrap_or_default()),
        Err(e) if e.is_not_found() && optional => Ok(BTreeMap::new()),
        Err(e) if e.is_not_found() => {
            Err(EnvError::Config(format!("configmap \"{name}\" not found")))
        }
        Err(e) => Err(e.into()),
    }
}

async fn secret<C: Api>(
    api: &C,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, String>, EnvError> {
    match api.get::<Secret>(Some(ns), name).await {
        Ok(s) => {
            let mut m: BTreeMap<String, String> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect();
            m.extend(s.string_data.unwrap_or_default());
            Ok(m)
        }
        Err(e) if e.is_not_found() && optional => Ok(BTreeMap::new()),
        Err(e) if e.is_not_found() => Err(EnvError::Config(format!("secret \"{name}\" not found"))),
        Err(e) => Err(e.into()),
    }
}

/// `$(NAME)` → the value of an earlier variable; `$$(NAME)` → literal `$(NAME)`;
/// unknown references stay as they are (Kubernetes' expansion rules).
pub fn expand(value: &str, vars: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match vars.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn field(pod: &Pod, path: &str, node: &NodeFields) -> Result<String, EnvError> {
    let m = &pod.metadata;
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => node.node_name.clone(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" => node.pod_ip.clone(),
        "status.hostIP" => node.host_ip.clone(),
        p => {
            if let Some(k) = p
                .strip_prefix("metadata.labels['")
                .and_then(|r| r.strip_suffix("']"))
            {
                m.labels
                    .as_ref()
                    .and_then(|l| l.get(k))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(k) = p
                .strip_prefix("metadata.annotations['")
                .and_then(|r| r.strip_suffix("']"))
            {
                m.annotations
                    .as_ref()
                    .and_then(|l| l.get(k))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(EnvError::Config(format!("unsupported fieldRef {p:?}")));
            }
        }
    })
}

/// Resolves the environment of `container`.
pub async fn resolve<C: Api>(
    api: &C,
    pod: &Pod,
    container: &Container,
    node: &NodeFields,
) -> Result<Vec<(String, String)>, EnvError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut vars: Vec<(String, String)> = Vec::new();
    let set = |vars: &mut Vec<(String, String)>, k: String, v: String| match vars
        .iter_mut()
        .find(|(ek, _)| *ek == k)
    {
        Some(e) => e.1 = v,
        None => vars.push((k, v)),
    };
    for from in container.env_from.clone().unwrap_or_default() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(r) = &from.config_map_ref {
            configmap(
                api,
                &ns,
                r.name.as_deref().unwrap_or(""),
                r.optional == Some(true),
            )
            .await?
        } else if let Some(r) = &from.secret_ref {
            secret(
                api,
                &ns,
                r.name.as_deref().unwrap_or(""),
                r.optional == Some(true),
            )
            .await?
        } else {
            BTreeMap::new()
        };
        for (k, v) in data {
            set(&mut vars, format!("{prefix}{k}"), v);
        }
    }
    for e in container.env.clone().unwrap_or_default() {
        let value = match &e.value_from {
            None => expand(e.value.as_deref().unwrap_or(""), &vars),
            Some(from) => {
                if let Some(r) = &from.config_map_key_ref {
                    let name = r.name.clone().unwrap_or_default();
                    let data = configmap(api, &ns, &name, r.optional == Some(true)).await?;
                    match data.get(&r.key) {
                        Some(v) => v.clone(),
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Err(EnvError::Config(format!(
                                "couldn't find key {} in ConfigMap {ns}/{name}",
                                r.key
                            )))
                        }
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let name = r.name.clone().unwrap_or_default();
                    let data = secret(api, &ns, &name, r.optional == Some(true)).await?;
                    match data.get(&r.key) {
                        Some(v) => v.clone(),
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Err(EnvError::Config(format!(
                                "couldn't find key {} in Secret {ns}/{name}",
                                r.key
                            )))
                        }
                    }
                } else if let Some(f) = &from.field_ref {
                    field(pod, &f.field_path, node)?
                } else {
                    return Err(EnvError::Config(format!(
                        "env {:?}: resourceFieldRef is not supported",
                        e.name
                    )));
                }
            }
        };
        set(&mut vars, e.name.clone(), value);
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;
    use controlplane::client::fake::FakeApi;
    use k8s_openapi::api::core::v1::{
        ConfigMapKeySelector, EnvVar, EnvVarSource, ObjectFieldSelector,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn expansion() {
        let vars = vec![("A".to_string(), "1".to_string())];
        let cases = [
            ("x$(A)y", "x1y"),
            ("$(B)", "$(B)"),
            ("$$(A)", "$(A)"),
            ("a$b", "a$b"),
            ("$(A", "$(A"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, &vars), want, "{input}");
        }
    }

    #[tokio::test]
    async fn literal_field_and_configmap_values() {
        let api = FakeApi::new();
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let var = |name: &str, value: Option<&str>, from: Option<EnvVarSource>| EnvVar {
            name: name.into(),
            value: value.map(String::from),
            value_from: from,
        };
        let c = Container {
            env: Some(vec![
                var("GREETING", Some("hi"), None),
                var("MSG", Some("$(GREETING) there"), None),
                var(
                    "POD",
                    None,
                    Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.name".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                ),
                var(
                    "LEVEL",
                    None,
                    Some(EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: Some("cfg".into()),
                            key: "level".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                ),
            ]),
            ..Default::default()
        };
        let node = NodeFields::default();
        let err = resolve(&api, &pod, &c, &node).await.unwrap_err();
        assert_eq!(err.to_string(), "configmap \"cfg\" not found");
        api.create(
            Some("ns"),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("cfg".into()),
                    ..Default::default()
                },
                data: Some([("level".to_string(), "debug".to_string())].into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let got = resolve(&api, &pod, &c, &node).await.unwrap();
        let got: Vec<(&str, &str)> = got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            got,
            [
                ("GREETING", "hi"),
                ("MSG", "hi there"),
                ("POD", "p"),
                ("LEVEL", "debug")
            ]
        );
    }
}
