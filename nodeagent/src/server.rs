//! The agent's HTTPS server (the kubelet port the API server proxies pods/log to):
//!
//! - `GET /containerLogs/<namespace>/<pod>/<container>?follow&previous&tailLines&timestamps&sinceSeconds&limitBytes`
//!   — the container's log as plain text, the same paths and parameters as the kubelet;
//! - `GET /healthz`, `GET /metrics` (Prometheus).
//!
//! Like a kubelet without authentication webhooks, it trusts whoever reaches its port.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use serde::Deserialize;

use crate::logs::{complete_prefix, render, ReadOptions};
use crate::metrics::Metrics;
use crate::store::Store;

#[derive(Clone)]
pub struct ServerState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// How often a follow re-reads the log file.
    pub poll: Duration,
}

pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(|State(s): State<ServerState>| async move { s.metrics.render() }),
        )
        .with_state(state)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogQuery {
    #[serde(default)]
    follow: Option<String>,
    #[serde(default)]
    previous: Option<String>,
    #[serde(default)]
    timestamps: Option<String>,
    #[serde(default)]
    tail_lines: Option<i64>,
    #[serde(default)]
    since_seconds: Option<i64>,
    #[serde(default)]
    limit_bytes: Option<usize>,
}

fn flag(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true" | "1" | ""))
}

fn text(code: StatusCode, msg: String) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg,
    )
        .into_response()
}

