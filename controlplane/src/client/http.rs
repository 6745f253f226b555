//! [`Api`] over HTTP(S)+JSON with reqwest (rustls): bearer token and CA from a
//! [`Kubeconfig`]; failures decode the server's `Status` into [`ClientError::Api`];
//! watches read the chunked body as newline-delimited `{"type","object"}` events.

use bytes::{Buf, BytesMut};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Binding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, WatchEvent};
use reqwest::{Method, RequestBuilder, Response};
use serde::Deserialize;

use super::kubeconfig::Kubeconfig;
use super::{
    collection_path, Api, ClientError, DeleteParams, ListParams, Object, ObjectList, Result,
    WatchStream,
};

/// The HTTP client; cheap to clone (one connection pool).
#[derive(Clone)]
pub struct HttpClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl HttpClient {
    pub fn new(config: &Kubeconfig) -> Result<HttpClient> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .pool_max_idle_per_host(64);
        if let Some(pem) = &config.ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ClientError::Transport(format!("CA bundle: {e}")))?
            {
                b = b.add_root_certificate(cert);
            }
        }
        let http = b
            .build()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(HttpClient {
            http,
            base: config.server.clone(),
            token: config.token.clone(),
        })
    }

    pub fn from_kubeconfig(path: &std::path::Path) -> Result<HttpClient> {
        HttpClient::new(&Kubeconfig::load(path)?)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("Accept", "application/json");
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn send(&self, r: RequestBuilder) -> Result<Response> {
        let resp = r
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let code = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        Err(match serde_json::from_slice::<Status>(&body) {
            Ok(s) => ClientError::Api {
                code: s.code.map(|c| c as u16).unwrap_or(code),
                reason: s.reason.unwrap_or_default(),
                message: s.message.unwrap_or_default(),
            },
            Err(_) => ClientError::Api {
                code,
                reason: String::new(),
                message: String::from_utf8_lossy(&body).into_owned(),
            },
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, r: RequestBuilder) -> Result<T> {
        let body = self
            .send(r)
            .await?
            .bytes()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(serde_json::from_slice(&body)?)
    }
}

fn object_path<K: Object>(ns: Option<&str>, name: &str) -> String {
    format!("{}/{name}", collection_path::<K>(ns))
}

fn query(params: &ListParams) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    if let Some(s) = &params.label_selector {
        q.push(("labelSelector", s.clone()));
    }
    if let Some(s) = &params.field_selector {
        q.push(("fieldSelector", s.clone()));
    }
    q
}

#[derive(Deserialize)]
#[serde(bound = "K: serde::de::DeserializeOwned")]
struct List<K> {
    #[serde(default = "Vec::new")]
    items: Vec<K>,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta,
}

impl Api for HttpClient {
    async fn get<K: Object>(&self, ns: Option<&str>, name: &str) -> Result<K> {
        self.json(self.request(Method::GET, &object_path::<K>(ns, name)))
            .await
    }

    async fn list<K: Object>(
        &self,
        ns: Option<&str>,
        params: &ListParams,
    ) -> Result<ObjectList<K>> {
        let l: List<K> = self
            .json(
                self.request(Method::GET, &collection_path::<K>(ns))
                    .query(&query(params)),
            )
            .await?;
        Ok(ObjectList {
            items: l.items,
            resource_version: l.metadata.resource_version.unwrap_or_default(),
        })
    }

    async fn create<K: Object>(&self, ns: Option<&str>, obj: &K) -> Result<K> {
        self.json(
            self.request(Method::POST, &collection_path::<K>(ns))
                .json(obj),
        )
        .await
    }

    async fn update<K: Object>(&self, ns: Option<&str>, obj: &K) -> Result<K> {
        let name = obj.metadata().name.as_deref().unwrap_or("");
        self.json(
            self.request(Method::PUT, &object_path::<K>(ns, name))
                .json(obj),
        )
        .await
    }

    async fn patch_merge<K: Object>(
        &self,
        ns: Option<&str>,
        name: &str,
        patch: &serde_json::Value,
    ) -> Result<K> {
        self.json(
            self.request(Method::PATCH, &object_path::<K>(ns, name))
                .header("Content-Type", "application/merge-patch+json")
                .body(patch.to_string()),
        )
        .await
    }

    async fn delete_with<K: Object>(
        &self,
        ns: Option<&str>,
        name: &str,
        params: &DeleteParams,
    ) -> Result<()> {
        self.send(
            self.request(Method::DELETE, &object_path::<K>(ns, name))
                .json(&params.to_body()),
        )
        .await
        .map(drop)
    }

    async fn update_subresource<K: Object>(
        &self,
        ns: Option<&str>,
        obj: &K,
        subresource: &'static str,
    ) -> Result<K> {
        let name = obj.metadata().name.as_deref().unwrap_or("");
        let path = format!("{}/{subresource}", object_path::<K>(ns, name));
        self.json(self.request(Method::PUT, &path).json(obj)).await
    }

    async fn bind(&self, ns: &str, binding: &Binding) -> Result<()> {
        let name = binding.metadata.name.as_deref().unwrap_or("");
        let path = format!("/api/v1/namespaces/{ns}/pods/{name}/binding");
        self.send(self.request(Method::POST, &path).json(binding))
            .await
            .map(drop)
    }

    async fn watch<K: Object>(
        &self,
        ns: Option<&str>,
        params: &ListParams,
        resource_version: &str,
    ) -> Result<WatchStream<K>> {
        let mut q = query(params);
        q.push(("watch", "true".into()));
        q.push(("resourceVersion", resource_version.into()));
        q.push(("allowWatchBookmarks", "true".into()));
        if let Some(t) = params.timeout_seconds {
            q.push(("timeoutSeconds", t.to_string()));
        }
        let resp = self
            .send(
                self.request(Method::GET, &collection_path::<K>(ns))
                    .query(&q),
            )
            .await?;
        Ok(lines(resp.bytes_stream())
            .map(|line| match line {
                Ok(line) => {
                    serde_json::from_slice::<WatchEvent<K>>(&line).map_err(ClientError::from)
                }
                Err(e) => Err(e),
            })
            .boxed())
    }
}

/// Splits a chunked body into lines (one JSON event each), whatever the chunking.
fn lines<S>(body: S) -> impl futures::Stream<Item = Result<BytesMut>> + Send
where
    S: futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send + Unpin + 'static,
{
    futures::stream::unfold(
        (body, BytesMut::new(), false),
        |(mut body, mut buf, mut done)| async move {
            loop {
                if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                    let line = buf.split_to(i + 1);
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return Some((Ok(line), (body, buf, done)));
                }
                if done {
                    if buf.iter().all(u8::is_ascii_whitespace) {
                        return None;
                    }
                    let rest = buf.split();
                    return Some((Ok(rest), (body, buf, true)));
                }
                match body.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(chunk.chunk()),
                    Some(Err(e)) => {
                        return Some((
                            Err(ClientError::Transport(e.to_string())),
                            (body, buf, true),
                        ))
                    }
                    None => done = true,
                }
            }
        },
    )
}
