//! JWT auth tokens: etcd 3.4's `--auth-token jwt,...` (`auth/jwt.go`, `auth/options.go`).
//!
//! A JWT names its user and the auth revision it was issued at, and is signed, so any
//! member holding the verification key accepts it without having seen it issued: nothing
//! about a token is kept in memory or in the log. A token issued before a later auth change
//! carries the older revision and is refused by the permission check
//! ([`super::AuthError::OldRevision`]), which is how etcd retires JWTs early; a read also
//! refuses a revision the store has not reached (etcd's `doSerialize`).
//!
//! # Flag
//!
//! `jwt,sign-method=<alg>,pub-key=<path>,priv-key=<path>,ttl=<Go duration>` (etcd's option
//! names). `ttl` defaults to 5m. An unknown option is logged and ignored, as etcd 3.4 does.
//! `RS*`, `PS*` and `ES*` need at least one of the keys: with only `pub-key` the member
//! verifies tokens but cannot issue them (Authenticate answers etcd's verify-only error);
//! with both, they must be one pair. `HS*` use the bytes of the `priv-key` file as the
//! shared secret.
//!
//! # Wire format
//!
//! RFC 7519's compact form, three unpadded base64url segments joined by `.`:
//!
//! ```text
//! base64url({"alg":"<sign-method>","typ":"JWT"})
//! . base64url({"exp":<unix seconds>,"revision":<auth revision>,"username":"<user>"})
//! . base64url(<signature over the first two segments, as ASCII>)
//! ```
//!
//! byte for byte what etcd writes (Go's JSON encoder sorts map keys; it also escapes `<`,
//! `>` and `&` in a user name, which raftkv writes as is). The signature is
//! RSASSA-PKCS1-v1_5 (`RS*`), RSASSA-PSS with a salt as long as the hash (`PS*`, as etcd
//! 3.4's jwt-go signs), ECDSA as fixed-width `r || s` (`ES*`) or HMAC (`HS*`). A token is
//! accepted when its `alg` is the configured method, the signature verifies, and `exp` (and
//! `nbf`, `iat` if present) hold at the current wall-clock second (`exp` 0 never expires).
//!
//! # Crypto
//!
//! `ring`: RSA keys of 2048 to 4096 bits for signing (up to 8192 to verify), P-256 (ES256)
//! and P-384 (ES384). ES512 (P-521) is refused at startup: ring has no P-521.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair};
use rustls_pki_types::pem::{PemObject, SectionKind};
use serde_json::Value;

use super::AuthInfo;
use crate::clock::Clock;
use crate::config::parse_duration;

/// etcd's option names (`auth/options.go`).
pub const OPT_SIGN_METHOD: &str = "sign-method";
pub const OPT_PUBLIC_KEY: &str = "pub-key";
pub const OPT_PRIVATE_KEY: &str = "priv-key";
pub const OPT_TTL: &str = "ttl";
const KNOWN_OPTIONS: [&str; 4] = [OPT_SIGN_METHOD, OPT_PUBLIC_KEY, OPT_PRIVATE_KEY, OPT_TTL];

/// etcd's `DefaultTTL`, used when no `ttl` option is given.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);

/// Why a JWT configuration was refused. The messages are etcd's (`auth/store.go`, jwt-go's
/// key parsing), with what etcd only logs added in parentheses.
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    /// A bad `ttl`, an unreadable key file or an unknown `sign-method` (etcd's
    /// `ErrInvalidAuthOpts`, after logging "problem loading JWT options").
    #[error("auth: invalid auth options ({0})")]
    InvalidOpts(String),
    #[error("auth: missing key data")]
    MissingKey,
    #[error("auth: public and private keys don't match")]
    KeyMismatch,
    /// The key file is not a key of the method's kind.
    #[error("{0}")]
    Key(String),
    /// A method etcd knows and raftkv cannot do.
    #[error("auth: sign-method {0} is not supported by raftkv (ring has no P-521 curve)")]
    Unsupported(String),
}

