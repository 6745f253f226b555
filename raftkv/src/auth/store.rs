//! The auth store: etcd 3.4's `auth/store.go` semantics over rows kept in the state
//! machine's `meta` column family (layout in [`crate::mvcc::backend`]). Mutations are
//! applied from the log ([`AuthStore::apply`]); permission checks read the in-memory copy.
//!
//! The auth revision starts at 1 in a fresh store and grows by one with every change that
//! etcd counts (user and role changes and AuthDisable; not AuthEnable). Requests carry the
//! revision at which their token was resolved and fail with [`AuthError::OldRevision`] once
//! the store is past it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use proto::authpb::{Permission, Role, User, UserAddOptions};
use proto::etcdserverpb::{
    AuthDisableResponse, AuthEnableResponse, AuthRoleAddResponse, AuthRoleDeleteResponse,
    AuthRoleGetResponse, AuthRoleGrantPermissionResponse, AuthRoleListResponse,
    AuthRoleRevokePermissionResponse, AuthUserAddResponse, AuthUserChangePasswordResponse,
    AuthUserDeleteResponse, AuthUserGetResponse, AuthUserGrantRoleResponse, AuthUserListResponse,
    AuthUserRevokeRoleResponse, AuthenticateResponse,
};
use proto::raftkvpb::{auth_request, auth_response, AuthResponse, RequestHeader};

use super::perms::UserPerms;
use super::tokens::TokenStore;
use super::{AuthError, AuthInfo, ROOT};
use crate::mvcc::backend::AuthRows;
use crate::mvcc::Batch;

/// Whose rights a request runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The server itself (lease expiry, publish): every right, as etcd's `WithRoot`.
    Internal,
    /// A client; `AuthInfo::default()` when it sent no token.
    Client(AuthInfo),
}

impl Caller {
    /// Reads the caller off a log entry's header; entries without one are the server's own.
    pub fn from_header(h: Option<&RequestHeader>) -> Caller {
        match h {
            None => Caller::Internal,
            Some(h) if h.internal => Caller::Internal,
            Some(h) => Caller::Client(AuthInfo {
                username: h.username.clone(),
                revision: h.auth_revision,
            }),
        }
    }
}

pub struct AuthStore {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    /// Merged permissions per user (etcd's `rangePermCache`); cleared by every change.
    cache: Mutex<HashMap<String, Arc<UserPerms>>>,
    pub tokens: Arc<TokenStore>,
}

fn has_root_role(u: &User) -> bool {
    u.roles.iter().any(|r| r == ROOT)
}

