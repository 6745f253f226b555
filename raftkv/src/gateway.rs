//! The JSON gateway: etcd 3.4's grpc-gateway, served on the client URLs beside gRPC
//! (`POST /v3/kv/range` with `{"key":"Zm9v"}`, ...; `/v3beta/...` is the same).
//!
//! Like grpc-gateway, it is a gRPC client of the server's own services: each request's JSON
//! body becomes the protobuf request of one RPC, which is sent in-process (no socket) through
//! the same tonic router gRPC clients reach, so every check the services make applies
//! unchanged; the answer is turned back into JSON.
//!
//! JSON form (grpc-gateway's default `jsonpb` marshaler with `OrigName`, produced by the
//! pbjson impls of the `proto` crate): field names as declared in the .proto, 64-bit integers
//! as strings, bytes as base64, enums by name, default values left out. Request bodies may
//! also use lowerCamelCase names and plain numbers; unknown fields are ignored; an empty body
//! is the default request.
//!
//! Answers, as etcd's gateway gives them:
//! - unary: `200` and the response object, or the HTTP status of the gRPC code (see
//!   [`http_status`]) and `{"error":msg,"message":msg,"code":grpc_code}`;
//! - streams (`/v3/watch`, `/v3/lease/keepalive`, `/v3/election/observe`,
//!   `/v3/maintenance/snapshot`): one `{"result":{...}}` line per message; a gRPC error ends
//!   the stream with `{"error":{"grpc_code":..,"http_code":..,"message":..,"http_status":..}}`.
//!   Client streams take any number of concatenated JSON requests in the body; the end of the
//!   body half-closes the RPC (a watch keeps running until the client disconnects).
//!
//! Auth: the `Authorization` header (the bare token `/v3/auth/authenticate` returned) is
//! passed on as the gRPC `authorization` metadata, as grpc-gateway does; the server takes
//! the token from there when there is no `token` metadata, as etcd's `AuthInfoFromCtx`
//! does. The Auth service itself is served at `/v3/auth/...`.
//!
//! Adding an RPC is one entry in [`routes`], with the path from the `google.api.http`
//! annotation of etcd's rpc.proto, minus `/v3/`.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post, MethodRouter};
use axum::Router;
use http_body_util::BodyExt;
use proto::etcdserverpb as pb;
use proto::v3electionpb as epb;
use proto::v3lockpb as lpb;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};
use tower::ServiceExt;

/// Largest JSON body accepted for a unary RPC (the gRPC layer applies etcd's own limit).
const BODY_LIMIT: usize = 64 * 1024 * 1024;
/// gRPC message frame: | compressed: u8 | length: u32 BE | message |.
const FRAME_PREFIX: usize = 5;

/// The in-process gRPC router the gateway calls.
type Grpc = Router;

