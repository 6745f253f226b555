//! The server side of authentication: resolving a request's token to the user it runs as
//! (etcd's `AuthInfoFromCtx`, by the configured [`TokenProvider`]), proposing as that user,
//! and the parts of the Auth RPCs that run outside the log: password checks and hashing
//! (bcrypt at `--bcrypt-cost`) and signing JWTs. Hashing happens once, on the member that
//! takes the request, so the log carries only hashes and every member stores the same bytes.
//! A JWT is signed by that member too, after the Authenticate entry applied, so a member
//! given only the public key refuses to issue tokens whoever leads.

use axum::extract::ConnectInfo;
use proto::etcdserverpb::AuthenticateResponse;
use proto::raftkvpb::{
    auth_request, auth_response, internal_request, internal_response, AuthRequest,
    InternalAuthenticateRequest, InternalResponse,
};

use super::EtcdServer;
use crate::auth::{tokens, AuthError, AuthInfo, Caller, TokenProvider};
use crate::error::ServerError;
use crate::tls::ClientIdentity;

/// The gRPC metadata key etcd clients send their token under.
pub const TOKEN_METADATA: &str = "token";
/// The key etcd also takes the token from when `token` is absent (`TokenFieldNameSwagger`):
/// what grpc-gateway makes of an HTTP `Authorization` header. The value is the bare token.
pub const AUTHORIZATION_METADATA: &str = "authorization";

/// What a request carries to say who sent it: a token, and the CN of the client
/// certificate of its connection.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    token: Option<String>,
    cert_user: Option<String>,
}

impl Credentials {
    pub fn of<T>(req: &tonic::Request<T>) -> Credentials {
        Credentials {
            // A token that is not ASCII names no user: keep it, so it is refused.
            token: [TOKEN_METADATA, AUTHORIZATION_METADATA]
                .iter()
                .find_map(|k| req.metadata().get(*k))
                .map(|v| v.to_str().unwrap_or_default().to_string()),
            cert_user: req
                .extensions()
                .get::<ConnectInfo<ClientIdentity>>()
                .and_then(|c| c.0.common_name.clone()),
        }
    }
}

impl EtcdServer {
    /// Who the request's token names (etcd's `AuthInfoFromCtx`): a token is checked even
    /// while auth is disabled, as etcd does. Without one, under `--client-cert-auth`, the
    /// client certificate's CN is the user; otherwise `None`.
    pub async fn auth_info(&self, creds: &Credentials) -> Result<Option<AuthInfo>, ServerError> {
        let info = self.token_info(creds).await;
        if let Err(ServerError::Auth(AuthError::InvalidToken)) = info {
            self.metrics.auth_invalid_tokens.inc();
        }
        info
    }

    async fn token_info(&self, creds: &Credentials) -> Result<Option<AuthInfo>, ServerError> {
        let Some(token) = creds.token.as_deref() else {
            let revision = self.sm.read().auth.revision();
            return Ok(creds
                .cert_user
                .clone()
                .filter(|_| self.limits.client_cert_auth)
                .map(|username| AuthInfo { username, revision }));
        };
        if let TokenProvider::Jwt(jwt) = &self.token_provider {
            // The revision is the one the token was issued at: a token from before an auth
            // change is refused by the permission check (and a read by any other revision
            // than the store's), as etcd does.
            return match jwt.info(token) {
                Ok(info) => Ok(Some(info)),
                Err(e) => {
                    tracing::warn!(error = %e, "invalid JWT");
                    Err(AuthError::InvalidToken.into())
                }
            };
        }
        let index = tokens::token_index(token).ok_or(AuthError::InvalidToken)?;
        // The token was registered by the Authenticate entry at `index`: a member that has
        // not applied that far does not know it yet.
        self.raft
            .wait(Some(self.request_timeout))
            .applied_index_at_least(Some(index), "auth token")
            .await
            .map_err(|_| AuthError::InvalidToken)?;
        let info = self.sm.read().auth.info_from_token(token);
        Ok(Some(info.ok_or(AuthError::InvalidToken)?))
    }

    /// [`Self::propose`] as `who` (`None`: a client without a token).
    pub async fn propose_as(
        &self,
        who: Option<&AuthInfo>,
        request: internal_request::Request,
    ) -> Result<InternalResponse, ServerError> {
        self.propose_with(self.request_header(who, false), request)
            .await
    }

