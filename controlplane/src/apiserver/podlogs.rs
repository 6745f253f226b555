//! The `pods/log` subresource: as kube-apiserver does, it validates the options, finds the
//! pod's node and proxies to the node agent's
//! `https://<InternalIP>:<kubeletEndpoint port>/containerLogs/<ns>/<pod>/<container>`,
//! streaming the plain-text answer back (so `kubectl logs -f` follows). Like
//! kube-apiserver without `--kubelet-certificate-authority`, the agent's certificate is
//! not verified.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::status::ApiError;

/// The agent URL for a log request on `pod` (bound to `node`), or the error
/// kube-apiserver gives for these options.
pub fn agent_url(
    pod: &Value,
    node: &Value,
    query: &HashMap<String, String>,
) -> Result<String, ApiError> {
    let q = |k: &str| query.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    let containers: Vec<String> = ["/spec/containers", "/spec/initContainers"]
        .iter()
        .flat_map(|p| {
            pod.pointer(p)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    let app: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    let container = match q("container") {
        Some(c) if containers.iter().any(|x| x == c) => c.to_string(),
        Some(c) => {
            return Err(ApiError::BadRequest(format!(
                "container {c} is not valid for pod {name}"
            )))
        }
        None if app.len() == 1 => app[0].to_string(),
        None => {
            return Err(ApiError::BadRequest(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                app.join(" ")
            )))
        }
    };
    let mut params: Vec<(String, String)> = Vec::new();
    for flag in ["follow", "previous", "timestamps"] {
        match q(flag) {
            None | Some("false") => {}
            Some("true") => params.push((flag.into(), "true".into())),
            Some(v) => {
                return Err(ApiError::BadRequest(format!(
                    "invalid value {v:?} for {flag}: want true or false"
                )))
            }
        }
    }
    for (k, min) in [("tailLines", 0), ("limitBytes", 1), ("sinceSeconds", 1)] {
        if let Some(v) = q(k) {
            match v.parse::<i64>() {
                Ok(n) if n >= min => params.push((k.into(), n.to_string())),
                _ => {
                    return Err(ApiError::Invalid {
                        kind: "PodLogOptions".into(),
                        group: String::new(),
                        name: String::new(),
                        causes: vec![super::status::Cause::invalid_raw(
                            k,
                            v,
                            &format!("must be greater than or equal to {min}"),
                        )],
                    })
                }
            }
        }
    }
    if let Some(t) = q("sinceTime") {
        let at = chrono::DateTime::parse_from_rfc3339(t)
            .map_err(|_| ApiError::BadRequest(format!("invalid sinceTime {t:?}")))?;
        let secs = (chrono::Utc::now() - at.with_timezone(&chrono::Utc))
            .num_seconds()
            .max(1);
        params.push(("sinceSeconds".into(), secs.to_string()));
    }
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if node_name.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let ip = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|x| x["type"] == "InternalIP")
                .or_else(|| a.first())
                .and_then(|x| x["address"].as_str())
        })
        .ok_or_else(|| ApiError::BadRequest(format!("node {node_name} has no address")))?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .or_else(|| node.pointer("/status/daemonEndpoints/kubeletEndpoint/port"))
        .and_then(Value::as_i64)
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("node {node_name} has no kubelet port")))?;
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let mut url = format!("https://{host}:{port}/containerLogs/{ns}/{name}/{container}");
    if !params.is_empty() {
        let qs: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        url.push('?');
        url.push_str(&qs.join("&"));
    }
    Ok(url)
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .use_rustls_tls()
            .danger_accept_invalid_certs(true)
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .expect("a TLS client")
    })
}

/// Proxies the request and streams the agent's answer.
pub async fn proxy(url: &str) -> Result<Response, ApiError> {
    let resp = client()
        .get(url)
        .send()
        .await
        .map_err(|e| ApiError::Internal(format!("Get \"{url}\": {e}")))?;
    let code = resp.status();
    if !code.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(match code.as_u16() {
            400 | 404 => ApiError::BadRequest(body.trim().to_string()),
            _ => ApiError::Internal(body.trim().to_string()),
        });
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(resp.bytes_stream()),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_and_option_errors() {
        let pod = json!({"metadata": {"name": "web", "namespace": "ns"}, "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "init"}]}});
        let node = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.5"}], "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}});
        let q = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        type Query = HashMap<String, String>;
        let cases: Vec<(Query, Result<&str, &str>)> = vec![
            (q(&[("container", "a")]), Ok("https://10.0.0.5:10250/containerLogs/ns/web/a")),
            (q(&[("container", "init"), ("follow", "true"), ("tailLines", "5")]), Ok("https://10.0.0.5:10250/containerLogs/ns/web/init?follow=true&tailLines=5")),
            (q(&[("container", "b"), ("previous", "true"), ("timestamps", "true")]), Ok("https://10.0.0.5:10250/containerLogs/ns/web/b?previous=true&timestamps=true")),
            (q(&[]), Err("a container name must be specified for pod web, choose one of: [a b]")),
            (q(&[("container", "zz")]), Err("container zz is not valid for pod web")),
            (q(&[("container", "a"), ("tailLines", "-1")]), Err("PodLogOptions \"\" is invalid: tailLines: Invalid value: -1: must be greater than or equal to 0")),
        ];
        for (query, want) in cases {
            let got = agent_url(&pod, &node, &query).map_err(|e| e.to_string());
            assert_eq!(got.as_deref().map_err(String::as_str), want, "{query:?}");
        }
        let unscheduled = json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(
            agent_url(&unscheduled, &node, &q(&[]))
                .unwrap_err()
                .to_string(),
            "pod p does not have a host assigned"
        );
    }
}