/// Every RPC the gateway serves, by path under `/v3/` (and `/v3beta/`), as etcd 3.4's
/// rpc.proto, v3election.proto and v3lock.proto annotate them.
fn routes() -> Vec<(&'static str, MethodRouter<Grpc>)> {
    vec![
        (
            "kv/range",
            unary::<pb::RangeRequest, pb::RangeResponse>("/etcdserverpb.KV/Range"),
        ),
        (
            "kv/put",
            unary::<pb::PutRequest, pb::PutResponse>("/etcdserverpb.KV/Put"),
        ),
        (
            "kv/deleterange",
            unary::<pb::DeleteRangeRequest, pb::DeleteRangeResponse>(
                "/etcdserverpb.KV/DeleteRange",
            ),
        ),
        (
            "kv/txn",
            unary::<pb::TxnRequest, pb::TxnResponse>("/etcdserverpb.KV/Txn"),
        ),
        (
            "kv/compaction",
            unary::<pb::CompactionRequest, pb::CompactionResponse>("/etcdserverpb.KV/Compact"),
        ),
        (
            "watch",
            client_stream::<pb::WatchRequest, pb::WatchResponse>("/etcdserverpb.Watch/Watch"),
        ),
        (
            "lease/grant",
            unary::<pb::LeaseGrantRequest, pb::LeaseGrantResponse>(
                "/etcdserverpb.Lease/LeaseGrant",
            ),
        ),
        ("lease/revoke", lease_revoke()),
        ("kv/lease/revoke", lease_revoke()),
        (
            "lease/keepalive",
            client_stream::<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>(
                "/etcdserverpb.Lease/LeaseKeepAlive",
            ),
        ),
        ("lease/timetolive", lease_time_to_live()),
        ("kv/lease/timetolive", lease_time_to_live()),
        ("lease/leases", lease_leases()),
        ("kv/lease/leases", lease_leases()),
        (
            "cluster/member/add",
            unary::<pb::MemberAddRequest, pb::MemberAddResponse>("/etcdserverpb.Cluster/MemberAdd"),
        ),
        (
            "cluster/member/remove",
            unary::<pb::MemberRemoveRequest, pb::MemberRemoveResponse>(
                "/etcdserverpb.Cluster/MemberRemove",
            ),
        ),
        (
            "cluster/member/update",
            unary::<pb::MemberUpdateRequest, pb::MemberUpdateResponse>(
                "/etcdserverpb.Cluster/MemberUpdate",
            ),
        ),
        (
            "cluster/member/list",
            unary::<pb::MemberListRequest, pb::MemberListResponse>(
                "/etcdserverpb.Cluster/MemberList",
            ),
        ),
        (
            "cluster/member/promote",
            unary::<pb::MemberPromoteRequest, pb::MemberPromoteResponse>(
                "/etcdserverpb.Cluster/MemberPromote",
            ),
        ),
        (
            "maintenance/alarm",
            unary::<pb::AlarmRequest, pb::AlarmResponse>("/etcdserverpb.Maintenance/Alarm"),
        ),
        (
            "maintenance/status",
            unary::<pb::StatusRequest, pb::StatusResponse>("/etcdserverpb.Maintenance/Status"),
        ),
        (
            "maintenance/defragment",
            unary::<pb::DefragmentRequest, pb::DefragmentResponse>(
                "/etcdserverpb.Maintenance/Defragment",
            ),
        ),
        (
            "maintenance/hash",
            unary::<pb::HashRequest, pb::HashResponse>("/etcdserverpb.Maintenance/Hash"),
        ),
        (
            "maintenance/snapshot",
            server_stream::<pb::SnapshotRequest, pb::SnapshotResponse>(
                "/etcdserverpb.Maintenance/Snapshot",
            ),
        ),
        (
            "maintenance/transfer-leadership",
            unary::<pb::MoveLeaderRequest, pb::MoveLeaderResponse>(
                "/etcdserverpb.Maintenance/MoveLeader",
            ),
        ),
        (
            "auth/enable",
            unary::<pb::AuthEnableRequest, pb::AuthEnableResponse>("/etcdserverpb.Auth/AuthEnable"),
        ),
        (
            "auth/disable",
            unary::<pb::AuthDisableRequest, pb::AuthDisableResponse>(
                "/etcdserverpb.Auth/AuthDisable",
            ),
        ),
        (
            "auth/authenticate",
            unary::<pb::AuthenticateRequest, pb::AuthenticateResponse>(
                "/etcdserverpb.Auth/Authenticate",
            ),
        ),
        (
            "auth/user/add",
            unary::<pb::AuthUserAddRequest, pb::AuthUserAddResponse>("/etcdserverpb.Auth/UserAdd"),
        ),
        (
            "auth/user/get",
            unary::<pb::AuthUserGetRequest, pb::AuthUserGetResponse>("/etcdserverpb.Auth/UserGet"),
        ),
        (
            "auth/user/list",
            unary::<pb::AuthUserListRequest, pb::AuthUserListResponse>(
                "/etcdserverpb.Auth/UserList",
            ),
        ),
        (
            "auth/user/delete",
            unary::<pb::AuthUserDeleteRequest, pb::AuthUserDeleteResponse>(
                "/etcdserverpb.Auth/UserDelete",
            ),
        ),
        (
            "auth/user/changepw",
            unary::<pb::AuthUserChangePasswordRequest, pb::AuthUserChangePasswordResponse>(
                "/etcdserverpb.Auth/UserChangePassword",
            ),
        ),
        (
            "auth/user/grant",
            unary::<pb::AuthUserGrantRoleRequest, pb::AuthUserGrantRoleResponse>(
                "/etcdserverpb.Auth/UserGrantRole",
            ),
        ),
        (
            "auth/user/revoke",
            unary::<pb::AuthUserRevokeRoleRequest, pb::AuthUserRevokeRoleResponse>(
                "/etcdserverpb.Auth/UserRevokeRole",
            ),
        ),
        (
            "auth/role/add",
            unary::<pb::AuthRoleAddRequest, pb::AuthRoleAddResponse>("/etcdserverpb.Auth/RoleAdd"),
        ),
        (
            "auth/role/get",
            unary::<pb::AuthRoleGetRequest, pb::AuthRoleGetResponse>("/etcdserverpb.Auth/RoleGet"),
        ),
        (
            "auth/role/list",
            unary::<pb::AuthRoleListRequest, pb::AuthRoleListResponse>(
                "/etcdserverpb.Auth/RoleList",
            ),
        ),
        (
            "auth/role/delete",
            unary::<pb::AuthRoleDeleteRequest, pb::AuthRoleDeleteResponse>(
                "/etcdserverpb.Auth/RoleDelete",
            ),
        ),
        (
            "auth/role/grant",
            unary::<pb::AuthRoleGrantPermissionRequest, pb::AuthRoleGrantPermissionResponse>(
                "/etcdserverpb.Auth/RoleGrantPermission",
            ),
        ),
        (
            "auth/role/revoke",
            unary::<pb::AuthRoleRevokePermissionRequest, pb::AuthRoleRevokePermissionResponse>(
                "/etcdserverpb.Auth/RoleRevokePermission",
            ),
        ),
        (
            "election/campaign",
            unary::<epb::CampaignRequest, epb::CampaignResponse>("/v3electionpb.Election/Campaign"),
        ),
        (
            "election/proclaim",
            unary::<epb::ProclaimRequest, epb::ProclaimResponse>("/v3electionpb.Election/Proclaim"),
        ),
        (
            "election/leader",
            unary::<epb::LeaderRequest, epb::LeaderResponse>("/v3electionpb.Election/Leader"),
        ),
        (
            "election/observe",
            server_stream::<epb::LeaderRequest, epb::LeaderResponse>(
                "/v3electionpb.Election/Observe",
            ),
        ),
        (
            "election/resign",
            unary::<epb::ResignRequest, epb::ResignResponse>("/v3electionpb.Election/Resign"),
        ),
        (
            "lock/lock",
            unary::<lpb::LockRequest, lpb::LockResponse>("/v3lockpb.Lock/Lock"),
        ),
        (
            "lock/unlock",
            unary::<lpb::UnlockRequest, lpb::UnlockResponse>("/v3lockpb.Lock/Unlock"),
        ),
    ]
}

