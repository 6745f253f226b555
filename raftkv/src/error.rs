//! Request errors and their gRPC form. The messages are etcd 3.4's, byte for byte
//! (`etcdserver/api/v3rpc/rpctypes/error.go`), because clients match on them.

use tonic::{Code, Status};

use crate::auth::jwt::SignError;
use crate::auth::AuthError;
use crate::lease::LeaseError;
use crate::mvcc::{BackendError, MvccError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: member ID already exist")]
    MemberExists,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: not leader")]
    NotLeader,
    /// The member believed to lead did not answer; the caller may retry with a new leader.
    #[error("etcdserver: request timed out, possibly due to connection lost")]
    Unreachable,
    /// The connection to the leader broke after the request was sent: it may or may not have
    /// been applied, so it must not be sent again (etcd's `ErrTimeoutDueToLeaderFail`).
    #[error("etcdserver: request timed out, possibly due to previous leader failure")]
    LeaderFail,
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Authenticate could not sign a JWT: etcd answers the `auth` package's error as is,
    /// with code Unknown.
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error("etcdserver: storage failure: {0}")]
    Storage(#[from] BackendError),
    #[error("etcdserver: {0}")]
    Internal(String),
    /// An error another member answered, passed on as it came.
    #[error("{message}")]
    Remote { code: Code, message: String },
}

/// Errors whose message identifies them, for [`ServerError::from_wire`].
fn known() -> [ServerError; 25] {
    use ServerError::*;
    [
        EmptyKey,
        KeyNotFound,
        ValueProvided,
        LeaseProvided,
        TooManyOps,
        DuplicateKey,
        Compacted,
        FutureRev,
        NoSpace,
        LeaseNotFound,
        LeaseExists,
        LeaseTtlTooLarge,
        RequestTooLarge,
        Stopped,
        MemberNotFound,
        Timeout,
        NoLeader,
        NotLeader,
        Unreachable,
        LeaderFail,
        MemberExists,
        BadLeaderTransferee,
        PeerUrlExists,
        MemberNotLearner,
        LearnerNotReady,
    ]
}

impl From<MvccError> for ServerError {
    fn from(e: MvccError) -> Self {
        match e {
            MvccError::Compacted => ServerError::Compacted,
            MvccError::FutureRev => ServerError::FutureRev,
            MvccError::Backend(b) => ServerError::Storage(b),
        }
    }
}

impl From<LeaseError> for ServerError {
    fn from(e: LeaseError) -> Self {
        match e {
            LeaseError::NotFound => ServerError::LeaseNotFound,
            LeaseError::Exists => ServerError::LeaseExists,
            LeaseError::TtlTooLarge => ServerError::LeaseTtlTooLarge,
        }
    }
}

impl ServerError {
    /// Rebuilds an error from its gRPC code and message (as forwarded between members).
    pub fn from_wire(code: i32, message: String) -> Self {
        known()
            .into_iter()
            .chain(AuthError::ALL.into_iter().map(ServerError::Auth))
            .find(|e| e.to_string() == message)
            .unwrap_or(ServerError::Remote {
                code: Code::from_i32(code),
                message,
            })
    }

    pub fn code(&self) -> Code {
        use ServerError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | RequestTooLarge => Code::InvalidArgument,
            Compacted | FutureRev | LeaseTtlTooLarge => Code::OutOfRange,
            NoSpace => Code::ResourceExhausted,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            LeaseExists | NotLeader | MemberExists | BadLeaderTransferee | PeerUrlExists
            | MemberNotLearner | LearnerNotReady => Code::FailedPrecondition,
            Stopped | Timeout | NoLeader | Unreachable | LeaderFail => Code::Unavailable,
            Storage(_) | Internal(_) => Code::Internal,
            Remote { code, .. } => *code,
            Sign(_) => Code::Unknown,
            Auth(e) => e.code(),
        }
    }
}

impl From<ServerError> for Status {
    fn from(e: ServerError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_form_matches_etcd() {
        let cases = [
            (
                ServerError::EmptyKey,
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                ServerError::Compacted,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                ServerError::FutureRev,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                ServerError::LeaseNotFound,
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                ServerError::LeaseExists,
                Code::FailedPrecondition,
                "etcdserver: lease already exists",
            ),
            (
                ServerError::NoSpace,
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            (
                ServerError::DuplicateKey,
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                ServerError::Sign(SignError::VerifyOnly),
                Code::Unknown,
                "auth: token signing attempted with verify-only key",
            ),
        ];
        for (err, code, msg) in cases {
            let s = Status::from(err);
            assert_eq!((s.code(), s.message()), (code, msg));
        }
    }

    #[test]
    fn wire_round_trip_keeps_the_variant() {
        for e in known() {
            let (code, msg) = (e.code() as i32, e.to_string());
            let back = ServerError::from_wire(code, msg.clone());
            assert_eq!((back.code(), back.to_string()), (e.code(), msg));
            assert!(
                !matches!(back, ServerError::Remote { .. }),
                "{e} comes back as itself"
            );
        }
        let other = ServerError::from_wire(Code::Aborted as i32, "something else".into());
        assert!(matches!(
            other,
            ServerError::Remote {
                code: Code::Aborted,
                ..
            }
        ));
    }
}