/// Why Authenticate could not sign a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// Etcd's `ErrVerifyOnly`: this member was given only the public key.
    #[error("auth: token signing attempted with verify-only key")]
    VerifyOnly,
    #[error("auth: signing the JWT failed")]
    Crypto,
}

/// Why a token was refused (logged; the client sees etcd's "invalid auth token").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("token contains an invalid number of segments")]
    Segments,
    #[error("malformed segment: {0}")]
    Malformed(&'static str),
    #[error("signing method {0:?} is not the configured one")]
    Method(String),
    #[error("token is expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYet,
    #[error("signature is invalid")]
    Signature,
    #[error("claims lack a string username or a numeric revision")]
    Claims,
}

/// The signing methods etcd 3.4 accepts (jwt-go's registry), by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    Hs256,
    Hs384,
    Hs512,
}

/// How a method signs and verifies, in ring's terms.
enum Family {
    Rsa {
        sign: &'static dyn signature::RsaEncoding,
        verify: &'static signature::RsaParameters,
    },
    Ecdsa {
        sign: &'static signature::EcdsaSigningAlgorithm,
        verify: &'static signature::EcdsaVerificationAlgorithm,
        /// The named curve's OID components, as SPKI parameters carry it.
        curve: &'static [u64],
    },
    Hmac(hmac::Algorithm),
}

const P256: &[u64] = &[1, 2, 840, 10045, 3, 1, 7];
const P384: &[u64] = &[1, 3, 132, 0, 34];
const RSA_ENCRYPTION: &[u64] = &[1, 2, 840, 113549, 1, 1, 1];
const EC_PUBLIC_KEY: &[u64] = &[1, 2, 840, 10045, 2, 1];

impl Method {
    pub const ALL: [Method; 11] = [
        Method::Rs256,
        Method::Rs384,
        Method::Rs512,
        Method::Ps256,
        Method::Ps384,
        Method::Ps512,
        Method::Es256,
        Method::Es384,
        Method::Hs256,
        Method::Hs384,
        Method::Hs512,
    ];

    pub fn name(self) -> &'static str {
        use Method::*;
        match self {
            Rs256 => "RS256",
            Rs384 => "RS384",
            Rs512 => "RS512",
            Ps256 => "PS256",
            Ps384 => "PS384",
            Ps512 => "PS512",
            Es256 => "ES256",
            Es384 => "ES384",
            Hs256 => "HS256",
            Hs384 => "HS384",
            Hs512 => "HS512",
        }
    }

    /// The method `name` means, as jwt-go's `GetSigningMethod` (case-sensitive).
    pub fn from_name(name: &str) -> Result<Method, JwtConfigError> {
        if name == "ES512" {
            return Err(JwtConfigError::Unsupported(name.into()));
        }
        Method::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| {
                JwtConfigError::InvalidOpts("auth: invalid auth signature method".into())
            })
    }

    fn family(self) -> Family {
        use signature as s;
        use Method::*;
        let rsa = |sign: &'static dyn s::RsaEncoding, verify| Family::Rsa { sign, verify };
        match self {
            Rs256 => rsa(&s::RSA_PKCS1_SHA256, &s::RSA_PKCS1_2048_8192_SHA256),
            Rs384 => rsa(&s::RSA_PKCS1_SHA384, &s::RSA_PKCS1_2048_8192_SHA384),
            Rs512 => rsa(&s::RSA_PKCS1_SHA512, &s::RSA_PKCS1_2048_8192_SHA512),
            Ps256 => rsa(&s::RSA_PSS_SHA256, &s::RSA_PSS_2048_8192_SHA256),
            Ps384 => rsa(&s::RSA_PSS_SHA384, &s::RSA_PSS_2048_8192_SHA384),
            Ps512 => rsa(&s::RSA_PSS_SHA512, &s::RSA_PSS_2048_8192_SHA512),
            Es256 => Family::Ecdsa {
                sign: &s::ECDSA_P256_SHA256_FIXED_SIGNING,
                verify: &s::ECDSA_P256_SHA256_FIXED,
                curve: P256,
            },
            Es384 => Family::Ecdsa {
                sign: &s::ECDSA_P384_SHA384_FIXED_SIGNING,
                verify: &s::ECDSA_P384_SHA384_FIXED,
                curve: P384,
            },
            Hs256 => Family::Hmac(hmac::HMAC_SHA256),
            Hs384 => Family::Hmac(hmac::HMAC_SHA384),
            Hs512 => Family::Hmac(hmac::HMAC_SHA512),
        }
    }
}