fn lease_revoke() -> MethodRouter<Grpc> {
    unary::<pb::LeaseRevokeRequest, pb::LeaseRevokeResponse>("/etcdserverpb.Lease/LeaseRevoke")
}

fn lease_time_to_live() -> MethodRouter<Grpc> {
    unary::<pb::LeaseTimeToLiveRequest, pb::LeaseTimeToLiveResponse>(
        "/etcdserverpb.Lease/LeaseTimeToLive",
    )
}

fn lease_leases() -> MethodRouter<Grpc> {
    unary::<pb::LeaseLeasesRequest, pb::LeaseLeasesResponse>("/etcdserverpb.Lease/LeaseLeases")
}

/// The gateway's routes, calling the services in `grpc` (the client port's gRPC router).
pub fn router(grpc: Grpc) -> Router {
    let mut r = Router::new();
    for (path, method) in routes() {
        for version in ["v3", "v3beta"] {
            r = r.route(&format!("/{version}/{path}"), method.clone());
        }
    }
    // Unknown paths under the gateway's prefixes: grpc-gateway's plain-text 404.
    for version in ["v3", "v3beta"] {
        r = r.route(&format!("/{version}/{{*rest}}"), any(not_found));
    }
    r.with_state(grpc)
}

async fn not_found() -> Response {
    plain(StatusCode::NOT_FOUND, "Not Found\n")
}

