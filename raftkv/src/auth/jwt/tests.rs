//! Keys are made per run with the `openssl` CLI (ring cannot generate RSA keys), in the
//! formats etcd deployments use: PKCS #8 and PKCS #1 RSA, PKCS #8 and SEC 1 EC, SPKI public
//! keys and a self-signed certificate as a public key.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::clock::ManualClock;

struct Fixture {
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running the openssl CLI (it makes the test keys)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for (name, alg, opt) in [
            ("rsa", "RSA", "rsa_keygen_bits:2048"),
            ("rsa-other", "RSA", "rsa_keygen_bits:2048"),
            ("rsa1024", "RSA", "rsa_keygen_bits:1024"),
            ("ec256", "EC", "ec_paramgen_curve:P-256"),
            ("ec256-other", "EC", "ec_paramgen_curve:P-256"),
            ("ec384", "EC", "ec_paramgen_curve:P-384"),
            ("ec384-other", "EC", "ec_paramgen_curve:P-384"),
            ("ec521", "EC", "ec_paramgen_curve:P-521"),
        ] {
            let key = format!("{name}.key");
            let public = format!("{name}.pub");
            openssl(
                d,
                &["genpkey", "-algorithm", alg, "-pkeyopt", opt, "-out", &key],
            );
            openssl(d, &["pkey", "-in", &key, "-pubout", "-out", &public]);
        }
        openssl(
            d,
            &[
                "rsa",
                "-in",
                "rsa.key",
                "-traditional",
                "-out",
                "rsa-pkcs1.key",
            ],
        );
        openssl(d, &["ec", "-in", "ec256.key", "-out", "ec256-sec1.key"]);
        openssl(
            d,
            &[
                "req", "-x509", "-key", "rsa.key", "-subj", "/CN=jwt", "-days", "1", "-out",
                "rsa.crt",
            ],
        );
        std::fs::write(d.join("hs.key"), b"a shared secret\n").expect("writing hs.key");
        std::fs::write(d.join("hs-other.key"), b"another secret\n").expect("writing");
        std::fs::write(d.join("garbage.pem"), b"not a pem file").expect("writing");
        Fixture { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `--auth-token jwt,...` options; key file names are the fixture's.
    fn opts(&self, opts: &[(&str, &str)]) -> BTreeMap<String, String> {
        opts.iter()
            .map(|(k, v)| {
                let v = match *k {
                    OPT_PUBLIC_KEY | OPT_PRIVATE_KEY => self.path(v).display().to_string(),
                    _ => v.to_string(),
                };
                (k.to_string(), v)
            })
            .collect()
    }

    fn provider(
        &self,
        opts: &[(&str, &str)],
        clock: &Arc<ManualClock>,
    ) -> Result<JwtProvider, JwtConfigError> {
        JwtProvider::new(&self.opts(opts), clock.clone())
    }
}

fn segment(token: &str, i: usize) -> Value {
    let seg = token.split('.').nth(i).expect("segment");
    serde_json::from_slice(&decode_segment(seg).expect("base64url")).expect("json")
}

/// (method, signing key, its public key, another key pair's public key)
const PAIRS: &[(&str, &str, &str, &str)] = &[
    ("RS256", "rsa.key", "rsa.pub", "rsa-other.pub"),
    ("RS384", "rsa-pkcs1.key", "rsa.crt", "rsa-other.pub"),
    ("RS512", "rsa.key", "rsa.pub", "rsa-other.pub"),
    ("PS256", "rsa.key", "rsa.pub", "rsa-other.pub"),
    ("PS384", "rsa.key", "rsa.pub", "rsa-other.pub"),
    ("PS512", "rsa.key", "rsa.pub", "rsa-other.pub"),
    ("ES256", "ec256.key", "ec256.pub", "ec256-other.pub"),
    ("ES256", "ec256-sec1.key", "ec256.pub", "ec256-other.pub"),
    ("ES384", "ec384.key", "ec384.pub", "ec384-other.pub"),
];

#[test]
fn every_method_signs_and_verifies_with_etcds_claims() {
    let f = Fixture::new();
    let clock = Arc::new(ManualClock::default());
    let mut cases: Vec<(&str, &str, Option<&str>)> =
        PAIRS.iter().map(|&(m, k, p, _)| (m, k, Some(p))).collect();
    cases.extend([
        ("HS256", "hs.key", None),
        ("HS384", "hs.key", None),
        ("HS512", "hs.key", None),
    ]);
    for (method, key, public) in cases {
        let mut opts = vec![(OPT_SIGN_METHOD, method), (OPT_PRIVATE_KEY, key)];
        opts.extend(public.map(|p| (OPT_PUBLIC_KEY, p)));
        let signer = f
            .provider(&opts, &clock)
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        assert!(!signer.verify_only());
        let token = signer.assign("alice", 7).expect(method);
        let want = AuthInfo {
            username: "alice".into(),
            revision: 7,
        };
        assert_eq!(signer.info(&token), Ok(want.clone()), "{method} {key}");
        assert_eq!(
            segment(&token, 0),
            serde_json::json!({"alg": method, "typ": "JWT"})
        );
        let exp = unix_seconds(clock.wall() + DEFAULT_TTL);
        assert_eq!(
            segment(&token, 1),
            serde_json::json!({"exp": exp, "revision": 7, "username": "alice"})
        );
        // Etcd's member order of the claims, so tokens are byte-compatible.
        let claims = decode_segment(token.split('.').nth(1).unwrap()).unwrap();
        assert!(claims.starts_with(b"{\"exp\":"), "{method}");
        if let Some(public) = public {
            let verifier = f
                .provider(
                    &[(OPT_SIGN_METHOD, method), (OPT_PUBLIC_KEY, public)],
                    &clock,
                )
                .unwrap_or_else(|e| panic!("{method} verify-only: {e}"));
            assert!(verifier.verify_only());
            assert_eq!(verifier.info(&token), Ok(want), "{method} verify-only");
            assert_eq!(verifier.assign("alice", 7), Err(SignError::VerifyOnly));
        }
    }
}

#[test]
fn bad_tokens_are_refused() {
    let f = Fixture::new();
    let clock = Arc::new(ManualClock::default());
    for &(method, key, _, other) in PAIRS {
        let signer = f
            .provider(&[(OPT_SIGN_METHOD, method), (OPT_PRIVATE_KEY, key)], &clock)
            .expect(method);
        let token = signer.assign("alice", 3).expect(method);
        let parts: Vec<&str> = token.split('.').collect();
        let forged_claims = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"exp":{},"revision":3,"username":"root"}}"#,
            unix_seconds(clock.wall()) + 60
        ));
        let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let wrong = f
            .provider(
                &[(OPT_SIGN_METHOD, method), (OPT_PUBLIC_KEY, other)],
                &clock,
            )
            .expect(method);
        let other_method = if method.starts_with("RS") {
            "PS256"
        } else {
            "RS256"
        };
        let other_alg = f
            .provider(
                &[(OPT_SIGN_METHOD, other_method), (OPT_PUBLIC_KEY, "rsa.pub")],
                &clock,
            )
            .expect(other_method);
        // (what, verifier, token, expected refusal)
        let cases: Vec<(&str, &JwtProvider, String, VerifyError)> = vec![
            (
                "another key pair",
                &wrong,
                token.clone(),
                VerifyError::Signature,
            ),
            (
                "another method",
                &other_alg,
                token.clone(),
                VerifyError::Method(method.into()),
            ),
            (
                "forged claims",
                &signer,
                format!("{}.{forged_claims}.{}", parts[0], parts[2]),
                VerifyError::Signature,
            ),
            (
                "alg none",
                &signer,
                format!("{none_header}.{forged_claims}."),
                VerifyError::Method("none".into()),
            ),
            (
                "cut signature",
                &signer,
                format!("{}.{}.{}", parts[0], parts[1], &parts[2][..12]),
                VerifyError::Signature,
            ),
            (
                "two segments",
                &signer,
                format!("{}.{}", parts[0], parts[1]),
                VerifyError::Segments,
            ),
            (
                "four segments",
                &signer,
                format!("{token}.x"),
                VerifyError::Segments,
            ),
            (
                "not base64",
                &signer,
                format!("{}.{}.{}", parts[0], "!!!", parts[2]),
                VerifyError::Malformed("claims"),
            ),
            (
                "a simple token",
                &signer,
                "abc.12".into(),
                VerifyError::Segments,
            ),
        ];
        for (what, verifier, token, want) in cases {
            assert_eq!(verifier.info(&token), Err(want), "{method} {key}: {what}");
        }
        // Valid through the second `exp` names, refused from the next (jwt-go's `now <= exp`).
        clock.advance(DEFAULT_TTL);
        assert!(signer.info(&token).is_ok(), "{method}: at exp");
        clock.advance(Duration::from_secs(1));
        assert_eq!(signer.info(&token), Err(VerifyError::Expired), "{method}");
    }
}