enum Signer {
    Rsa(signature::RsaKeyPair, &'static dyn signature::RsaEncoding),
    Ecdsa(signature::EcdsaKeyPair),
    Hmac(hmac::Key),
}

enum Verifier {
    Public(signature::UnparsedPublicKey<Vec<u8>>),
    Hmac(hmac::Key),
}

impl Verifier {
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match self {
            Verifier::Public(k) => k.verify(msg, sig).is_ok(),
            Verifier::Hmac(k) => hmac::verify(k, msg, sig).is_ok(),
        }
    }
}

/// Issues and checks JWTs (etcd's `tokenJWT`).
pub struct JwtProvider {
    method: Method,
    /// `None`: verify-only (no private key given).
    signer: Option<Signer>,
    verifier: Verifier,
    ttl: Duration,
    clock: Arc<dyn Clock>,
    rng: SystemRandom,
}

impl std::fmt::Debug for JwtProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtProvider")
            .field("method", &self.method)
            .field("verify_only", &self.signer.is_none())
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// The claims etcd signs, in the order Go writes them.
#[derive(serde::Serialize)]
struct Claims<'a> {
    exp: i64,
    revision: u64,
    username: &'a str,
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
    }
}

/// jwt-go's `DecodeSegment`: base64url, padding optional.
fn decode_segment(seg: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(seg.trim_end_matches('=')).ok()
}

impl JwtProvider {
    /// etcd's `newTokenProviderJWT` over the options of the `--auth-token` flag.
    pub fn new(
        opts: &BTreeMap<String, String>,
        clock: Arc<dyn Clock>,
    ) -> Result<JwtProvider, JwtConfigError> {
        let opt = |k: &str| opts.get(k).map(String::as_str).filter(|v| !v.is_empty());
        // etcd's `jwtOptions.Parse`, in its order: ttl, key files, then the method.
        let ttl = match opt(OPT_TTL) {
            Some(v) => parse_duration(v).map_err(JwtConfigError::InvalidOpts)?,
            None => DEFAULT_TTL,
        };
        let read = |k: &str| -> Result<Option<Vec<u8>>, JwtConfigError> {
            opt(k)
                .map(|path| {
                    std::fs::read(path)
                        .map_err(|e| JwtConfigError::InvalidOpts(format!("open {path}: {e}")))
                })
                .transpose()
        };
        // An empty file counts as not given, as in etcd.
        let public = read(OPT_PUBLIC_KEY)?.filter(|k| !k.is_empty());
        let private = read(OPT_PRIVATE_KEY)?.filter(|k| !k.is_empty());
        let method = Method::from_name(opt(OPT_SIGN_METHOD).unwrap_or(""))?;
        let unknown: Vec<&str> = opts
            .keys()
            .map(String::as_str)
            .filter(|k| !KNOWN_OPTIONS.contains(k))
            .collect();
        if !unknown.is_empty() {
            tracing::warn!(keys = ?unknown, "unknown JWT options");
        }
        let rng = SystemRandom::new();
        let (signer, verifier) = keys(method, public.as_deref(), private.as_deref(), &rng)?;
        Ok(JwtProvider {
            method,
            signer,
            verifier,
            ttl,
            clock,
            rng,
        })
    }

