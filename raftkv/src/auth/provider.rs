//! The token provider: which tokens Authenticate hands out and how a request's token is
//! resolved to a user. etcd's `--auth-token` flag and `NewTokenProvider` (`auth/store.go`):
//! `<type>[,<key>=<value>...]` where the type is `simple` ([`super::tokens`]: opaque tokens
//! every member learns through the log; options are ignored) or `jwt` ([`super::jwt`]:
//! signed, self-contained tokens). Every member of a cluster must be given the same type.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::jwt::{JwtConfigError, JwtProvider};
use crate::clock::Clock;

/// etcd's token type names.
pub const TYPE_SIMPLE: &str = "simple";
pub const TYPE_JWT: &str = "jwt";

#[derive(Debug)]
pub enum TokenProvider {
    Simple,
    Jwt(Box<JwtProvider>),
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// A malformed flag or an unknown type (etcd's `ErrInvalidAuthOpts`, after logging why).
    #[error("auth: invalid auth options ({0})")]
    InvalidOpts(String),
    #[error(transparent)]
    Jwt(#[from] JwtConfigError),
}

impl TokenProvider {
    /// The provider the `--auth-token` value asks for.
    pub fn from_flag(flag: &str, clock: Arc<dyn Clock>) -> Result<TokenProvider, ProviderError> {
        let (kind, opts) = decompose(flag)?;
        match kind {
            TYPE_SIMPLE => Ok(TokenProvider::Simple),
            TYPE_JWT => Ok(TokenProvider::Jwt(Box::new(JwtProvider::new(
                &opts, clock,
            )?))),
            // etcd's "" is a provider that never issues tokens; raftkv has no use for it.
            "" => Err(ProviderError::InvalidOpts(
                "an empty token type (no tokens) is not supported; use simple or jwt".into(),
            )),
            other => Err(ProviderError::InvalidOpts(format!(
                "unknown token type: {other}"
            ))),
        }
    }
}

/// etcd's `decomposeOpts`: the type, and `key=value` options (exactly one `=` each, no key
/// twice).
fn decompose(flag: &str) -> Result<(&str, BTreeMap<String, String>), ProviderError> {
    let mut parts = flag.split(',');
    let kind = parts.next().unwrap_or_default();
    let mut opts = BTreeMap::new();
    for opt in parts {
        let invalid = || ProviderError::InvalidOpts(format!("invalid token option: {flag}"));
        let Some((k, v)) = opt.split_once('=').filter(|(_, v)| !v.contains('=')) else {
            return Err(invalid());
        };
        if opts.insert(k.to_string(), v.to_string()).is_some() {
            return Err(ProviderError::InvalidOpts(format!(
                "invalid token option: {flag} (duplicate parameter {k})"
            )));
        }
    }
    Ok((kind, opts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    #[test]
    fn flags_decompose_as_etcds() {
        type Decomposed<'a> = Option<(&'a str, &'a [(&'a str, &'a str)])>;
        // (flag, Some(type, options) or None: refused)
        let cases: &[(&str, Decomposed)] = &[
            ("simple", Some(("simple", &[]))),
            ("simple,a=b", Some(("simple", &[("a", "b")]))),
            (
                "jwt,sign-method=RS256,ttl=1m",
                Some(("jwt", &[("sign-method", "RS256"), ("ttl", "1m")])),
            ),
            ("jwt,ttl=", Some(("jwt", &[("ttl", "")]))),
            ("", Some(("", &[]))),
            ("jwt,ttl", None),
            ("jwt,a=b=c", None),
            ("jwt,ttl=1m,ttl=2m", None),
            ("jwt,", None),
        ];
        for &(flag, want) in cases {
            let got = decompose(flag).ok();
            let want = want.map(|(t, o)| {
                let o: BTreeMap<String, String> = o
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                (t, o)
            });
            assert_eq!(got, want, "{flag}");
        }
    }

    #[test]
    fn types() {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        assert!(matches!(
            TokenProvider::from_flag("simple", clock.clone()),
            Ok(TokenProvider::Simple)
        ));
        for flag in ["", "bogus", "simple,x", "jwt", "jwt,sign-method=RS256"] {
            let err = TokenProvider::from_flag(flag, clock.clone()).expect_err(flag);
            assert!(err.to_string().starts_with("auth: "), "{flag}: {err}");
        }
    }
}
