//! Authentication and authorization.
//!
//! Authentication: bearer tokens from a static token file in kube-apiserver's
//! `--token-auth-file` CSV format, one user a line: `token,user,uid,"group1,group2"`
//! (the groups column is optional); client certificates are checked by [`super::tls`].
//! With a token file or a client CA configured, a request without a known token or a
//! verified certificate is 401 Unauthorized. With neither, every request is the admin.
//!
//! Authorization: kube-apiserver's ABAC policy file format (`--authorization-policy-file`),
//! one JSON object a line:
//! `{"apiVersion":"abac.authorization.kubernetes.io/v1beta1","kind":"Policy","spec":{"user":"bob","namespace":"team-a","resource":"*","apiGroup":"*","readonly":true}}`.
//! A request is allowed if any line matches its user (or one of its groups), namespace,
//! resource and API group (`*` matches all), and it is a read (`get`/`list`/`watch`) or the
//! line is not `readonly`. Non-resource paths (discovery, `/version`) are open to every
//! authenticated user. Without a policy file everything is allowed.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

/// Auth set-up failures (reading the files); they stop the server at start.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Parse {
        path: String,
        line: usize,
        reason: String,
    },
}

/// An authenticated user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

impl User {
    fn admin() -> User {
        User {
            name: "system:admin".into(),
            uid: String::new(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }
}

/// Splits one CSV line, honouring double quotes (`"a,b"` is one field).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            c => fields.last_mut().expect("at least one field").push(c),
        }
    }
    fields.into_iter().map(|f| f.trim().to_string()).collect()
}

/// Parses a token file's text.
pub fn parse_tokens(path: &str, text: &str) -> Result<HashMap<String, User>, AuthError> {
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let f = csv_fields(line);
        if f.len() < 3 || f[0].is_empty() || f[1].is_empty() {
            return Err(AuthError::Parse {
                path: path.into(),
                line: i + 1,
                reason: "expected token,user,uid[,\"group1,group2\"]".into(),
            });
        }
        let mut groups: Vec<String> = f
            .get(3)
            .map(|g| {
                g.split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        groups.push("system:authenticated".into());
        users.insert(
            f[0].clone(),
            User {
                name: f[1].clone(),
                uid: f[2].clone(),
                groups,
            },
        );
    }
    Ok(users)
}

/// One ABAC policy line's `spec`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub api_group: String,
    #[serde(default)]
    pub readonly: bool,
}

#[derive(Deserialize)]
struct PolicyLine {
    spec: PolicySpec,
}

/// Parses an ABAC policy file's text.
pub fn parse_policy(path: &str, text: &str) -> Result<Vec<PolicySpec>, AuthError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| {
            serde_json::from_str::<PolicyLine>(l)
                .map(|p| p.spec)
                .map_err(|e| AuthError::Parse {
                    path: path.into(),
                    line: i + 1,
                    reason: e.to_string(),
                })
        })
        .collect()
}

/// What a request asks to do, for authorization.
#[derive(Debug)]
pub struct Attributes<'a> {
    pub verb: &'a str,
    pub namespace: Option<&'a str>,
    pub resource: &'a str,
    pub api_group: &'a str,
}

fn matches(pattern: &str, value: &str) -> bool {
    pattern == "*" || pattern == value
}

/// The authenticator and authorizer of one server.
#[derive(Debug, Default)]
pub struct Auth {
    tokens: Option<HashMap<String, User>>,
    policy: Option<Vec<PolicySpec>>,
    /// Client certificates can authenticate (so anonymous requests are refused).
    client_certs: bool,
}

fn read(path: &Path) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl Auth {
    pub fn load(
        token_file: Option<&Path>,
        policy_file: Option<&Path>,
        client_certs: bool,
    ) -> Result<Auth, AuthError> {
        let tokens = token_file
            .map(|p| read(p).and_then(|t| parse_tokens(&p.display().to_string(), &t)))
            .transpose()?;
        let policy = policy_file
            .map(|p| read(p).and_then(|t| parse_policy(&p.display().to_string(), &t)))
            .transpose()?;
        Ok(Auth {
            tokens,
            policy,
            client_certs,
        })
    }

    /// The user behind an `Authorization` header value; `None` means 401.
    pub fn authenticate(&self, header: Option<&str>) -> Option<User> {
        let Some(tokens) = &self.tokens else {
            return (!self.client_certs).then(User::admin);
        };
        let token = header?.strip_prefix("Bearer ")?.trim();
        tokens.get(token).cloned()
    }

    /// Whether `user` may do `attrs`.
    pub fn authorize(&self, user: &User, attrs: &Attributes<'_>) -> bool {
        let Some(policy) = &self.policy else {
            return true;
        };
        if user.groups.iter().any(|g| g == "system:masters") {
            return true;
        }
        let read_only = matches!(attrs.verb, "get" | "list" | "watch");
        policy.iter().any(|p| {
            let who = (!p.user.is_empty() && matches(&p.user, &user.name))
                || (!p.group.is_empty() && user.groups.iter().any(|g| matches(&p.group, g)));
            let ns_ok = match attrs.namespace {
                Some(ns) => p.namespace.is_empty() || matches(&p.namespace, ns),
                None => p.namespace.is_empty() || p.namespace == "*",
            };
            who && ns_ok
                && (p.resource.is_empty() || matches(&p.resource, attrs.resource))
                && (p.api_group.is_empty() || matches(&p.api_group, attrs.api_group))
                && (read_only || !p.readonly)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_format() {
        let users = parse_tokens(
            "t",
            "tok1,alice,1,\"system:masters,dev\"\ntok2,bob,2\n\n# comment\n",
        )
        .unwrap();
        assert_eq!(
            users["tok1"].groups,
            vec!["system:masters", "dev", "system:authenticated"]
        );
        assert_eq!(users["tok2"].name, "bob");
        assert!(parse_tokens("t", "onlytoken\n").is_err());
    }

    #[test]
    fn abac_read_only_namespace_user() {
        let tokens = parse_tokens("t", "a,alice,1,system:masters\nb,bob,2\n").unwrap();
        let policy = parse_policy("p", r#"{"apiVersion":"abac.authorization.kubernetes.io/v1beta1","kind":"Policy","spec":{"user":"bob","namespace":"team","resource":"*","apiGroup":"*","readonly":true}}"#).unwrap();
        let auth = Auth {
            tokens: Some(tokens),
            policy: Some(policy),
            client_certs: false,
        };
        assert!(auth.authenticate(None).is_none());
        assert!(auth.authenticate(Some("Bearer nope")).is_none());
        let alice = auth.authenticate(Some("Bearer a")).unwrap();
        let bob = auth.authenticate(Some("Bearer b")).unwrap();
        let cases = [
            ("get", Some("team"), true),
            ("list", Some("team"), true),
            ("create", Some("team"), false),
            ("get", Some("other"), false),
            ("list", None, false),
        ];
        for (verb, ns, want) in cases {
            let attrs = Attributes {
                verb,
                namespace: ns,
                resource: "pods",
                api_group: "",
            };
            assert_eq!(auth.authorize(&bob, &attrs), want, "{verb} {ns:?}");
            assert!(auth.authorize(&alice, &attrs));
        }
    }
}