    pub fn method(&self) -> Method {
        self.method
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether this member can only verify (etcd's `verifyOnly`).
    pub fn verify_only(&self) -> bool {
        self.signer.is_none()
    }

    /// A token for `username` at auth revision `revision`, valid for the TTL from now
    /// (etcd's `tokenJWT.assign`).
    pub fn assign(&self, username: &str, revision: u64) -> Result<String, SignError> {
        let signer = self.signer.as_ref().ok_or(SignError::VerifyOnly)?;
        let claims = Claims {
            exp: unix_seconds(self.clock.wall() + self.ttl),
            revision,
            username,
        };
        let header = format!(r#"{{"alg":"{}","typ":"JWT"}}"#, self.method.name());
        let claims = serde_json::to_vec(&claims).map_err(|_| SignError::Crypto)?;
        let mut token = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let sig = match signer {
            Signer::Rsa(key, encoding) => {
                let mut sig = vec![0; key.public().modulus_len()];
                key.sign(*encoding, &self.rng, token.as_bytes(), &mut sig)
                    .map_err(|_| SignError::Crypto)?;
                sig
            }
            Signer::Ecdsa(key) => key
                .sign(&self.rng, token.as_bytes())
                .map_err(|_| SignError::Crypto)?
                .as_ref()
                .to_vec(),
            Signer::Hmac(key) => hmac::sign(key, token.as_bytes()).as_ref().to_vec(),
        };
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(sig));
        Ok(token)
    }

    /// Who `token` names and the auth revision it was issued at (etcd's `tokenJWT.info`).
    pub fn info(&self, token: &str) -> Result<AuthInfo, VerifyError> {
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VerifyError::Segments);
        };
        let json = |seg: &str, what| -> Result<serde_json::Map<String, Value>, VerifyError> {
            let bytes = decode_segment(seg).ok_or(VerifyError::Malformed(what))?;
            serde_json::from_slice(&bytes).map_err(|_| VerifyError::Malformed(what))
        };
        let alg = json(header, "header")?
            .get("alg")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_default();
        if alg != self.method.name() {
            return Err(VerifyError::Method(alg));
        }
        let signed = &token[..header.len() + 1 + claims.len()];
        let claims = json(claims, "claims")?;
        let sig = decode_segment(sig).ok_or(VerifyError::Malformed("signature"))?;
        if !self.verifier.verify(signed.as_bytes(), &sig) {
            return Err(VerifyError::Signature);
        }
        // jwt-go's MapClaims.Valid: numeric time claims only; 0 means unset.
        let now = unix_seconds(self.clock.wall());
        let time = |k: &str| {
            claims
                .get(k)
                .and_then(Value::as_f64)
                .map(|v| v as i64)
                .filter(|&v| v != 0)
        };
        if time("exp").is_some_and(|exp| now > exp) {
            return Err(VerifyError::Expired);
        }
        if time("iat").is_some_and(|iat| now < iat) || time("nbf").is_some_and(|nbf| now < nbf) {
            return Err(VerifyError::NotYet);
        }
        match (
            claims.get("username").and_then(Value::as_str),
            claims.get("revision").and_then(Value::as_f64),
        ) {
            (Some(username), Some(revision)) => Ok(AuthInfo {
                username: username.to_string(),
                // Go converts the float64 it decoded the same way.
                revision: revision as u64,
            }),
            _ => Err(VerifyError::Claims),
        }
    }
}