async fn method_not_allowed() -> Response {
    plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n")
}

fn plain(code: StatusCode, body: &'static str) -> Response {
    let mut resp = (
        code,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response();
    add_gateway_headers(resp.headers_mut());
    resp
}

/// The CORS headers etcd's client handler adds to every gateway answer.
fn add_gateway_headers(h: &mut HeaderMap) {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("accept, content-type, authorization"),
    );
}

fn json_response(code: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = (code, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    add_gateway_headers(resp.headers_mut());
    resp.headers_mut().insert(
        "grpc-metadata-content-type",
        HeaderValue::from_static("application/grpc"),
    );
    resp
}

/// grpc-gateway v1's `HTTPStatusFromCode`, as vendored by etcd 3.4 (FailedPrecondition is
/// still 412 there).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// grpc-gateway's error body for a failed unary call (or a stream that could not start).
fn error_response(status: &Status) -> Response {
    /// grpc-gateway's `errorBody`, fields in its order.
    #[derive(Serialize)]
    struct ErrorBody<'a> {
        error: &'a str,
        message: &'a str,
        code: i32,
    }
    let body = ErrorBody {
        error: status.message(),
        message: status.message(),
        code: status.code() as i32,
    };
    let body = serde_json::to_vec(&body).expect("strings and numbers serialize");
    json_response(http_status(status.code()), body)
}

/// grpc-gateway's last chunk of a stream that failed.
fn stream_error_chunk(status: &Status) -> Bytes {
    let http = http_status(status.code());
    /// grpc-gateway's `StreamError` message, fields in its order.
    #[derive(Serialize)]
    struct StreamError<'a> {
        grpc_code: i32,
        http_code: u16,
        message: &'a str,
        http_status: &'a str,
    }
    #[derive(Serialize)]
    struct Chunk<'a> {
        error: StreamError<'a>,
    }
    let chunk = Chunk {
        error: StreamError {
            grpc_code: status.code() as i32,
            http_code: http.as_u16(),
            message: status.message(),
            http_status: http.canonical_reason().unwrap_or_default(),
        },
    };
    let mut line = serde_json::to_vec(&chunk).expect("strings and numbers serialize");
    line.push(b'\n');
    line.into()
}

fn result_chunk<M: Serialize>(msg: &M) -> Bytes {
    #[derive(Serialize)]
    struct Chunk<'a, M> {
        result: &'a M,
    }
    let mut line = serde_json::to_vec(&Chunk { result: msg }).expect("protobuf JSON serializes");
    line.push(b'\n');
    line.into()
}

fn frame(msg: &impl prost::Message) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = Vec::with_capacity(FRAME_PREFIX + len);
    buf.push(0);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    msg.encode(&mut buf).expect("a Vec grows as needed");
    buf.into()
}

/// Parses a JSON request body; empty means the default request.
fn parse<Req: DeserializeOwned + Default>(body: &[u8]) -> Result<Req, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Req::default());
    }
    serde_json::from_slice(body).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Sends one gRPC call through `grpc` with `body` (a stream of frames) and returns the