#[test]
fn options_are_checked_as_etcd_does() {
    let f = Fixture::new();
    let clock = Arc::new(ManualClock::default());
    type Check = fn(&Result<JwtProvider, JwtConfigError>) -> bool;
    let invalid: Check = |r| matches!(r, Err(JwtConfigError::InvalidOpts(_)));
    let missing: Check = |r| matches!(r, Err(JwtConfigError::MissingKey));
    let mismatch: Check = |r| matches!(r, Err(JwtConfigError::KeyMismatch));
    let bad_key: Check = |r| matches!(r, Err(JwtConfigError::Key(_)));
    let unsupported: Check = |r| matches!(r, Err(JwtConfigError::Unsupported(_)));
    let ok: Check = |r| r.is_ok();
    let rs = (OPT_SIGN_METHOD, "RS256");
    type Opts<'a> = Vec<(&'a str, &'a str)>;
    let cases: Vec<(&str, Opts, Check)> = vec![
        ("no sign-method", vec![(OPT_PUBLIC_KEY, "rsa.pub")], invalid),
        (
            "empty sign-method",
            vec![(OPT_SIGN_METHOD, ""), (OPT_PUBLIC_KEY, "rsa.pub")],
            invalid,
        ),
        (
            "lower-case method",
            vec![(OPT_SIGN_METHOD, "rs256"), (OPT_PUBLIC_KEY, "rsa.pub")],
            invalid,
        ),
        (
            "method none",
            vec![(OPT_SIGN_METHOD, "none"), (OPT_PUBLIC_KEY, "rsa.pub")],
            invalid,
        ),
        (
            "bad ttl",
            vec![rs, (OPT_PUBLIC_KEY, "rsa.pub"), (OPT_TTL, "abc")],
            invalid,
        ),
        (
            "ttl without unit",
            vec![rs, (OPT_PUBLIC_KEY, "rsa.pub"), (OPT_TTL, "5")],
            invalid,
        ),
        (
            "missing key file",
            vec![rs, (OPT_PUBLIC_KEY, "nope.pub")],
            invalid,
        ),
        ("no key", vec![rs], missing),
        (
            "HMAC without priv-key",
            vec![(OPT_SIGN_METHOD, "HS256"), (OPT_PUBLIC_KEY, "hs.key")],
            missing,
        ),
        (
            "ES512",
            vec![(OPT_SIGN_METHOD, "ES512"), (OPT_PRIVATE_KEY, "ec521.key")],
            unsupported,
        ),
        (
            "EC public key for RS256",
            vec![rs, (OPT_PUBLIC_KEY, "ec256.pub")],
            bad_key,
        ),
        (
            "EC private key for RS256",
            vec![rs, (OPT_PRIVATE_KEY, "ec256.key")],
            bad_key,
        ),
        (
            "RSA key for ES256",
            vec![(OPT_SIGN_METHOD, "ES256"), (OPT_PRIVATE_KEY, "rsa.key")],
            bad_key,
        ),
        (
            "P-384 key for ES256",
            vec![(OPT_SIGN_METHOD, "ES256"), (OPT_PRIVATE_KEY, "ec384.key")],
            bad_key,
        ),
        (
            "P-384 public key for ES256",
            vec![(OPT_SIGN_METHOD, "ES256"), (OPT_PUBLIC_KEY, "ec384.pub")],
            bad_key,
        ),
        (
            "not PEM",
            vec![rs, (OPT_PUBLIC_KEY, "garbage.pem")],
            bad_key,
        ),
        (
            "1024-bit RSA",
            vec![rs, (OPT_PUBLIC_KEY, "rsa1024.pub")],
            bad_key,
        ),
        (
            "1024-bit RSA private",
            vec![rs, (OPT_PRIVATE_KEY, "rsa1024.key")],
            bad_key,
        ),
        (
            "keys of two pairs",
            vec![
                rs,
                (OPT_PRIVATE_KEY, "rsa.key"),
                (OPT_PUBLIC_KEY, "rsa-other.pub"),
            ],
            mismatch,
        ),
        (
            "EC keys of two pairs",
            vec![
                (OPT_SIGN_METHOD, "ES256"),
                (OPT_PRIVATE_KEY, "ec256.key"),
                (OPT_PUBLIC_KEY, "ec256-other.pub"),
            ],
            mismatch,
        ),
        (
            "unknown option",
            vec![rs, (OPT_PUBLIC_KEY, "rsa.pub"), ("bogus", "1")],
            ok,
        ),
        (
            "empty ttl",
            vec![rs, (OPT_PUBLIC_KEY, "rsa.pub"), (OPT_TTL, "")],
            ok,
        ),
        (
            "certificate as pub-key",
            vec![rs, (OPT_PUBLIC_KEY, "rsa.crt")],
            ok,
        ),
    ];
    for (what, opts, check) in cases {
        let got = f.provider(&opts, &clock);
        assert!(check(&got), "{what}: {got:?}");
    }
    // Etcd's messages, for the errors etcd names.
    let err = f.provider(&[rs], &clock).unwrap_err().to_string();
    assert_eq!(err, "auth: missing key data");
    let err = f
        .provider(&[rs, (OPT_PUBLIC_KEY, "rsa.pub"), (OPT_TTL, "abc")], &clock)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        r#"auth: invalid auth options (time: invalid duration "abc")"#
    );
    let err = f
        .provider(&[(OPT_PUBLIC_KEY, "rsa.pub")], &clock)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "auth: invalid auth options (auth: invalid auth signature method)"
    );
    let err = f
        .provider(&[rs, (OPT_PUBLIC_KEY, "ec256.pub")], &clock)
        .unwrap_err()
        .to_string();
    assert_eq!(err, "key is not a valid RSA public key");
    // ttl: 5m unless given, in Go's syntax.
    let ttl = |t: Option<&str>| {
        let mut opts = vec![rs, (OPT_PUBLIC_KEY, "rsa.pub")];
        opts.extend(t.map(|t| (OPT_TTL, t)));
        f.provider(&opts, &clock).expect("valid").ttl()
    };
    assert_eq!(ttl(None), Duration::from_secs(300));
    assert_eq!(ttl(Some("1h30m")), Duration::from_secs(5400));
    assert_eq!(ttl(Some("10s")), Duration::from_secs(10));
}