/// The signing key (if a private key was given) and the verification key for `method`
/// (etcd's `jwtOptions.Key`). With both keys, tokens are verified with the private key's
/// public half, as etcd does, and the given public key must be that half.
fn keys(
    method: Method,
    public: Option<&[u8]>,
    private: Option<&[u8]>,
    rng: &SystemRandom,
) -> Result<(Option<Signer>, Verifier), JwtConfigError> {
    match method.family() {
        Family::Hmac(alg) => {
            let key = hmac::Key::new(alg, private.ok_or(JwtConfigError::MissingKey)?);
            Ok((Some(Signer::Hmac(key.clone())), Verifier::Hmac(key)))
        }
        Family::Rsa { sign, verify } => {
            let signer = private.map(rsa_private_key).transpose()?;
            let public = public.map(rsa_public_key).transpose()?;
            let (signer, public) = pair(signer, public, |k| k.public().as_ref().to_vec())?;
            Ok((
                signer.map(|k| Signer::Rsa(k, sign)),
                Verifier::Public(signature::UnparsedPublicKey::new(verify, public)),
            ))
        }
        Family::Ecdsa {
            sign,
            verify,
            curve,
        } => {
            let signer = private
                .map(|pem| ec_private_key(pem, sign, rng))
                .transpose()?;
            let public = public.map(|pem| ec_public_key(pem, curve)).transpose()?;
            let (signer, public) = pair(signer, public, |k| k.public_key().as_ref().to_vec())?;
            Ok((
                signer.map(Signer::Ecdsa),
                Verifier::Public(signature::UnparsedPublicKey::new(verify, public)),
            ))
        }
    }
}

/// The signing key and the public key to verify with, from what was given.
fn pair<K>(
    signer: Option<K>,
    public: Option<Vec<u8>>,
    public_of: impl Fn(&K) -> Vec<u8>,
) -> Result<(Option<K>, Vec<u8>), JwtConfigError> {
    match (signer, public) {
        (None, None) => Err(JwtConfigError::MissingKey),
        (None, Some(public)) => Ok((None, public)),
        (Some(k), given) => {
            let own = public_of(&k);
            // etcd means to refuse a mismatch but its check never fires (it needs both the
            // modulus and the exponent to differ); a pair that cannot verify its own
            // tokens is refused here.
            if given.is_some_and(|g| g != own) {
                return Err(JwtConfigError::KeyMismatch);
            }
            Ok((Some(k), own))
        }
    }
}

/// The DER of the first PEM section Go's `pem.Decode` would find (raftkv skips sections
/// of kinds it does not know, such as `EC PARAMETERS`).
fn first_pem(pem: &[u8]) -> Result<Vec<u8>, JwtConfigError> {
    match <(SectionKind, Vec<u8>)>::pem_slice_iter(pem).next() {
        Some(Ok((_, der))) => Ok(der),
        _ => Err(JwtConfigError::Key(
            "invalid key: Key must be a PEM encoded PKCS1 or PKCS8 key".into(),
        )),
    }
}

fn rsa_private_key(pem: &[u8]) -> Result<signature::RsaKeyPair, JwtConfigError> {
    let der = first_pem(pem)?;
    // jwt-go tries PKCS #1, then PKCS #8.
    signature::RsaKeyPair::from_der(&der)
        .or_else(|_| signature::RsaKeyPair::from_pkcs8(&der))
        .map_err(|e| {
            JwtConfigError::Key(format!(
                "key is not a valid RSA private key ({e}; 2048 to 4096 bits)"
            ))
        })
}

fn rsa_public_key(pem: &[u8]) -> Result<Vec<u8>, JwtConfigError> {
    let bad = |why: &str| JwtConfigError::Key(format!("key is not a valid RSA public key{why}"));
    let spki = spki(&first_pem(pem)?).ok_or_else(|| bad(""))?;
    if spki.algorithm != RSA_ENCRYPTION {
        return Err(bad(""));
    }
    // ring verifies RSA signatures from 2048-bit keys up; say so now rather than refuse
    // every token later.
    let modulus_bits = yasna::parse_der(&spki.key, |r| {
        r.read_sequence(|r| {
            let (n, _) = r.next().read_bigint_bytes()?;
            r.next().read_der()?;
            Ok(n)
        })
    })
    .map(|n| {
        let n: &[u8] = n.strip_prefix(&[0]).unwrap_or(&n);
        n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize)
    })
    .map_err(|_| bad(""))?;
    if !(2048..=8192).contains(&modulus_bits) {
        return Err(bad(&format!(
            " ({modulus_bits} bits; 2048 to 8192 supported)"
        )));
    }
    Ok(spki.key)
}

