//! Tokens verified by Envoy's `jwt_authn` (`issuers[].jwt_authn_payload`, issue 16): Tessera
//! checks no signature for such an issuer and admits a token only when `jwt_authn` put that very
//! payload in the request's dynamic metadata; its own claim rules still apply. The metadata is
//! set as Envoy hands it to a Wasm filter (a `google.protobuf.Struct`); the Envoy end-to-end
//! counterpart, with a real `jwt_authn` in front, is `tests/e2e/test_jwt_authn.py`.

// A helper that panics is a test failing with its message (clippy.toml allows it in #[test]s).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use tessera_core::jwt_authn;
use tessera_harness::Harness;
use tessera_tests::{harness_with, mint, now_s, test_config, AGENTS, IDP};

const KEY: &str = "agents-payload";

/// The test configuration with the agents issuer's tokens verified by `jwt_authn` (no keys),
/// its headers too under `header` if given (`jwt_authn_header`).
fn gateway_with(header: Option<&str>) -> Harness {
    harness_with(|c| {
        let agents = &mut c["issuers"][1];
        agents.as_object_mut().unwrap().remove("jwks");
        agents["jwt_authn_payload"] = json!(KEY);
        if let Some(h) = header {
            agents["jwt_authn_header"] = json!(h);
        }
    })
    .expect("the module takes the configuration")
}

fn gateway() -> Harness {
    gateway_with(None)
}

