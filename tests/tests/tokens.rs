//! Token verification through the native engine: every rejection is a 401 with an RFC 6750
//! `invalid_token` challenge naming the reason; nothing that fails verification reaches Cedar.

// A helper that panics is a test failing with its message (clippy.toml allows it in #[test]s).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use tessera_core::store::MemoryStore;
use tessera_core::{Engine, HttpRequest, Verdict};
use tessera_tests::{mint, mint_typed, now_s, test_config, AGENTS};

fn engine() -> Engine {
    Engine::from_json(test_config().expect("config").to_string().as_bytes()).expect("compiles")
}

fn check(engine: &Engine, token: &str) -> (Verdict, u32, String) {
    check_with_clock(engine, token, now_s())
}

/// GET /orders/1 with the token, decided at `now`: verdict, status, `WWW-Authenticate`.
fn check_with_clock(engine: &Engine, token: &str, now: u64) -> (Verdict, u32, String) {
    let auth = format!("Bearer {token}");
    let req = HttpRequest {
        method: "GET",
        path: "/orders/1",
        host: "h",
        authorization: Some(&auth),
        request_id: "t",
        content_type: None,
        approval: None,
        repeated: None,
        mirrored: None,
        ..HttpRequest::default()
    };
    let d = engine.check(&req, &MemoryStore::new(), now);
    let status = d.reply.as_ref().map_or(200, |r| r.status);
    let www = d
        .reply
        .as_ref()
        .and_then(|r| {
            r.headers
                .iter()
                .find(|(k, _)| k == "www-authenticate")
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_default();
    (d.verdict, status, www)
}

fn reader() -> Value {
    json!({"iss": AGENTS, "sub": "agent-7", "scope": "orders:read"})
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn parts(token: &str) -> Vec<String> {
    token.split('.').map(str::to_string).collect()
}

fn assert_rejected(engine: &Engine, token: &str, words: &str) {
    let (verdict, status, www) = check(engine, token);
    assert_eq!((verdict, status), (Verdict::Unauthenticated, 401), "{www}");
    assert!(www.starts_with("Bearer error=\"invalid_token\""), "{www}");
    assert!(www.contains(words), "expected {words:?} in {www}");
}

#[test]
fn every_supported_algorithm_verifies() {
    let e = engine();
    for alg in [
        "EdDSA", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    ] {
        let t = mint(alg, &reader()).expect("mint");
        assert_eq!(check(&e, &t).1, 200, "{alg}");
    }
    let hs = mint(
        "HS256",
        &json!({"iss": "https://legacy.demo.tessera.dev", "sub": "bot", "scope": "orders:read"}),
    )
    .expect("mint");
    assert_eq!(check(&e, &hs).1, 200, "HS256 on the legacy issuer");
}

#[test]
fn alg_none_is_rejected() {
    let t = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&reader())
    );
    assert_rejected(&engine(), &t, "none");
    let t = format!("{}.{}.", b64(&json!({"alg": "nOnE"})), b64(&reader()));
    assert_rejected(&engine(), &t, "none");
}

#[test]
fn hs256_on_an_issuer_without_a_secret_is_rejected() {
    // The legacy issuer's HMAC secret does not make HS256 acceptable for other issuers.
    let t = mint("HS256", &reader()).expect("mint");
    assert_rejected(&engine(), &t, "algorithm");
}

#[test]
fn key_confusion_rsa_public_key_as_hmac_secret_is_rejected() {
    let pem =
        std::fs::read(tessera_tests::repo_root().join("tests/keys/rsa2048.pub.pem")).expect("pem");
    let key = jsonwebtoken::EncodingKey::from_secret(&pem);
    // Sign header.payload with HMAC-SHA256 keyed by the PEM, as the classic attack does.
    let signed = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some("demo-rs256".into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &json!({"iss": AGENTS, "sub": "x", "aud": "orders-api", "exp": now_s() + 60}),
        &key,
    )
    .expect("sign");
    assert_rejected(&engine(), &signed, "algorithm");
}

#[test]
fn a_tampered_payload_is_rejected() {
    let t = mint("ES256", &json!({"iss": AGENTS, "sub": "agent-7"})).expect("mint");
    let p = parts(&t);
    let forged = format!(
        "{}.{}.{}",
        p[0],
        b64(
            &json!({"iss": AGENTS, "sub": "agent-7", "aud": "orders-api", "exp": now_s() + 60, "scope": "orders:read"})
        ),
        p[2]
    );
    assert_rejected(&engine(), &forged, "signature");
}

#[test]
fn header_alg_must_match_the_kid_s_key() {
    // An RS256 token presented with the PS256 kid of the same RSA key.
    let t = mint("RS256", &reader()).expect("mint");
    let p = parts(&t);
    let header = b64(&json!({"alg": "RS256", "kid": "demo-ps256", "typ": "JWT"}));
    assert_rejected(
        &engine(),
        &format!("{header}.{}.{}", p[1], p[2]),
        "algorithm",
    );
}

#[test]
fn token_offered_keys_are_rejected() {
    let t = mint("EdDSA", &reader()).expect("mint");
    let p = parts(&t);
    for (name, value) in [
        ("jwk", json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"})),
        ("jku", json!("https://attacker.example/jwks")),
        ("x5u", json!("https://attacker.example/cert")),
        ("x5c", json!(["MIIB"])),
    ] {
        let mut h = json!({"alg": "EdDSA", "kid": "demo-ed25519"});
        h[name] = value;
        assert_rejected(
            &engine(),
            &format!("{}.{}.{}", b64(&h), p[1], p[2]),
            "header",
        );
    }
}

#[test]
fn unknown_kid_is_rejected() {
    let t = mint("EdDSA", &reader()).expect("mint");
    let p = parts(&t);
    let h = b64(&json!({"alg": "EdDSA", "kid": "rotated-away"}));
    assert_rejected(&engine(), &format!("{h}.{}.{}", p[1], p[2]), "kid");
}

#[test]
fn time_claims_are_enforced_with_skew() {
    let e = engine();
    let now = now_s();
    let mut c = reader();
    c["exp"] = json!(now - 120);
    c["iat"] = json!(now - 600);
    assert_rejected(&e, &mint("ES256", &c).expect("mint"), "expired");
    // Within the 60 s skew an expired token still passes, as in Envoy's jwt_authn.
    c["exp"] = json!(now - 30);
    assert_eq!(check(&e, &mint("ES256", &c).expect("mint")).1, 200);
    let mut c = reader();
    c["nbf"] = json!(now + 600);
    assert_rejected(&e, &mint("ES256", &c).expect("mint"), "not yet valid");
    let mut c = reader();
    c["iat"] = json!(now + 600);
    c["exp"] = json!(now + 900);
    assert_rejected(&e, &mint("ES256", &c).expect("mint"), "future");
    let mut c = reader();
    c["exp"] = Value::Null;
    assert_rejected(&e, &mint("ES256", &c).expect("mint"), "exp");
}

#[test]
fn wrong_issuer_and_audience_are_rejected() {
    let mut c = reader();
    c["iss"] = json!("https://evil.example");
    assert_rejected(&engine(), &mint("ES256", &c).expect("mint"), "issuer");
    let mut c = reader();
    c["aud"] = json!(["billing-api", "other"]);
    assert_rejected(&engine(), &mint("ES256", &c).expect("mint"), "audience");
    let mut c = reader();
    c["aud"] = json!(["billing-api", "orders-api"]);
    assert_eq!(
        check(&engine(), &mint("ES256", &c).expect("mint")).1,
        200,
        "one accepted audience is enough"
    );
}

#[test]
fn oversize_and_malformed_tokens_are_rejected() {
    let mut c = reader();
    c["padding"] = json!("x".repeat(9000));
    assert_rejected(&engine(), &mint("ES256", &c).expect("mint"), "too large");
    for bad in [
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.???.***",
        "eyJhbGciOiJFUzI1NiJ9.bm90IGpzb24.AAAA",
    ] {
        assert_rejected(&engine(), bad, "malformed");
    }
}

#[test]
fn missing_required_claim_is_rejected() {
    let mut c = reader();
    c["sub"] = Value::Null;
    assert_rejected(&engine(), &mint("ES256", &c).expect("mint"), "sub");
}

#[test]
fn a_bearer_scheme_is_required() {
    let e = engine();
    let req = HttpRequest {
        method: "GET",
        path: "/orders",
        host: "h",
        authorization: Some("Basic dXNlcjpwdw=="),
        request_id: "t",
        content_type: None,
        approval: None,
        repeated: None,
        mirrored: None,
        ..HttpRequest::default()
    };
    let d = e.check(&req, &MemoryStore::new(), now_s());
    assert_eq!(d.verdict, Verdict::Unauthenticated);
    assert_eq!(d.reply.map(|r| r.status), Some(401));
    let t = mint("ES256", &reader()).expect("mint");
    let auth = format!("bearer {t}");
    let req = HttpRequest {
        method: "GET",
        path: "/orders",
        host: "h",
        authorization: Some(&auth),
        request_id: "t",
        content_type: None,
        approval: None,
        repeated: None,
        mirrored: None,
        ..HttpRequest::default()
    };
    assert_eq!(
        e.check(&req, &MemoryStore::new(), now_s()).verdict,
        Verdict::Allow,
        "the scheme is case-insensitive"
    );
}

fn check_at(engine: &Engine, token: &str, now: u64) -> u32 {
    check_with_clock(engine, token, now).1
}

#[test]
fn a_verified_token_is_cached_until_it_expires() {
    let e = engine();
    let now = now_s();
    let mut c = reader();
    c["exp"] = json!(now + 100);
    let t = mint("ES256", &c).expect("mint");
    assert_eq!(check_at(&e, &t, now), 200);
    assert_eq!(e.cached_tokens(), 1);
    assert_eq!(check_at(&e, &t, now + 10), 200);
    assert_eq!(e.cached_tokens(), 1, "the second use hit the cache");
    // Past exp (and the skew) the cache does not answer; verification rejects the token.
    assert_eq!(check_at(&e, &t, now + 100 + 61), 401);
    assert_eq!(e.cached_tokens(), 0);
}

#[test]
fn a_cached_token_does_not_vouch_for_a_near_identical_one() {
    let e = engine();
    let t = mint("ES256", &reader()).expect("mint");
    assert_eq!(check_at(&e, &t, now_s()), 200);
    // Same header and payload, one signature character changed.
    let mut forged = t.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ascii");
    assert_eq!(check_at(&e, &forged, now_s()), 401);
}

#[test]
fn the_cache_is_bounded_in_entries() {
    let mut c = test_config().expect("config");
    c["limits"] = json!({"token_cache_entries": 3});
    let e = Engine::from_json(c.to_string().as_bytes()).expect("compiles");
    for i in 0..10 {
        let mut claims = reader();
        claims["jti"] = json!(format!("t{i}"));
        assert_eq!(
            check_at(&e, &mint("EdDSA", &claims).expect("mint"), now_s()),
            200
        );
    }
    assert_eq!(e.cached_tokens(), 3);
}

#[test]
fn a_token_without_kid_is_tried_against_the_keys_of_its_algorithm() {
    let e = engine();
    let t = mint("ES256", &reader()).expect("mint");
    let p = parts(&t);
    let header = b64(&json!({"alg": "ES256", "typ": "JWT"}));
    // The header changed, so the signature no longer matches: proves the key was tried.
    assert_rejected(&e, &format!("{header}.{}.{}", p[1], p[2]), "signature");
    // A properly signed kid-less token verifies.
    let key = jsonwebtoken::EncodingKey::from_ec_pem(
        &std::fs::read(tessera_tests::repo_root().join("tests/keys/p256.pem")).expect("pem"),
    )
    .expect("key");
    let mut claims = reader();
    claims["aud"] = json!("orders-api");
    claims["exp"] = json!(now_s() + 60);
    let t = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &key,
    )
    .expect("sign");
    assert_eq!(check(&e, &t).1, 200);
}

/// RFC 8725 §3.11: tokens typed for another use are never access tokens; an issuer can require
/// RFC 9068 `at+jwt`.
#[test]
fn tokens_typed_for_something_else_are_refused() {
    let e = engine();
    for typ in [
        None,
        Some("JWT"),
        Some("at+jwt"),
        Some("application/AT+JWT"),
    ] {
        let t = mint_typed("ES256", typ, &reader()).expect("mint");
        assert_eq!(check(&e, &t).1, 200, "{typ:?}");
    }
    for typ in [
        "logout+jwt",
        "secevent+jwt",
        "statuslist+jwt",
        "dpop+jwt",
        "approval+jwt",
        "JOSE",
    ] {
        let t = mint_typed("ES256", Some(typ), &reader()).expect("mint");
        assert_rejected(&e, &t, "token type");
    }
    // An issuer that requires at+jwt refuses a plain JWT and an untyped token.
    let mut c = test_config().expect("config");
    c["issuers"][1]["typ"] = json!("at+jwt");
    let strict = Engine::from_json(c.to_string().as_bytes()).expect("compiles");
    let t = mint_typed("ES256", Some("at+jwt"), &reader()).expect("mint");
    assert_eq!(check(&strict, &t).1, 200);
    for typ in [None, Some("JWT")] {
        let t = mint_typed("ES256", typ, &reader()).expect("mint");
        assert_rejected(&strict, &t, "token type");
    }
}