/// response body to read frames and the final status from.
async fn call(grpc: Grpc, path: &'static str, auth: Option<HeaderValue>, body: Body) -> Body {
    let mut req = axum::http::Request::post(path)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(body)
        .expect("static request parts");
    if let Some(token) = auth {
        req.headers_mut().insert(header::AUTHORIZATION, token);
    }
    let resp = match grpc.oneshot(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    };
    let (parts, body) = resp.into_parts();
    // A call that fails at once answers with the status in its headers and no body.
    match Status::from_header_map(&parts.headers) {
        Some(s) if s.code() != Code::Ok => trailers_only(s),
        _ => body,
    }
}

/// A body that carries only `status` in its trailers.
fn trailers_only(status: Status) -> Body {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", (status.code() as i32).into());
    if let Ok(v) = HeaderValue::from_str(&percent_encode(status.message())) {
        trailers.insert("grpc-message", v);
    }
    Body::new(
        http_body_util::Empty::<Bytes>::new().with_trailers(async move { Some(Ok(trailers)) }),
    )
}

/// gRPC's percent-encoding of `grpc-message` (printable ASCII except `%` stays).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads the gRPC messages of a response body, then its status.
struct Frames {
    body: Body,
    buf: Vec<u8>,
    status: Option<Status>,
}

impl Frames {
    fn new(body: Body) -> Self {
        Self {
            body,
            buf: Vec::new(),
            status: None,
        }
    }

    /// The next message, or `Err` with the call's final status (OK when it ended cleanly).
    async fn next<M: prost::Message + Default>(&mut self) -> Result<M, Status> {
        loop {
            if self.buf.len() >= FRAME_PREFIX {
                let len = u32::from_be_bytes(self.buf[1..FRAME_PREFIX].try_into().expect("4 bytes"))
                    as usize;
                if self.buf.len() >= FRAME_PREFIX + len {
                    let msg = M::decode(&self.buf[FRAME_PREFIX..FRAME_PREFIX + len])
                        .map_err(|e| Status::internal(e.to_string()));
                    self.buf.drain(..FRAME_PREFIX + len);
                    return msg;
                }
            }
            if let Some(s) = &self.status {
                return Err(s.clone());
            }
            match self.body.frame().await {
                Some(Ok(f)) => match f.into_data() {
                    Ok(data) => self.buf.extend_from_slice(&data),
                    Err(f) => {
                        let status = f
                            .into_trailers()
                            .ok()
                            .and_then(|t| Status::from_header_map(&t))
                            .unwrap_or_else(|| Status::ok(""));
                        self.status = Some(status);
                    }
                },
                Some(Err(e)) => self.status = Some(Status::internal(e.to_string())),
                None => {
                    self.status = Some(Status::internal("gRPC response ended without a status"))
                }
            }
        }
    }
}

fn authorization(req: &Request) -> Option<HeaderValue> {
    req.headers().get(header::AUTHORIZATION).cloned()
}