    /// Proposes one auth request as `who` and returns what it answered.
    pub async fn propose_auth(
        &self,
        who: Option<&AuthInfo>,
        request: auth_request::Request,
    ) -> Result<auth_response::Response, ServerError> {
        let req = internal_request::Request::Auth(AuthRequest {
            request: Some(request),
        });
        match self.propose_as(who, req).await?.response {
            Some(internal_response::Response::Auth(a)) => a
                .response
                .ok_or_else(|| ServerError::Internal("empty auth response".into())),
            other => Err(ServerError::Internal(format!(
                "auth proposal answered with {other:?}"
            ))),
        }
    }

    /// etcd's `IsAdminPermitted` for requests served outside the log (maintenance).
    pub fn check_admin(&self, who: Option<&AuthInfo>) -> Result<(), ServerError> {
        let caller = Caller::Client(who.cloned().unwrap_or_default());
        Ok(self.sm.read().auth.check_admin(&caller)?)
    }

    /// A bcrypt hash of `password` in Go's `$2a$` form (etcd's format, so snapshots carry
    /// hashes either side can check).
    pub async fn hash_password(&self, password: String) -> Result<String, ServerError> {
        let cost = self.limits.bcrypt_cost;
        tokio::task::spawn_blocking(move || {
            bcrypt::hash_with_result(password, cost)
                .map(|h| h.format_for_version(bcrypt::Version::TwoA))
        })
        .await
        .map_err(|e| ServerError::Internal(e.to_string()))?
        .map_err(|e| ServerError::Internal(format!("hashing the password: {e}")))
    }

    /// etcd's `Authenticate`: checks the password against this member's (linearizable)
    /// view of the store, then has every member register a new token through the log. If
    /// the auth store changed in between, the check is repeated.
    pub async fn authenticate(
        &self,
        name: String,
        password: String,
    ) -> Result<AuthenticateResponse, ServerError> {
        self.read_barrier().await?;
        let failed = |e: AuthError| {
            if e == AuthError::AuthFailed {
                self.metrics.auth_failures.inc();
            }
            ServerError::from(e)
        };
        loop {
            let (hash, checked) = self.sm.read().auth.password_hash(&name).map_err(failed)?;
            let pw = password.clone();
            let ok = tokio::task::spawn_blocking(move || {
                bcrypt::verify(pw, &String::from_utf8_lossy(&hash)).unwrap_or(false)
            })
            .await
            .map_err(|e| ServerError::Internal(e.to_string()))?;
            if !ok {
                return Err(failed(AuthError::AuthFailed));
            }
            let simple_token = match self.token_provider {
                TokenProvider::Simple => tokens::gen_prefix(),
                TokenProvider::Jwt(_) => String::new(),
            };
            let req = auth_request::Request::Authenticate(InternalAuthenticateRequest {
                name: name.clone(),
                simple_token,
            });
            let mut resp = match self.propose_auth(None, req).await? {
                auth_response::Response::Authenticate(r) => r,
                other => {
                    return Err(ServerError::Internal(format!(
                        "authenticate answered with {other:?}"
                    )))
                }
            };
            if checked == self.sm.read().auth.revision() {
                // The entry applied here (a proposal returns only then) while the store
                // stayed at `checked`: that is the revision it applied at.
                if let TokenProvider::Jwt(jwt) = &self.token_provider {
                    resp.token = jwt.assign(&name, checked)?;
                }
                return Ok(resp);
            }
            tracing::info!("auth store changed while checking a password; checking again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_token_then_authorization_metadata() {
        // (token metadata, authorization metadata, token used)
        let cases: &[(Option<&str>, Option<&str>, Option<&str>)] = &[
            (None, None, None),
            (Some("a.1"), None, Some("a.1")),
            (None, Some("b.2"), Some("b.2")),
            (Some("a.1"), Some("b.2"), Some("a.1")),
        ];
        for &(token, authorization, want) in cases {
            let mut req = tonic::Request::new(());
            for (key, value) in [
                (TOKEN_METADATA, token),
                (AUTHORIZATION_METADATA, authorization),
            ] {
                if let Some(v) = value {
                    req.metadata_mut().insert(key, v.parse().expect("ASCII"));
                }
            }
            let creds = Credentials::of(&req);
            assert_eq!(creds.token.as_deref(), want, "{token:?} {authorization:?}");
            assert_eq!(creds.cert_user, None);
        }
    }
}