fn part_of(token: &str, i: usize) -> Map<String, Value> {
    let part = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn payload_of(token: &str) -> Map<String, Value> {
    part_of(token, 1)
}

/// `token` with its header and payload as given (JSON text), its signature kept: what a client
/// holding a real token can make without a key.
fn forged(token: &str, header: &str, payload: &str) -> String {
    let sig = token.rsplit('.').next().unwrap();
    format!(
        "{}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    )
}

const HEADER_KEY: &str = "agents-header";

/// `GET /orders/1` with `token`, jwt_authn having verified `real` and stored its payload under
/// KEY and its header under HEADER_KEY: the status of the local reply, if any.
fn send_with_header(h: &mut Harness, token: &str, real: &str) -> Option<u32> {
    let (payload, header) = (payload_of(real), part_of(real, 0));
    let metadata = jwt_authn::encode_metadata(&[(KEY, &payload), (HEADER_KEY, &header)]);
    send_with_metadata(h, token, Some(metadata))
        .0
        .map(|(status, _)| status)
}

/// `GET /orders/1` with `Bearer token`, `jwt_authn` having verified `verified` (a token) under
/// `key`: the local reply's status and body (`None`: forwarded) and the forwarded principal.
fn send(
    h: &mut Harness,
    token: &str,
    verified: Option<(&str, &str)>,
) -> (Option<(u32, String)>, Option<String>) {
    let metadata = verified
        .map(|(key, by_jwt_authn)| jwt_authn::encode_metadata(&[(key, &payload_of(by_jwt_authn))]));
    send_with_metadata(h, token, metadata)
}

/// `GET /orders/1` with `Bearer token` and `metadata` as the request's dynamic metadata: the
/// local reply's status and `www-authenticate` (`None`: forwarded) and the forwarded principal.
fn send_with_metadata(
    h: &mut Harness,
    token: &str,
    metadata: Option<Vec<u8>>,
) -> (Option<(u32, String)>, Option<String>) {
    let ctx = h.new_http().unwrap();
    if let Some(metadata) = metadata {
        h.set_stream_property_path(ctx, &jwt_authn::ATTRIBUTE, metadata)
            .unwrap();
    }
    let auth = format!("Bearer {token}");
    let headers = [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/orders/1"),
        (":authority", "api.example.com"),
        ("authorization", auth.as_str()),
    ];
    h.request_headers(ctx, &headers, true).unwrap();
    let reply = h.local_reply(ctx).map(|r| {
        (
            r.status,
            r.header("www-authenticate").unwrap_or("").to_string(),
        )
    });
    let principal = h.request_header(ctx, "x-tessera-principal");
    h.done(ctx).unwrap();
    (reply, principal)
}

fn agent_token(extra: Value) -> String {
    let mut claims = json!({"iss": AGENTS, "sub": "agent-7", "scope": "orders:read"});
    tessera_tests::merge_claims(&mut claims, &extra);
    mint("ES256", &claims).unwrap()
}

fn refused(reply: Option<(u32, String)>, why: &str) {
    let (status, challenge) = reply.expect("a local reply");
    assert_eq!(status, 401, "{challenge}");
    assert!(challenge.contains(why), "expected {why:?} in {challenge}");
}

#[test]
fn a_token_jwt_authn_verified_is_admitted_without_a_key() {
    let mut h = gateway();
    let t = agent_token(json!({}));
    let (reply, principal) = send(&mut h, &t, Some((KEY, &t)));
    assert_eq!(reply, None);
    assert_eq!(principal.as_deref(), Some("Agent::\"agents|agent-7\""));
}

#[test]
fn without_jwt_authns_payload_the_token_is_refused_cached_or_not() {
    let mut h = gateway();
    let t = agent_token(json!({}));
    refused(send(&mut h, &t, None).0, "token not verified by jwt_authn");
    // Admitted once (now in the token cache), the token still needs jwt_authn's word each time.
    assert_eq!(send(&mut h, &t, Some((KEY, &t))).0, None);
    refused(send(&mut h, &t, None).0, "token not verified by jwt_authn");
    // Under another provider's key it is no verification of this issuer's token.
    refused(
        send(&mut h, &t, Some(("other", &t))).0,
        "token not verified by jwt_authn",
    );
}

#[test]
fn another_tokens_payload_verifies_nothing() {
    let mut h = gateway();
    let mine = agent_token(json!({"sub": "agent-7"}));
    let forged = agent_token(json!({"sub": "agent-admin", "scope": "orders:read admin"}));
    refused(
        send(&mut h, &forged, Some((KEY, &mine))).0,
        "token not verified by jwt_authn",
    );
    // One claim more, one less, or one changed is another payload.
    let more = agent_token(json!({"jti": "x"}));
    refused(send(&mut h, &more, Some((KEY, &mine))).0, "not verified");
    let less = agent_token(json!({"scope": null}));
    refused(send(&mut h, &less, Some((KEY, &mine))).0, "not verified");
}

#[test]
fn tesseras_own_claim_rules_still_apply() {
    let mut h = gateway();
    let now = now_s();
    // jwt_authn may have a wider clock skew or no audiences configured: Tessera's hold.
    let cases = [
        (json!({"exp": now - 120, "iat": now - 400}), "token expired"),
        (json!({"aud": "another-api"}), "audience not accepted"),
        (json!({"nbf": now + 600}), "not yet valid"),
        (json!({"exp": now + 7200}), "lifetime exceeds"),
        (json!({"sub": null}), "missing required claim `sub`"),
        (json!({"aud": 7}), "malformed token"),
    ];
    for (extra, why) in cases {
        let t = agent_token(extra);
        refused(send(&mut h, &t, Some((KEY, &t))).0, why);
    }
    // `typ` too.
    let claims = json!({"iss": AGENTS, "sub": "agent-7", "scope": "orders:read"});
    let t = tessera_tests::mint_typed("ES256", Some("dpop+jwt"), &claims).unwrap();
    refused(send(&mut h, &t, Some((KEY, &t))).0, "token type");
}

#[test]
fn a_single_use_token_is_used_once_though_jwt_authn_verifies_it_again() {
    let mut h = gateway();
    let t = agent_token(json!({"single_use": true, "jti": "once-jwt-authn"}));
    assert_eq!(send(&mut h, &t, Some((KEY, &t))).0, None);
    refused(send(&mut h, &t, Some((KEY, &t))).0, "token already used");
}

#[test]
fn issuers_tessera_verifies_ignore_jwt_authns_payloads() {
    let mut h = gateway();
    let claims = json!({"iss": IDP, "sub": "alice", "scope": "orders:read", "groups": ["staff"]});
    let good = mint("ES256", &claims).unwrap();
    assert_eq!(send(&mut h, &good, None).0, None);
    // A payload in the metadata does not stand in for an IdP token's signature.
    let (head, payload, _) = {
        let mut p = good.split('.');
        (p.next().unwrap(), p.next().unwrap(), p.next().unwrap())
    };
    let bad = format!("{head}.{payload}.{}", URL_SAFE_NO_PAD.encode([7u8; 64]));
    refused(
        send(&mut h, &bad, Some((KEY, &good))).0,
        "signature invalid",
    );
}

/// A client holding a real token (verified by jwt_authn from `?access_token=` or another header)
/// sends another in `Authorization` with the same payload (attacker review of 115bc6d).
#[test]
fn a_token_beside_the_verified_one_must_be_it_up_to_its_signature() {
    let mut h = gateway();
    let real = agent_token(json!({"acct": 1_234_567_890_123_456_789u64}));
    let header = r#"{"alg":"ES256","typ":"JWT","kid":"demo-p256"}"#;
    let text = serde_json::to_string(&payload_of(&real)).unwrap();
    // An account id beside the real one: the same double, another integer.
    let neighbour = text.replace("1234567890123456789", "1234567890123456700");
    assert_ne!(neighbour, text);
    refused(
        send(
            &mut h,
            &forged(&real, header, &neighbour),
            Some((KEY, &real)),
        )
        .0,
        "not verified by jwt_authn",
    );
    // A claim twice: serde_json reads the last, a parser upstream may read the first.
    let twice = text.replacen('{', r#"{"sub":"agent-admin","#, 1);
    refused(
        send(&mut h, &forged(&real, header, &twice), Some((KEY, &real))).0,
        "member name appears twice",
    );
    // An id beyond 2^53 cannot be told from its neighbours: not even the real token passes.
    refused(send(&mut h, &real, Some((KEY, &real))).0, "not verified");
    // Without jwt_authn_header, the header is the client's word (README): another typ passes.
    let real = agent_token(json!({}));
    let text = serde_json::to_string(&payload_of(&real)).unwrap();
    let other_typ = r#"{"alg":"none-of-yours","typ":"at+jwt"}"#;
    assert_eq!(
        send(&mut h, &forged(&real, other_typ, &text), Some((KEY, &real))).0,
        None
    );
    // With it, the header must be the verified token's too.
    let mut h = gateway_with(Some(HEADER_KEY));
    assert_eq!(send_with_header(&mut h, &real, &real), None);
    assert_eq!(
        send_with_header(&mut h, &forged(&real, other_typ, &text), &real),
        Some(401)
    );
    // Cached or not: the real token admitted, then a header-forged copy still refused.
    assert_eq!(send_with_header(&mut h, &real, &real), None);
    assert_eq!(
        send_with_header(&mut h, &forged(&real, other_typ, &text), &real),
        Some(401)
    );
}

#[test]
fn an_issuer_relying_on_jwt_authn_takes_no_keys() {
    for edit in [
        json!({"jwt_authn_payload": KEY}),
        json!({"jwt_authn_payload": ""}),
        json!({"jwt_authn_header": "h"}),
    ] {
        let mut c = test_config().unwrap();
        // The agents issuer has its jwks: with jwt_authn_payload, a configuration error.
        let mut agents = c["issuers"][1].clone();
        tessera_tests::merge_claims(&mut agents, &edit);
        if edit["jwt_authn_payload"] != KEY {
            agents.as_object_mut().unwrap().remove("jwks");
        }
        c["issuers"][1] = agents;
        let Err(err) = tessera_core::Engine::from_json(c.to_string().as_bytes()) else {
            panic!("{edit}: configuration accepted");
        };
        assert!(err.to_string().contains("issuers[1].jwt_authn_"), "{err}");
    }
}

#[test]
fn two_issuers_never_read_the_same_jwt_authn_key() {
    let mut c = test_config().unwrap();
    for i in [0, 1] {
        let issuer = c["issuers"][i].as_object_mut().unwrap();
        issuer.remove("jwks");
        issuer.insert("jwt_authn_payload".into(), json!(KEY));
    }
    let Err(err) = tessera_core::Engine::from_json(c.to_string().as_bytes()) else {
        panic!("two issuers on one key accepted");
    };
    assert!(
        err.to_string().contains("issuers[1].jwt_authn_payload"),
        "{err}"
    );
}