/// A unary RPC: one JSON request, one JSON response.
fn unary<Req, Resp>(path: &'static str) -> MethodRouter<Grpc>
where
    Req: prost::Message + DeserializeOwned + Default + 'static,
    Resp: prost::Message + Serialize + Default + 'static,
{
    post(move |State(grpc): State<Grpc>, req: Request| async move {
        let auth = authorization(&req);
        let body = match axum::body::to_bytes(req.into_body(), BODY_LIMIT).await {
            Ok(b) => b,
            Err(e) => return error_response(&Status::invalid_argument(e.to_string())),
        };
        let msg: Req = match parse(&body) {
            Ok(m) => m,
            Err(s) => return error_response(&s),
        };
        let mut frames = Frames::new(call(grpc, path, auth, Body::from(frame(&msg))).await);
        match frames.next::<Resp>().await {
            Ok(resp) => json_response(
                StatusCode::OK,
                serde_json::to_vec(&resp).expect("protobuf JSON serializes"),
            ),
            Err(s) => error_response(&s),
        }
    })
    .fallback(method_not_allowed)
}

/// A server-streaming RPC: one JSON request, a stream of results.
fn server_stream<Req, Resp>(path: &'static str) -> MethodRouter<Grpc>
where
    Req: prost::Message + DeserializeOwned + Default + 'static,
    Resp: prost::Message + Serialize + Default + Send + 'static,
{
    post(move |State(grpc): State<Grpc>, req: Request| async move {
        let auth = authorization(&req);
        let body = match axum::body::to_bytes(req.into_body(), BODY_LIMIT).await {
            Ok(b) => b,
            Err(e) => return error_response(&Status::invalid_argument(e.to_string())),
        };
        let msg: Req = match parse(&body) {
            Ok(m) => m,
            Err(s) => return error_response(&s),
        };
        let frames = Frames::new(call(grpc, path, auth, Body::from(frame(&msg))).await);
        stream_response::<Resp>(frames).await
    })
    .fallback(method_not_allowed)
}

/// A bidirectional RPC: the body's concatenated JSON requests in, a stream of results out.
fn client_stream<Req, Resp>(path: &'static str) -> MethodRouter<Grpc>
where
    Req: prost::Message + DeserializeOwned + Default + Send + 'static,
    Resp: prost::Message + Serialize + Default + Send + 'static,
{
    post(move |State(grpc): State<Grpc>, req: Request| async move {
        let auth = authorization(&req);
        let mut requests = JsonRequests::<Req>::new(req.into_body());
        // grpc-gateway reads the first request before calling: a bad one fails the call
        // (with the decoder's error, as code Unknown); an empty body opens an idle stream.
        let first = match requests.next().await {
            Ok(first) => first,
            Err(e) => return error_response(&Status::unknown(e)),
        };
        let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(16);
        if let Some(first) = first {
            let _ = tx.send(Ok(frame(&first))).await;
            tokio::spawn(async move {
                // Later bad input just half-closes, as grpc-gateway's send loop does.
                while let Ok(Some(msg)) = requests.next().await {
                    if tx.send(Ok(frame(&msg))).await.is_err() {
                        break;
                    }
                }
            });
        }
        let frames =
            Frames::new(call(grpc, path, auth, Body::from_stream(ReceiverStream::new(rx))).await);
        stream_response::<Resp>(frames).await
    })
    .fallback(method_not_allowed)
}

/// Streams results as they come. grpc-gateway waits for the first message (or the error)
/// before it answers, so a call that fails at once gets the error's HTTP status.
async fn stream_response<Resp>(mut frames: Frames) -> Response
where
    Resp: prost::Message + Serialize + Default + Send + 'static,
{
    let first = frames.next::<Resp>().await;
    let code = match &first {
        Err(s) if s.code() != Code::Ok => http_status(s.code()),
        _ => StatusCode::OK,
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(16);
    tokio::spawn(async move {
        let mut next = first;
        loop {
            let chunk = match &next {
                Ok(msg) => result_chunk(msg),
                Err(s) if s.code() == Code::Ok => return,
                Err(s) => stream_error_chunk(s),
            };
            if tx.send(Ok(chunk)).await.is_err() || next.is_err() {
                return;
            }
            // When the HTTP client goes away, returning drops `frames`, which ends the
            // call: an idle watch must not outlive its client until its next event.
            next = tokio::select! {
                n = frames.next::<Resp>() => n,
                _ = tx.closed() => return,
            };
        }
    });
    let mut resp = (code, Body::from_stream(ReceiverStream::new(rx))).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    add_gateway_headers(resp.headers_mut());
    resp.headers_mut().insert(
        "grpc-metadata-content-type",
        HeaderValue::from_static("application/grpc"),
    );
    resp
}

/// Concatenated JSON values read from a request body as they arrive (Go's `json.Decoder`).
struct JsonRequests<Req> {
    body: Body,
    buf: Vec<u8>,
    ended: bool,
    _req: std::marker::PhantomData<fn() -> Req>,
}

impl<Req: DeserializeOwned> JsonRequests<Req> {
    fn new(body: Body) -> Self {
        Self {
            body,
            buf: Vec::new(),
            ended: false,
            _req: std::marker::PhantomData,
        }
    }

    /// The next request; `None` at the end of the body; `Err` for malformed input.
    async fn next(&mut self) -> Result<Option<Req>, String> {
        loop {
            let mut values = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Req>();
            match values.next() {
                Some(Ok(req)) => {
                    let used = values.byte_offset();
                    self.buf.drain(..used);
                    return Ok(Some(req));
                }
                Some(Err(e)) if !e.is_eof() => return Err(e.to_string()),
                Some(Err(e)) if self.ended => return Err(e.to_string()),
                None if self.ended => return Ok(None),
                _ => {}
            }
            if self.buf.len() > BODY_LIMIT {
                return Err("request too large".to_string());
            }
            match self.body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => self.ended = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_etcds_gateway_form() {
        // (message, JSON as etcd 3.4's gateway prints it)
        let header = Some(pb::ResponseHeader {
            cluster_id: 10590307618791464684,
            member_id: 9070289934633186038,
            revision: 2,
            raft_term: 2,
        });
        let range = pb::RangeResponse {
            header,
            kvs: vec![proto::mvccpb::KeyValue {
                key: b"foo".to_vec(),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                value: b"bar".to_vec(),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        assert_eq!(
            serde_json::to_string(&range).unwrap(),
            r#"{"header":{"cluster_id":"10590307618791464684","member_id":"9070289934633186038","revision":"2","raft_term":"2"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}"#
        );
        let grant = pb::LeaseGrantResponse {
            header: None,
            id: 7,
            ttl: 60,
            error: String::new(),
        };
        assert_eq!(
            serde_json::to_string(&grant).unwrap(),
            r#"{"ID":"7","TTL":"60"}"#
        );
        let ev = proto::mvccpb::Event {
            r#type: proto::mvccpb::event::EventType::Delete as i32,
            kv: Some(proto::mvccpb::KeyValue {
                key: b"foo".to_vec(),
                mod_revision: 5,
                ..Default::default()
            }),
            prev_kv: None,
        };
        assert_eq!(
            serde_json::to_string(&ev).unwrap(),
            r#"{"type":"DELETE","kv":{"key":"Zm9v","mod_revision":"5"}}"#
        );
    }

    #[test]
    fn requests_accept_both_name_forms_numbers_and_unknown_fields() {
        let cases = [
            r#"{"key":"Zm9v","range_end":"Zm9w","limit":"5"}"#,
            r#"{"key":"Zm9v","rangeEnd":"Zm9w","limit":5,"nonsense":true}"#,
        ];
        for c in cases {
            let r: pb::RangeRequest = parse(c.as_bytes()).unwrap();
            assert_eq!(
                (r.key, r.range_end, r.limit),
                (b"foo".to_vec(), b"fop".to_vec(), 5)
            );
        }
        assert_eq!(
            parse::<pb::RangeRequest>(b" \n").unwrap(),
            Default::default()
        );
        let bad = parse::<pb::RangeRequest>(b"garbage").unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
    }

    #[test]
    fn grpc_codes_map_to_grpc_gateways_statuses() {
        let cases = [
            (Code::InvalidArgument, 400),
            (Code::OutOfRange, 400),
            (Code::NotFound, 404),
            (Code::FailedPrecondition, 412),
            (Code::Unknown, 500),
            (Code::Unavailable, 503),
            (Code::ResourceExhausted, 429),
            (Code::PermissionDenied, 403),
            (Code::Unauthenticated, 401),
        ];
        for (code, http) in cases {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[test]
    fn percent_encoding_of_grpc_messages() {
        assert_eq!(percent_encode("a b%c\n"), "a b%25c%0A");
        let mut h = HeaderMap::new();
        h.insert("grpc-status", 2.into());
        h.insert(
            "grpc-message",
            HeaderValue::from_str(&percent_encode("élection: 100%")).unwrap(),
        );
        assert_eq!(
            Status::from_header_map(&h).unwrap().message(),
            "élection: 100%"
        );
    }
}