fn ec_private_key(
    pem: &[u8],
    alg: &'static signature::EcdsaSigningAlgorithm,
    rng: &SystemRandom,
) -> Result<signature::EcdsaKeyPair, JwtConfigError> {
    let der = first_pem(pem)?;
    // jwt-go tries SEC 1 (`EC PRIVATE KEY`), then PKCS #8. ring reads SEC 1 only as its
    // parts, and needs the public key the file carries alongside.
    let sec1 = yasna::parse_der(&der, |r| {
        r.read_sequence(|r| {
            r.next().read_u8()?;
            let private = r.next().read_bytes()?;
            r.read_optional(|r| r.read_tagged(yasna::Tag::context(0), |r| r.read_der()))?;
            let public = r.read_optional(|r| {
                r.read_tagged(yasna::Tag::context(1), |r| r.read_bitvec_bytes())
            })?;
            Ok((private, public.map(|(bits, _)| bits)))
        })
    });
    let key = match sec1 {
        Ok((private, Some(public))) => {
            signature::EcdsaKeyPair::from_private_key_and_public_key(alg, &private, &public, rng)
        }
        _ => signature::EcdsaKeyPair::from_pkcs8(alg, &der, rng),
    };
    key.map_err(|e| {
        JwtConfigError::Key(format!(
            "key is not a valid ECDSA private key ({e}; the curve must match the sign-method)"
        ))
    })
}

fn ec_public_key(pem: &[u8], curve: &[u64]) -> Result<Vec<u8>, JwtConfigError> {
    let spki = spki(&first_pem(pem)?).filter(|s| s.algorithm == EC_PUBLIC_KEY);
    let spki =
        spki.ok_or_else(|| JwtConfigError::Key("key is not a valid ECDSA public key".into()))?;
    let named = spki
        .parameters
        .as_deref()
        .and_then(|p| yasna::parse_der(p, |r| r.read_oid()).ok());
    if named.as_ref().map(|o| o.components().as_slice()) != Some(curve) {
        return Err(JwtConfigError::Key(
            "key is not a valid ECDSA public key (the curve must match the sign-method)".into(),
        ));
    }
    Ok(spki.key)
}

/// A SubjectPublicKeyInfo: the algorithm OID, its raw parameters and the key bits.
struct Spki {
    algorithm: Vec<u64>,
    parameters: Option<Vec<u8>>,
    key: Vec<u8>,
}

/// The SubjectPublicKeyInfo `der` is, or the one of the certificate `der` is (jwt-go takes
/// both: `x509.ParsePKIXPublicKey`, then `x509.ParseCertificate`).
fn spki(der: &[u8]) -> Option<Spki> {
    fn read(r: yasna::BERReader) -> yasna::ASN1Result<Spki> {
        r.read_sequence(|r| {
            let (algorithm, parameters) = r.next().read_sequence(|r| {
                let oid = r.next().read_oid()?;
                let params = r.read_optional(|r| r.read_der())?;
                Ok((oid.components().clone(), params))
            })?;
            let (key, _) = r.next().read_bitvec_bytes()?;
            Ok(Spki {
                algorithm,
                parameters,
                key,
            })
        })
    }
    if let Ok(s) = yasna::parse_der(der, read) {
        return Some(s);
    }
    // Certificate = SEQUENCE { tbsCertificate = SEQUENCE { [0] version OPTIONAL,
    // serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, ... }, ... }
    yasna::parse_der(der, |r| {
        r.read_sequence(|r| {
            let spki = r.next().read_sequence(|r| {
                r.read_optional(|r| r.read_tagged(yasna::Tag::context(0), |r| r.read_der()))?;
                for _ in 0..5 {
                    r.next().read_der()?;
                }
                let spki = read(r.next())?;
                while r.read_optional(|r| r.read_der())?.is_some() {}
                Ok(spki)
            })?;
            while r.read_optional(|r| r.read_der())?.is_some() {}
            Ok(spki)
        })
    })
    .ok()
}

#[cfg(test)]
mod tests;
