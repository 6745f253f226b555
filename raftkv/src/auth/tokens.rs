//! Simple tokens (etcd's `--auth-token simple`): opaque strings handed out by Authenticate
//! and mapped to a user name in memory. Every member learns a token by applying the
//! Authenticate entry that created it, so any member accepts it. Tokens are not persisted
//! (after a restart clients authenticate again, as with etcd) and a token unused for
//! `--auth-token-ttl` is forgotten.
//!
//! Wire form: `<16 random ASCII letters>.<log index of the Authenticate entry>`; the index
//! tells a member that does not know the token yet how far it must apply before it can.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::clock::Clock;

/// etcd's default `--auth-token-ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

pub struct TokenStore {
    /// In milliseconds; settable after start (`--auth-token-ttl`).
    ttl_ms: AtomicU64,
    clock: Arc<dyn Clock>,
    tokens: Mutex<HashMap<String, Token>>,
}

struct Token {
    user: String,
    deadline: Instant,
}

impl TokenStore {
    pub fn new(ttl: Duration, clock: Arc<dyn Clock>) -> TokenStore {
        TokenStore {
            ttl_ms: AtomicU64::new(ttl.as_millis() as u64),
            clock,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl_ms.store(ttl.as_millis() as u64, Ordering::Relaxed);
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    fn tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, Token>> {
        self.tokens.lock().expect("token table lock")
    }

    pub fn assign(&self, token: String, user: &str) {
        let deadline = self.clock.now() + self.ttl();
        self.tokens().insert(
            token,
            Token {
                user: user.to_string(),
                deadline,
            },
        );
    }

    /// The token's user; a use restarts its TTL, as etcd's `simpleTokenTTLKeeper` does.
    pub fn user(&self, token: &str) -> Option<String> {
        let now = self.clock.now();
        let mut tokens = self.tokens();
        let t = tokens.get_mut(token)?;
        if t.deadline <= now {
            tokens.remove(token);
            return None;
        }
        t.deadline = now + self.ttl();
        Some(t.user.clone())
    }

    /// Forgets the user's tokens (its password changed or it was deleted).
    pub fn invalidate_user(&self, user: &str) {
        self.tokens().retain(|_, t| t.user != user);
    }

    pub fn clear(&self) {
        self.tokens().clear();
    }
}

/// A fresh token prefix: 16 random letters, as etcd's `genTokenPrefix`.
pub fn gen_prefix() -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::rng();
    (0..16)
        .map(|_| LETTERS[rng.random_range(0..LETTERS.len())] as char)
        .collect()
}

/// The log index a token was issued at, if it is a well-formed simple token.
pub fn token_index(token: &str) -> Option<u64> {
    let (prefix, index) = token.split_once('.')?;
    if prefix.is_empty() || index.contains('.') {
        return None;
    }
    index.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn tokens_expire_unless_used_and_die_with_their_user() {
        let clock = Arc::new(ManualClock::default());
        let store = TokenStore::new(Duration::from_secs(10), clock.clone());
        store.assign("a.1".into(), "alice");
        store.assign("b.2".into(), "bob");
        clock.advance(Duration::from_secs(6));
        assert_eq!(store.user("a.1").as_deref(), Some("alice"));
        clock.advance(Duration::from_secs(6));
        assert_eq!(store.user("a.1").as_deref(), Some("alice"), "use renews");
        assert_eq!(store.user("b.2"), None, "unused for the TTL");
        store.invalidate_user("alice");
        assert_eq!(store.user("a.1"), None);
    }

    #[test]
    fn token_index_parses_only_simple_tokens() {
        let cases = [
            ("abc.12", Some(12)),
            ("abc", None),
            (".12", None),
            ("abc.x", None),
            ("a.b.3", None),
        ];
        for (t, want) in cases {
            assert_eq!(token_index(t), want, "{t}");
        }
        assert_eq!(gen_prefix().len(), 16);
    }
}