#[test]
fn a_short_ttl_is_the_tokens_lifetime() {
    let f = Fixture::new();
    let clock = Arc::new(ManualClock::default());
    let p = f
        .provider(
            &[
                (OPT_SIGN_METHOD, "HS256"),
                (OPT_PRIVATE_KEY, "hs.key"),
                (OPT_TTL, "10s"),
            ],
            &clock,
        )
        .expect("provider");
    let token = p.assign("u", 1).expect("token");
    clock.advance(Duration::from_secs(10));
    assert!(p.info(&token).is_ok());
    clock.advance(Duration::from_secs(1));
    assert_eq!(p.info(&token), Err(VerifyError::Expired));
    let other = f
        .provider(
            &[
                (OPT_SIGN_METHOD, "HS256"),
                (OPT_PRIVATE_KEY, "hs-other.key"),
            ],
            &clock,
        )
        .expect("provider");
    let token = other.assign("u", 1).expect("token");
    assert_eq!(
        p.info(&token),
        Err(VerifyError::Signature),
        "another secret"
    );
}

#[test]
fn claims_are_checked_as_jwt_go_does() {
    let f = Fixture::new();
    let clock = Arc::new(ManualClock::default());
    let p = f
        .provider(
            &[(OPT_SIGN_METHOD, "HS256"), (OPT_PRIVATE_KEY, "hs.key")],
            &clock,
        )
        .expect("provider");
    let secret = std::fs::read(f.path("hs.key")).expect("hs.key");
    let key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
    let sign = |claims: &str| {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"HS256","kid":"x"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let sig = URL_SAFE_NO_PAD.encode(hmac::sign(&key, signed.as_bytes()));
        format!("{signed}.{sig}")
    };
    let now = unix_seconds(clock.wall());
    let u = |revision| {
        Ok(AuthInfo {
            username: "u".into(),
            revision,
        })
    };
    // (claims, expected)
    let cases = [
        (r#"{"username":"u","revision":2}"#.to_string(), u(2)),
        (r#"{"username":"u","revision":2,"exp":0}"#.into(), u(2)),
        (
            r#"{"username":"u","revision":2.9,"exp":"soon"}"#.into(),
            u(2),
        ),
        (
            format!(r#"{{"username":"u","revision":2,"exp":{}}}"#, now - 1),
            Err(VerifyError::Expired),
        ),
        (
            format!(r#"{{"username":"u","revision":2,"iat":{}}}"#, now + 60),
            Err(VerifyError::NotYet),
        ),
        (
            format!(r#"{{"username":"u","revision":2,"nbf":{}}}"#, now + 60),
            Err(VerifyError::NotYet),
        ),
        (
            format!(r#"{{"username":"u","revision":2,"nbf":{now},"iat":{now}}}"#),
            u(2),
        ),
        (r#"{"revision":2}"#.into(), Err(VerifyError::Claims)),
        (
            r#"{"username":"u","revision":"2"}"#.into(),
            Err(VerifyError::Claims),
        ),
        (
            r#"{"username":7,"revision":2}"#.into(),
            Err(VerifyError::Claims),
        ),
        (r#"["u",2]"#.into(), Err(VerifyError::Malformed("claims"))),
    ];
    for (claims, want) in cases {
        assert_eq!(p.info(&sign(&claims)), want, "{claims}");
    }
}