async fn container_logs(
    State(s): State<ServerState>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    s.metrics.log_requests.inc();
    // The newest pod of that name on this node.
    let Some(rec) = s
        .store
        .pod_records()
        .into_iter()
        .filter(|r| r.namespace == ns && r.name == pod)
        .max_by_key(|r| {
            std::fs::metadata(s.store.pod_dir(&r.uid).join("pod.json"))
                .and_then(|m| m.modified())
                .ok()
        })
    else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod \"{pod}\" in namespace \"{ns}\" is not on this node"),
        );
    };
    let attempts = s.store.attempts(&rec.uid, &container);
    let previous = flag(&q.previous);
    let attempt = if previous {
        attempts.len().checked_sub(2).map(|i| attempts[i])
    } else {
        attempts.last().copied()
    };
    let Some(attempt) = attempt else {
        let msg = if previous {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            format!(
                "container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
            )
        };
        return text(StatusCode::BAD_REQUEST, msg);
    };
    let dir = s.store.attempt_dir(&rec.uid, &container, attempt);
    let log = dir.join("container.log");
    let opts = ReadOptions {
        timestamps: flag(&q.timestamps),
        tail_lines: q.tail_lines.and_then(|n| usize::try_from(n).ok()),
        since: q
            .since_seconds
            .filter(|n| *n > 0)
            .map(|n| Utc::now() - chrono::Duration::seconds(n)),
    };
    let bytes = tokio::fs::read(&log).await.unwrap_or_default();
    let done = complete_prefix(&bytes);
    let mut first = render(&bytes[..done], &opts);
    if let Some(limit) = q.limit_bytes {
        first.truncate(limit);
    }
    if !flag(&q.follow) || previous {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain")],
            first,
        )
            .into_response();
    }
    // Follow: stream what is appended until the container has exited and all is sent.
    let later = ReadOptions {
        tail_lines: None,
        since: None,
        ..opts
    };
    let poll = s.poll;
    let stream = futures::stream::unfold(
        (Some(first), done, false),
        move |(first, offset, finished)| {
            let log = log.clone();
            let dir = dir.clone();
            let later = later.clone();
            async move {
                if let Some(f) = first {
                    return Some((Ok::<_, std::io::Error>(f), (None, offset, false)));
                }
                if finished {
                    return None;
                }
                loop {
                    let exited = crate::shim::read_exit(&dir).is_some();
                    let rest = read_from(&log, offset).await;
                    let n = complete_prefix(&rest);
                    if n > 0 {
                        let chunk = render(&rest[..n], &later);
                        return Some((Ok(chunk), (None, offset + n, false)));
                    }
                    if exited {
                        return None;
                    }
                    tokio::time::sleep(poll).await;
                }
            }
        },
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// The bytes of `path` from `offset` on (empty if unreadable).
async fn read_from(path: &std::path::Path, offset: usize) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut out = Vec::new();
    if let Ok(mut f) = tokio::fs::File::open(path).await {
        if f.seek(std::io::SeekFrom::Start(offset as u64))
            .await
            .is_ok()
        {
            let _ = f.read_to_end(&mut out).await;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::format_record;
    use crate::store::PodRecord;
    use tower::ServiceExt;

    async fn get(router: &Router, uri: &str) -> (StatusCode, String) {
        let resp = router
            .clone()
            .oneshot(axum::http::Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let code = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn logs_current_previous_tail_and_follow_of_an_exited_container() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store
            .write_pod_record(&PodRecord {
                namespace: "ns".into(),
                name: "p".into(),
                uid: "u".into(),
            })
            .unwrap();
        let t = Utc::now();
        for (attempt, lines) in [(0u32, &["old"][..]), (1, &["a", "b", "c"][..])] {
            let d = store.attempt_dir("u", "c", attempt);
            std::fs::create_dir_all(&d).unwrap();
            let log: Vec<u8> = lines
                .iter()
                .flat_map(|l| format_record(t, "stdout", false, l.as_bytes()))
                .collect();
            std::fs::write(d.join("container.log"), log).unwrap();
        }
        std::fs::write(
            store.attempt_dir("u", "c", 1).join("exit.json"),
            r#"{"exitCode":0,"finishedAt":"2024-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let r = router(ServerState {
            store,
            metrics: Arc::new(Metrics::default()),
            poll: Duration::from_millis(10),
        });
        let cases = [
            ("/containerLogs/ns/p/c", StatusCode::OK, "a\nb\nc\n"),
            ("/containerLogs/ns/p/c?tailLines=1", StatusCode::OK, "c\n"),
            (
                "/containerLogs/ns/p/c?previous=true",
                StatusCode::OK,
                "old\n",
            ),
            (
                "/containerLogs/ns/p/c?follow=true",
                StatusCode::OK,
                "a\nb\nc\n",
            ),
            ("/containerLogs/ns/p/c?limitBytes=3", StatusCode::OK, "a\nb"),
            (
                "/containerLogs/ns/p/other",
                StatusCode::BAD_REQUEST,
                "container \"other\" in pod \"p\" is waiting to start: ContainerCreating",
            ),
            (
                "/containerLogs/ns/q/c",
                StatusCode::NOT_FOUND,
                "pod \"q\" in namespace \"ns\" is not on this node",
            ),
        ];
        for (uri, code, body) in cases {
            assert_eq!(get(&r, uri).await, (code, body.to_string()), "{uri}");
        }
        let (_, ts) = get(&r, "/containerLogs/ns/p/c?timestamps=true&tailLines=1").await;
        assert!(ts.ends_with("Z c\n") && ts.len() > 25, "{ts}");
    }

    #[tokio::test]
    async fn follow_streams_appended_lines_until_the_container_exits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store
            .write_pod_record(&PodRecord {
                namespace: "ns".into(),
                name: "p".into(),
                uid: "u".into(),
            })
            .unwrap();
        let d = store.attempt_dir("u", "c", 0);
        std::fs::create_dir_all(&d).unwrap();
        let log = d.join("container.log");
        std::fs::write(&log, format_record(Utc::now(), "stdout", false, b"first")).unwrap();
        let r = router(ServerState {
            store,
            metrics: Arc::new(Metrics::default()),
            poll: Duration::from_millis(10),
        });
        let writer = tokio::spawn(async move {
            use std::io::Write;
            for line in ["second", "third"] {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
                // A record written in two pieces is only sent once complete.
                let rec = format_record(Utc::now(), "stderr", false, line.as_bytes());
                let (a, b) = rec.split_at(5);
                f.write_all(a).unwrap();
                f.flush().unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
                f.write_all(b).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            std::fs::write(
                d.join("exit.json"),
                r#"{"exitCode":0,"finishedAt":"2024-01-01T00:00:00Z"}"#,
            )
            .unwrap();
        });
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            get(&r, "/containerLogs/ns/p/c?follow=true"),
        )
        .await
        .expect("follow ends when the container exits");
        assert_eq!(got, (StatusCode::OK, "first\nsecond\nthird\n".to_string()));
        writer.await.unwrap();
    }
}