fn name_of(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl AuthStore {
    /// The store as `rows` hold it; a store never written to starts at revision 1, as
    /// etcd's `NewAuthStore` commits one.
    pub fn load(rows: AuthRows, tokens: Arc<TokenStore>) -> AuthStore {
        AuthStore {
            enabled: rows.enabled,
            revision: rows.revision.max(1),
            users: rows
                .users
                .into_iter()
                .map(|u| (name_of(&u.name), u))
                .collect(),
            roles: rows
                .roles
                .into_iter()
                .map(|r| (name_of(&r.name), r))
                .collect(),
            cache: Mutex::new(HashMap::new()),
            tokens,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// Who a token names, as of the current revision (etcd's `AuthInfoFromToken`).
    pub fn info_from_token(&self, token: &str) -> Option<AuthInfo> {
        self.tokens.user(token).map(|username| AuthInfo {
            username,
            revision: self.revision,
        })
    }

    fn commit_revision(&mut self, batch: &mut Batch) {
        self.revision += 1;
        batch.put_auth_revision(self.revision);
        self.cache.lock().expect("perm cache lock").clear();
    }

    /// etcd's `isOpPermitted`: may `caller` read (or write) `key` / `[key, range_end)`?
    pub fn check(
        &self,
        caller: &Caller,
        key: &[u8],
        range_end: &[u8],
        write: bool,
    ) -> Result<(), AuthError> {
        let ai = match caller {
            _ if !self.enabled => return Ok(()),
            Caller::Internal => return Ok(()),
            Caller::Client(ai) => ai,
        };
        if ai.revision == 0 {
            return Err(AuthError::UserEmpty);
        }
        if ai.revision < self.revision {
            return Err(AuthError::OldRevision);
        }
        let Some(user) = self.users.get(&ai.username) else {
            return Err(AuthError::PermissionDenied);
        };
        if has_root_role(user) {
            return Ok(());
        }
        let perms = {
            let mut cache = self.cache.lock().expect("perm cache lock");
            cache
                .entry(ai.username.clone())
                .or_insert_with(|| {
                    Arc::new(UserPerms::of(
                        user.roles.iter().filter_map(|r| self.roles.get(r)),
                    ))
                })
                .clone()
        };
        if perms.permits(key, range_end, write) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// The last check of a read served outside the log (etcd's `doSerialize`, after the
    /// permission check and the read): the auth revision `who` was resolved at must be the
    /// store's, whether or not auth is enabled. It matters for JWTs, whose revision is the
    /// one they were issued at: a token from before an auth change, or one claiming a
    /// revision the store has not reached, cannot read.
    pub fn check_read_revision(&self, who: Option<&AuthInfo>) -> Result<(), AuthError> {
        match who {
            Some(ai) if ai.revision != 0 && ai.revision != self.revision => {
                Err(AuthError::OldRevision)
            }
            _ => Ok(()),
        }
    }

    /// etcd's `IsAdminPermitted`: is `caller` a user holding the root role?
    pub fn check_admin(&self, caller: &Caller) -> Result<(), AuthError> {
        let ai = match caller {
            _ if !self.enabled => return Ok(()),
            Caller::Internal => return Ok(()),
            Caller::Client(ai) => ai,
        };
        if ai.username.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        match self.users.get(&ai.username) {
            None => Err(AuthError::UserNotFound),
            Some(u) if !has_root_role(u) => Err(AuthError::PermissionDenied),
            Some(_) => Ok(()),
        }
    }

    /// etcd's `CheckPassword`, before an Authenticate is proposed: the user's bcrypt hash
    /// (to verify outside any lock) and the revision it was read at.
    pub fn password_hash(&self, name: &str) -> Result<(Vec<u8>, u64), AuthError> {
        if !self.enabled {
            return Err(AuthError::NotEnabled);
        }
        let user = self.users.get(name).ok_or(AuthError::AuthFailed)?;
        if user.options.as_ref().is_some_and(|o| o.no_password) {
            return Err(AuthError::AuthFailed);
        }
        Ok((user.password.clone(), self.revision))
    }

    /// Applies one auth entry at log `index` (etcd's `authApplierV3` then `authStore`).
    pub fn apply(
        &mut self,
        caller: &Caller,
        req: auth_request::Request,
        index: u64,
        batch: &mut Batch,
    ) -> Result<AuthResponse, AuthError> {
        use auth_request::Request as Q;
        use auth_response::Response as A;
        let needs_admin = !matches!(req, Q::Authenticate(_) | Q::UserGet(_) | Q::RoleGet(_));
        if needs_admin {
            self.check_admin(caller)?;
        }
        let resp = match req {
            Q::Enable(_) => {
                self.enable(batch)?;
                A::Enable(AuthEnableResponse::default())
            }
            Q::Disable(_) => {
                self.disable(batch);
                A::Disable(AuthDisableResponse::default())
            }
            Q::Authenticate(a) => {
                if !self.enabled {
                    return Err(AuthError::NotEnabled);
                }
                let user = self.users.get(&a.name).ok_or(AuthError::AuthFailed)?;
                if user.options.as_ref().is_some_and(|o| o.no_password) {
                    return Err(AuthError::AuthFailed);
                }
                // No prefix: the member that took the request signs a JWT once this is
                // applied (`server::authn`); there is nothing to register.
                let token = if a.simple_token.is_empty() {
                    String::new()
                } else {
                    let token = format!("{}.{index}", a.simple_token);
                    self.tokens.assign(token.clone(), &a.name);
                    token
                };
                A::Authenticate(AuthenticateResponse {
                    header: None,
                    token,
                })
            }
            Q::UserAdd(r) => {
                if r.name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(&r.name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
                let user = User {
                    name: r.name.clone().into_bytes(),
                    password: if no_password {
                        Vec::new()
                    } else {
                        r.password.into_bytes()
                    },
                    roles: Vec::new(),
                    options: Some(r.options.unwrap_or(UserAddOptions { no_password: false })),
                };
                self.put_user(user, batch);
                A::UserAdd(AuthUserAddResponse::default())
            }
            Q::UserGet(r) => {
                if let (Err(e), Caller::Client(ai)) = (self.check_admin(caller), caller) {
                    if r.name != ai.username {
                        return Err(e);
                    }
                }
                let user = self.users.get(&r.name).ok_or(AuthError::UserNotFound)?;
                A::UserGet(AuthUserGetResponse {
                    header: None,
                    roles: user.roles.clone(),
                })
            }
            Q::UserList(_) => A::UserList(AuthUserListResponse {
                header: None,
                users: self.users.keys().cloned().collect(),
            }),
            Q::UserDelete(r) => {
                if self.enabled && r.name == ROOT {
                    return Err(AuthError::InvalidMgmt);
                }
                if self.users.remove(&r.name).is_none() {
                    return Err(AuthError::UserNotFound);
                }
                batch.delete_auth_user(r.name.as_bytes());
                self.commit_revision(batch);
                self.tokens.invalidate_user(&r.name);
                A::UserDelete(AuthUserDeleteResponse::default())
            }
            Q::UserChangePassword(r) => {
                let mut user = self
                    .users
                    .get(&r.name)
                    .cloned()
                    .ok_or(AuthError::UserNotFound)?;
                user.password = r.password.into_bytes();
                self.put_user(user, batch);
                self.tokens.invalidate_user(&r.name);
                A::UserChangePassword(AuthUserChangePasswordResponse::default())
            }
            Q::UserGrantRole(r) => {
                let mut user = self
                    .users
                    .get(&r.user)
                    .cloned()
                    .ok_or(AuthError::UserNotFound)?;
                if r.role != ROOT && !self.roles.contains_key(&r.role) {
                    return Err(AuthError::RoleNotFound);
                }
                // Granting a role twice is not an error and changes nothing.
                if let Err(at) = user.roles.binary_search(&r.role) {
                    user.roles.insert(at, r.role);
                    self.put_user(user, batch);
                }
                A::UserGrantRole(AuthUserGrantRoleResponse::default())
            }
            Q::UserRevokeRole(r) => {
                if self.enabled && r.name == ROOT && r.role == ROOT {
                    return Err(AuthError::InvalidMgmt);
                }
                let mut user = self
                    .users
                    .get(&r.name)
                    .cloned()
                    .ok_or(AuthError::UserNotFound)?;
                let before = user.roles.len();
                user.roles.retain(|x| *x != r.role);
                if user.roles.len() == before {
                    return Err(AuthError::RoleNotGranted);
                }
                self.put_user(user, batch);
                A::UserRevokeRole(AuthUserRevokeRoleResponse::default())
            }
            Q::RoleAdd(r) => {
                if r.name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(&r.name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                self.put_role(
                    Role {
                        name: r.name.into_bytes(),
                        key_permission: Vec::new(),
                    },
                    batch,
                );
                A::RoleAdd(AuthRoleAddResponse::default())
            }
            Q::RoleGet(r) => {
                if let (Err(e), Caller::Client(ai)) = (self.check_admin(caller), caller) {
                    let has_role = self
                        .users
                        .get(&ai.username)
                        .is_some_and(|u| u.roles.contains(&r.role));
                    if !has_role {
                        return Err(e);
                    }
                }
                let role = self.roles.get(&r.role).ok_or(AuthError::RoleNotFound)?;
                A::RoleGet(AuthRoleGetResponse {
                    header: None,
                    perm: role.key_permission.clone(),
                })
            }
            Q::RoleList(_) => A::RoleList(AuthRoleListResponse {
                header: None,
                roles: self.roles.keys().cloned().collect(),
            }),
            Q::RoleDelete(r) => {
                if self.enabled && r.role == ROOT {
                    return Err(AuthError::InvalidMgmt);
                }
                if self.roles.remove(&r.role).is_none() {
                    return Err(AuthError::RoleNotFound);
                }
                batch.delete_auth_role(r.role.as_bytes());
                // etcd 3.4 also takes the role away from every user holding it.
                let holders: Vec<User> = self
                    .users
                    .values()
                    .filter(|u| u.roles.contains(&r.role))
                    .cloned()
                    .collect();
                for mut u in holders {
                    u.roles.retain(|x| *x != r.role);
                    batch.put_auth_user(&u);
                    self.users.insert(name_of(&u.name), u);
                }
                self.commit_revision(batch);
                A::RoleDelete(AuthRoleDeleteResponse::default())
            }
            Q::RoleGrantPermission(r) => {
                let mut role = self
                    .roles
                    .get(&r.name)
                    .cloned()
                    .ok_or(AuthError::RoleNotFound)?;
                let perm = r.perm.unwrap_or_default();
                let perms = &mut role.key_permission;
                // etcd looks only at the first permission with a key >= the new one's.
                let at = perms.partition_point(|p| p.key < perm.key);
                match perms.get_mut(at) {
                    Some(p) if p.key == perm.key && p.range_end == perm.range_end => {
                        p.perm_type = perm.perm_type
                    }
                    _ => {
                        perms.push(Permission {
                            perm_type: perm.perm_type,
                            key: perm.key,
                            range_end: perm.range_end,
                        });
                        perms.sort_by(|a, b| a.key.cmp(&b.key));
                    }
                }
                self.put_role(role, batch);
                A::RoleGrantPermission(AuthRoleGrantPermissionResponse::default())
            }
            Q::RoleRevokePermission(r) => {
                let mut role = self
                    .roles
                    .get(&r.role)
                    .cloned()
                    .ok_or(AuthError::RoleNotFound)?;
                let before = role.key_permission.len();
                role.key_permission
                    .retain(|p| p.key != r.key || p.range_end != r.range_end);
                if role.key_permission.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
                self.put_role(role, batch);
                A::RoleRevokePermission(AuthRoleRevokePermissionResponse::default())
            }
        };
        Ok(AuthResponse {
            response: Some(resp),
        })
    }

    fn put_user(&mut self, user: User, batch: &mut Batch) {
        batch.put_auth_user(&user);
        self.users.insert(name_of(&user.name), user);
        self.commit_revision(batch);
    }

    fn put_role(&mut self, role: Role, batch: &mut Batch) {
        batch.put_auth_role(&role);
        self.roles.insert(name_of(&role.name), role);
        self.commit_revision(batch);
    }

    fn enable(&mut self, batch: &mut Batch) -> Result<(), AuthError> {
        if self.enabled {
            return Ok(());
        }
        let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
        if !has_root_role(root) {
            return Err(AuthError::RootRoleNotExist);
        }
        self.enabled = true;
        batch.put_auth_enabled(true);
        self.cache.lock().expect("perm cache lock").clear();
        Ok(())
    }

    fn disable(&mut self, batch: &mut Batch) {
        if !self.enabled {
            return;
        }
        self.enabled = false;
        batch.put_auth_enabled(false);
        self.commit_revision(batch);
        self.tokens.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proto::etcdserverpb::{
        AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
        AuthUserDeleteRequest, AuthUserGrantRoleRequest,
    };

    use super::*;
    use crate::clock::SystemClock;

    fn empty() -> AuthStore {
        let tokens = TokenStore::new(Duration::from_secs(300), Arc::new(SystemClock));
        AuthStore::load(AuthRows::default(), Arc::new(tokens))
    }

    fn apply(s: &mut AuthStore, q: auth_request::Request) -> Result<(), AuthError> {
        s.apply(&Caller::Internal, q, 1, &mut Batch::default())
            .map(|_| ())
    }

    fn user(name: &str) -> auth_request::Request {
        auth_request::Request::UserAdd(AuthUserAddRequest {
            name: name.into(),
            password: "hash".into(),
            options: None,
        })
    }

    fn grant(user: &str, role: &str) -> auth_request::Request {
        auth_request::Request::UserGrantRole(AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
    }

    fn enable() -> auth_request::Request {
        auth_request::Request::Enable(AuthEnableRequest {})
    }

    /// root (root role) and alice (role `r`: read on "a"), auth enabled.
    fn sample() -> AuthStore {
        let mut s = empty();
        assert_eq!(apply(&mut s, enable()), Err(AuthError::RootUserNotExist));
        apply(&mut s, user("root")).unwrap();
        assert_eq!(apply(&mut s, enable()), Err(AuthError::RootRoleNotExist));
        apply(&mut s, grant("root", ROOT)).unwrap();
        apply(&mut s, user("alice")).unwrap();
        apply(
            &mut s,
            auth_request::Request::RoleAdd(AuthRoleAddRequest { name: "r".into() }),
        )
        .unwrap();
        apply(
            &mut s,
            auth_request::Request::RoleGrantPermission(AuthRoleGrantPermissionRequest {
                name: "r".into(),
                perm: Some(Permission {
                    perm_type: 0,
                    key: b"a".to_vec(),
                    range_end: Vec::new(),
                }),
            }),
        )
        .unwrap();
        apply(&mut s, grant("alice", "r")).unwrap();
        let before = s.revision();
        apply(&mut s, enable()).unwrap();
        assert_eq!(s.revision(), before, "enabling does not bump the revision");
        s
    }

    fn client(name: &str, revision: u64) -> Caller {
        Caller::Client(AuthInfo {
            username: name.into(),
            revision,
        })
    }

    #[test]
    fn permission_checks_follow_etcd() {
        let s = sample();
        let rev = s.revision();
        // (caller, key, write, expected)
        let cases = [
            (Caller::Internal, "z", true, Ok(())),
            (client("", 0), "a", false, Err(AuthError::UserEmpty)),
            (
                client("alice", rev - 1),
                "a",
                false,
                Err(AuthError::OldRevision),
            ),
            (client("alice", rev), "a", false, Ok(())),
            (
                client("alice", rev),
                "a",
                true,
                Err(AuthError::PermissionDenied),
            ),
            (
                client("alice", rev),
                "b",
                false,
                Err(AuthError::PermissionDenied),
            ),
            (
                client("ghost", rev),
                "a",
                false,
                Err(AuthError::PermissionDenied),
            ),
            (client("root", rev), "z", true, Ok(())),
        ];
        for (caller, key, write, want) in cases {
            assert_eq!(
                s.check(&caller, key.as_bytes(), &[], write),
                want,
                "{caller:?} {key}"
            );
        }
        let admin = [
            (client("root", rev), Ok(())),
            (client("alice", rev), Err(AuthError::PermissionDenied)),
            (client("ghost", rev), Err(AuthError::UserNotFound)),
            (client("", 0), Err(AuthError::UserEmpty)),
        ];
        for (caller, want) in admin {
            assert_eq!(s.check_admin(&caller), want, "{caller:?}");
        }
    }

    #[test]
    fn mutations_bump_the_revision_and_guard_root() {
        let mut s = sample();
        let rev = s.revision();
        let root = client("root", rev);
        let delete_root =
            auth_request::Request::UserDelete(AuthUserDeleteRequest { name: ROOT.into() });
        let mut batch = Batch::default();
        assert_eq!(
            s.apply(&root, delete_root, 9, &mut batch).map(|_| ()),
            Err(AuthError::InvalidMgmt)
        );
        assert_eq!(
            s.apply(&client("alice", rev), user("bob"), 9, &mut batch)
                .map(|_| ()),
            Err(AuthError::PermissionDenied),
            "only root manages auth"
        );
        assert_eq!(s.revision(), rev, "failed requests change nothing");
        s.apply(&root, user("bob"), 9, &mut batch).unwrap();
        assert_eq!(s.revision(), rev + 1);
        assert_eq!(
            s.check(&client("alice", rev), b"a", &[], false),
            Err(AuthError::OldRevision),
            "a request checked before the change is refused after it"
        );
        s.apply(
            &root,
            auth_request::Request::Disable(Default::default()),
            9,
            &mut batch,
        )
        .unwrap();
        assert_eq!(s.revision(), rev + 2);
        assert!(!s.is_enabled());
        assert_eq!(s.check(&client("", 0), b"a", &[], true), Ok(()));
    }

    #[test]
    fn jwt_authenticate_registers_nothing_and_its_token_goes_stale() {
        use crate::auth::jwt::{JwtProvider, OPT_PRIVATE_KEY, OPT_SIGN_METHOD};
        use proto::raftkvpb::InternalAuthenticateRequest;

        let mut s = sample();
        let authenticate = |prefix: &str| {
            auth_request::Request::Authenticate(InternalAuthenticateRequest {
                name: "alice".into(),
                simple_token: prefix.into(),
            })
        };
        let token = |r: Result<AuthResponse, AuthError>| match r.unwrap().response {
            Some(auth_response::Response::Authenticate(a)) => a.token,
            other => panic!("{other:?}"),
        };
        let mut batch = Batch::default();
        let simple = token(s.apply(&Caller::Internal, authenticate("abc"), 5, &mut batch));
        assert_eq!(simple, "abc.5");
        assert!(s.info_from_token("abc.5").is_some());
        let none = token(s.apply(&Caller::Internal, authenticate(""), 6, &mut batch));
        assert_eq!(none, "", "no prefix: the proposer signs a JWT");
        assert!(s.info_from_token(".6").is_none());

        // The JWT the proposer signs at the revision the entry applied at.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hs.key"), "secret").unwrap();
        let opts = [
            (OPT_SIGN_METHOD.to_string(), "HS256".to_string()),
            (
                OPT_PRIVATE_KEY.to_string(),
                dir.path().join("hs.key").display().to_string(),
            ),
        ]
        .into_iter()
        .collect();
        let jwt = JwtProvider::new(&opts, Arc::new(SystemClock)).unwrap();
        let info = jwt
            .info(&jwt.assign("alice", s.revision()).unwrap())
            .unwrap();
        let alice = Caller::Client(info);
        assert_eq!(s.check(&alice, b"a", &[], false), Ok(()));
        apply(&mut s, user("bob")).unwrap();
        assert_eq!(
            s.check(&alice, b"a", &[], false),
            Err(AuthError::OldRevision),
            "a JWT issued before an auth change"
        );
    }

    #[test]
    fn reads_need_the_exact_revision_as_etcds_do_serialize() {
        let mut s = sample();
        let rev = s.revision();
        let who = |revision| AuthInfo {
            username: "alice".into(),
            revision,
        };
        // (who, expected)
        let cases = [
            (None, Ok(())),
            (Some(who(0)), Ok(())),
            (Some(who(rev)), Ok(())),
            (Some(who(rev - 1)), Err(AuthError::OldRevision)),
            (Some(who(rev + 1)), Err(AuthError::OldRevision)),
        ];
        for (ai, want) in cases {
            assert_eq!(s.check_read_revision(ai.as_ref()), want, "{ai:?}");
        }
        s.apply(
            &Caller::Internal,
            auth_request::Request::Disable(Default::default()),
            9,
            &mut Batch::default(),
        )
        .unwrap();
        assert_eq!(
            s.check_read_revision(Some(&who(rev))),
            Err(AuthError::OldRevision),
            "disabling is an auth change too"
        );
        assert_eq!(s.check_read_revision(Some(&who(rev + 1))), Ok(()));
    }
}
