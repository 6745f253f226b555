//! Authentication and authorization, after etcd 3.4's `auth` package: the replicated auth
//! store (users, roles, key-range permissions, the enabled flag and the auth revision; see
//! [`store`]), the permission intervals a user holds ([`perms`], etcd's
//! `range_perm_cache.go`) and the tokens Authenticate hands out: which kind the member was
//! configured with ([`provider`], etcd's `--auth-token`), the simple-token table
//! ([`tokens`]) and signed JWTs ([`jwt`]).
//!
//! The store changes only by applying log entries, so every member decides a permission
//! check the same way: a request carries the user name and the auth revision at which its
//! token was looked up (etcd's request header), and apply refuses it when the store has
//! moved on since ([`AuthError::OldRevision`]).

pub mod jwt;
pub mod perms;
pub mod provider;
pub mod store;
pub mod tokens;

pub use provider::TokenProvider;
pub use store::{AuthStore, Caller};
pub use tokens::TokenStore;

use tonic::Code;

/// The user name etcd gives every right to, and the role that grants them.
pub const ROOT: &str = "root";

/// Who a client request runs as: etcd's `AuthInfo`. A revision of 0 means no user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthInfo {
    pub username: String,
    pub revision: u64,
}

/// Auth errors, with etcd 3.4's gRPC messages and codes (`v3rpc/rpctypes/error.go`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    NotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidToken,
    #[error("etcdserver: invalid auth management")]
    InvalidMgmt,
    #[error("etcdserver: revision of auth store is old")]
    OldRevision,
}

impl AuthError {
    pub const ALL: [AuthError; 16] = [
        AuthError::RootUserNotExist,
        AuthError::RootRoleNotExist,
        AuthError::UserAlreadyExist,
        AuthError::UserEmpty,
        AuthError::UserNotFound,
        AuthError::RoleAlreadyExist,
        AuthError::RoleNotFound,
        AuthError::RoleEmpty,
        AuthError::AuthFailed,
        AuthError::PermissionDenied,
        AuthError::RoleNotGranted,
        AuthError::PermissionNotGranted,
        AuthError::NotEnabled,
        AuthError::InvalidToken,
        AuthError::InvalidMgmt,
        AuthError::OldRevision,
    ];

    /// The `auth` package's own text for the error (`auth/store.go`), which etcd 3.4's
    /// maintenance server returns unconverted, as gRPC `Unknown`.
    pub fn raw_message(&self) -> &'static str {
        use AuthError::*;
        match self {
            RootUserNotExist => "auth: root user does not exist",
            RootRoleNotExist => "auth: root user does not have root role",
            UserAlreadyExist => "auth: user already exists",
            UserEmpty => "auth: user name is empty",
            UserNotFound => "auth: user not found",
            RoleAlreadyExist => "auth: role already exists",
            RoleNotFound => "auth: role not found",
            RoleEmpty => "auth: role name is empty",
            AuthFailed => "auth: authentication failed, invalid user ID or password",
            PermissionDenied => "auth: permission denied",
            RoleNotGranted => "auth: role is not granted to the user",
            PermissionNotGranted => "auth: permission is not granted to the role",
            NotEnabled => "auth: authentication is not enabled",
            InvalidToken => "auth: invalid auth token",
            InvalidMgmt => "auth: invalid auth management",
            OldRevision => "auth: revision in header is old",
        }
    }

    pub fn code(&self) -> Code {
        use AuthError::*;
        match self {
            UserEmpty | RoleEmpty | AuthFailed | InvalidMgmt | OldRevision => Code::InvalidArgument,
            PermissionDenied => Code::PermissionDenied,
            InvalidToken => Code::Unauthenticated,
            RootUserNotExist | RootRoleNotExist | UserAlreadyExist | UserNotFound
            | RoleAlreadyExist | RoleNotFound | RoleNotGranted | PermissionNotGranted
            | NotEnabled => Code::FailedPrecondition,
        }
    }
}
