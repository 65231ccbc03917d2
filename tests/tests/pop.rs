//! Proof of possession in the module (issue 15): DPoP (RFC 9449) proofs made by jsonwebtoken for
//! an agent's own key (`tessera_tests::dpop`), certificate-bound tokens (RFC 8705) against the
//! connection's certificate hash as Envoy reports it, and `context.pop` in Cedar. The Envoy
//! end-to-end counterpart, with proofs from Python's `cryptography`, is `tests/e2e/test_pop.py`.

// A helper that panics is a test failing with its message (clippy.toml allows it in #[test]s).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use anyhow::Result;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};
use tessera_harness::{Harness, LocalReply};
use tessera_tests::dpop::Holder;
use tessera_tests::{harness_with, mint, AGENTS};

const HTU: &str = "https://api.example.com/orders/1";
/// The SHA-256 of the client certificate in the tests below (any 32 bytes do: the module compares
/// hashes, the certificate itself is Envoy's business).
const CERT_SHA256: [u8; 32] = [7; 32];

/// The test configuration with DPoP on and `edit` applied; a route `/popinfo` whose only policy
/// permits a request proven with the agent's key.
fn gateway(edit: impl FnOnce(&mut Value)) -> Harness {
    let jkt = Holder::agent().expect("holder").jkt;
    harness_with(|c| {
        c["dpop"] = json!({});
        c["routes"]
            .as_array_mut()
            .unwrap()
            .insert(0, json!({"name": "popinfo", "prefix": "/popinfo"}));
        c["policies"]["pop.cedar"] = json!(format!(
            r#"@id("popinfo-proven")
permit (principal, action == Action::"GET", resource == Route::"popinfo")
when {{ context.pop.method == "dpop" && context.pop.proven &&
        context.pop has jkt && context.pop.jkt == "{jkt}" }};"#
        ));
        edit(c);
    })
    .expect("the module takes the configuration")
}

/// An agent token (`orders:read`) with `cnf` as given.
fn bound(cnf: Value) -> String {
    mint(
        "ES256",
        &json!({"iss": AGENTS, "sub": "agent-7", "scope": "orders:read", "cnf": cnf}),
    )
    .expect("mint")
}

fn jkt_bound() -> String {
    bound(json!({"jkt": Holder::agent().unwrap().jkt}))
}

/// A valid proof by the agent's key for `GET HTU` with `token`.
fn proof_for(token: &str) -> String {
    Holder::agent()
        .unwrap()
        .proof("GET", HTU, token, &json!({}))
        .unwrap()
}

/// `GET path` with `authorization` and an optional `DPoP` header, the connection's properties
/// set first: the local reply, if the module sent one.
fn send(
    h: &mut Harness,
    path: &str,
    authorization: &str,
    proof: Option<&str>,
    connection: &[(&str, &[u8])],
) -> Result<Option<LocalReply>> {
    let ctx = h.new_http()?;
    for (name, value) in connection {
        h.set_stream_property(ctx, name, value)?;
    }
    let mut headers = vec![
        (":method", "GET"),
        (":scheme", "https"),
        (":path", path),
        (":authority", "api.example.com"),
        ("authorization", authorization),
    ];
    if let Some(p) = proof {
        headers.push(("dpop", p));
    }
    h.request_headers(ctx, &headers, true)?;
    let reply = h.local_reply(ctx);
    h.done(ctx)?;
    Ok(reply)
}

fn dpop(h: &mut Harness, token: &str, proof: &str) -> Option<LocalReply> {
    send(h, "/orders/1", &format!("DPoP {token}"), Some(proof), &[]).expect("request")
}

/// A 401 whose `WWW-Authenticate` is a `scheme` challenge with `error`.
fn assert_challenge(reply: Option<LocalReply>, scheme: &str, error: &str) -> LocalReply {
    let reply = reply.expect("a local reply");
    let www = reply.header("www-authenticate").unwrap_or_default();
    assert_eq!(reply.status, 401, "{www} {}", reply.body_text());
    assert!(
        www.starts_with(&format!("{scheme} error=\"{error}\"")),
        "expected a {scheme} {error} challenge, got {www}"
    );
    reply
}

#[test]
fn a_bound_token_with_a_valid_proof_is_forwarded() {
    let mut h = gateway(|_| {});
    let token = jkt_bound();
    let proof = proof_for(&token);
    let reply = dpop(&mut h, &token, &proof);
    assert!(reply.is_none(), "{:?}", reply.map(|r| r.body_text()));
}

/// Ed25519 proofs are checked as Ed25519 tokens are (ed25519-dalek's strict rules): a good one is
/// forwarded, the same proof with one bit of its signature changed is refused.
#[test]
fn an_ed25519_proof_verifies_and_a_changed_one_does_not() {
    let holder = Holder::attacker().unwrap();
    let mut h = gateway(|_| {});
    let token = bound(json!({"jkt": holder.jkt}));
    let proof = holder.proof("GET", HTU, &token, &json!({})).unwrap();
    let (signed, signature) = proof.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(signature).unwrap();
    sig[10] ^= 1;
    let changed = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&sig));
    assert_challenge(dpop(&mut h, &token, &changed), "DPoP", "invalid_dpop_proof");
    let reply = dpop(&mut h, &token, &proof);
    assert!(reply.is_none(), "{:?}", reply.map(|r| r.body_text()));
}

#[test]
fn a_replayed_proof_is_refused() {
    let mut h = gateway(|_| {});
    let token = jkt_bound();
    let proof = proof_for(&token);
    assert!(dpop(&mut h, &token, &proof).is_none());
    let reply = assert_challenge(dpop(&mut h, &token, &proof), "DPoP", "invalid_dpop_proof");
    assert!(
        reply.body_text().contains("already used"),
        "{}",
        reply.body_text()
    );
}

#[test]
fn proofs_for_another_request_token_type_or_key_are_refused() {
    let mut h = gateway(|_| {});
    let token = jkt_bound();
    let agent = Holder::agent().unwrap();
    let old = tessera_tests::now_s() - 3600;
    let cases = [
        ("htm", agent.proof("POST", HTU, &token, &json!({}))),
        (
            "htu",
            agent.proof(
                "GET",
                "https://api.example.com/orders/2",
                &token,
                &json!({}),
            ),
        ),
        (
            "htu origin",
            agent.proof("GET", "https://evil.example/orders/1", &token, &json!({})),
        ),
        (
            "ath",
            agent.proof("GET", HTU, &token, &json!({"ath": "AAAA"})),
        ),
        (
            "no ath",
            agent.proof("GET", HTU, &token, &json!({"ath": null})),
        ),
        ("iat", agent.proof("GET", HTU, &token, &json!({"iat": old}))),
        (
            "no jti",
            agent.proof("GET", HTU, &token, &json!({"jti": null})),
        ),
        (
            "typ",
            agent.proof_typed("JWT", "GET", HTU, &token, &json!({})),
        ),
        (
            "key",
            Holder::attacker()
                .unwrap()
                .proof("GET", HTU, &token, &json!({})),
        ),
    ];
    for (what, proof) in cases {
        let reply = dpop(&mut h, &token, &proof.unwrap());
        let reply = reply.unwrap_or_else(|| panic!("a proof with a wrong {what} was accepted"));
        let www = reply.header("www-authenticate").unwrap_or_default();
        assert!(
            reply.status == 401 && www.starts_with("DPoP error=\"invalid_dpop_proof\""),
            "{what}: {} {www}",
            reply.status
        );
        assert!(www.contains("algs=\"ES256 ES384 EdDSA\""), "{what}: {www}");
    }
}

#[test]
fn a_proof_whose_jwk_carries_the_private_key_is_refused() {
    let mut h = gateway(|_| {});
    let token = jkt_bound();
    let proof = proof_for(&token);
    // Put a `d` into the protected header's jwk: the signature no longer matters, the header
    // alone must be refused.
    let mut parts: Vec<String> = proof.split('.').map(str::to_string).collect();
    let mut header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[0]).unwrap()).unwrap();
    header["jwk"]["d"] = json!("AAAA");
    parts[0] = URL_SAFE_NO_PAD.encode(header.to_string());
    assert_challenge(
        dpop(&mut h, &token, &parts.join(".")),
        "DPoP",
        "invalid_dpop_proof",
    );
}

#[test]
fn the_bound_token_sent_as_a_bearer_token_is_refused() {
    let mut h = gateway(|_| {});
    let token = jkt_bound();
    let proof = proof_for(&token);
    let auth = format!("Bearer {token}");
    for p in [None, Some(proof.as_str())] {
        let reply = send(&mut h, "/orders/1", &auth, p, &[]).unwrap();
        assert_challenge(reply, "DPoP", "invalid_token");
    }
    let reply = send(&mut h, "/orders/1", &format!("DPoP {token}"), None, &[]).unwrap();
    assert_challenge(reply, "DPoP", "invalid_dpop_proof");
}

#[test]
fn with_nonces_a_proof_without_one_gets_a_nonce_that_then_works() {
    let key = STANDARD.encode([42u8; 32]);
    let mut h = gateway(|c| c["dpop"] = json!({"nonce": {"keys": [key]}}));
    let token = jkt_bound();
    let agent = Holder::agent().unwrap();
    let first = agent.proof("GET", HTU, &token, &json!({})).unwrap();
    let reply = assert_challenge(dpop(&mut h, &token, &first), "DPoP", "use_dpop_nonce");
    let nonce = reply
        .header("dpop-nonce")
        .expect("a DPoP-Nonce header")
        .to_string();
    let forged = agent
        .proof("GET", HTU, &token, &json!({"nonce": format!("{nonce}x")}))
        .unwrap();
    assert_challenge(dpop(&mut h, &token, &forged), "DPoP", "use_dpop_nonce");
    let with_nonce = agent
        .proof("GET", HTU, &token, &json!({"nonce": nonce}))
        .unwrap();
    assert!(dpop(&mut h, &token, &with_nonce).is_none());
}

#[test]
fn a_certificate_bound_token_needs_the_certificate_it_is_bound_to() {
    let mut h = gateway(|_| {});
    let token = bound(json!({"x5t#S256": URL_SAFE_NO_PAD.encode(CERT_SHA256)}));
    let auth = format!("Bearer {token}");
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let ours = hex(&CERT_SHA256);
    let theirs = hex(&[8; 32]);
    let tls = |digest: &str| -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("connection.mtls", vec![1]),
            (
                "connection.sha256_peer_certificate_digest",
                digest.as_bytes().to_vec(),
            ),
        ]
    };
    let with = |h: &mut Harness, props: &[(&'static str, Vec<u8>)]| {
        let props: Vec<(&str, &[u8])> = props.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        send(h, "/orders/1", &auth, None, &props).unwrap()
    };
    assert!(with(&mut h, &tls(&ours)).is_none());
    let reply = assert_challenge(with(&mut h, &tls(&theirs)), "Bearer", "invalid_token");
    assert!(
        reply.body_text().contains("certificate"),
        "{}",
        reply.body_text()
    );
    assert_challenge(with(&mut h, &[]), "Bearer", "invalid_token");
}

#[test]
fn a_policy_sees_how_the_token_was_proven() {
    let mut h = gateway(|_| {});
    let agent = Holder::agent().unwrap();
    let token = jkt_bound();
    let htu = "https://api.example.com/popinfo";
    let proof = agent.proof("GET", htu, &token, &json!({})).unwrap();
    let reply = send(
        &mut h,
        "/popinfo",
        &format!("DPoP {token}"),
        Some(&proof),
        &[],
    )
    .unwrap();
    assert!(reply.is_none(), "{:?}", reply.map(|r| r.body_text()));
    // The same agent with a bearer token: authenticated, but `context.pop.proven` is false.
    let bearer = mint(
        "ES256",
        &json!({"iss": AGENTS, "sub": "agent-7", "scope": "orders:read"}),
    )
    .unwrap();
    let reply = send(&mut h, "/popinfo", &format!("Bearer {bearer}"), None, &[])
        .unwrap()
        .expect("refused");
    assert_eq!(reply.status, 403, "{}", reply.body_text());
}

/// A proof does not cover the body: the proof of an MCP call refused by policy is spent all the
/// same, so that it cannot carry another call.
#[test]
fn the_proof_of_a_refused_mcp_call_cannot_carry_another_call() {
    let mut h = gateway(|_| {});
    let holder = Holder::agent().unwrap();
    let token = mint(
        "ES256",
        &json!({"iss": AGENTS, "sub": "agent-7", "scope": "files:read",
                "cnf": {"jkt": holder.jkt}}),
    )
    .unwrap();
    let proof = holder
        .proof("POST", "https://api.example.com/mcp", &token, &json!({}))
        .unwrap();
    let auth = format!("DPoP {token}");
    let mut call = |path: &str| -> Option<LocalReply> {
        let body = tessera_tests::read_file(1, path).to_string();
        let len = body.len().to_string();
        let ctx = h.new_http().unwrap();
        h.request_headers(
            ctx,
            &[
                (":method", "POST"),
                (":scheme", "https"),
                (":path", "/mcp"),
                (":authority", "api.example.com"),
                ("authorization", auth.as_str()),
                ("dpop", proof.as_str()),
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("content-length", len.as_str()),
            ],
            false,
        )
        .unwrap();
        if h.local_reply(ctx).is_none() {
            h.request_body(ctx, body.as_bytes(), true).unwrap();
        }
        let reply = h.local_reply(ctx);
        h.done(ctx).unwrap();
        reply
    };
    let refused = call("/etc/passwd").expect("a secret is refused by policy");
    assert!(
        refused.body_text().contains("no-reading-secrets"),
        "{} {}",
        refused.status,
        refused.body_text()
    );
    assert_challenge(call("/workspace/README.md"), "DPoP", "invalid_dpop_proof");
}

/// On a route that ignores case, policies see the path lower-cased; the proof names the path
/// the client sent.
#[test]
fn on_a_case_insensitive_route_the_proof_names_the_path_as_sent() {
    let mut h = gateway(|c| c["routes"][0]["case_sensitive"] = json!(false));
    let agent = Holder::agent().unwrap();
    let token = jkt_bound();
    let proof = agent
        .proof("GET", "https://api.example.com/PopInfo", &token, &json!({}))
        .unwrap();
    let reply = send(
        &mut h,
        "/PopInfo",
        &format!("DPoP {token}"),
        Some(&proof),
        &[],
    )
    .unwrap();
    assert!(reply.is_none(), "{:?}", reply.map(|r| r.body_text()));
    let lower = agent
        .proof("GET", "https://api.example.com/popinfo", &token, &json!({}))
        .unwrap();
    let reply = send(
        &mut h,
        "/PopInfo",
        &format!("DPoP {token}"),
        Some(&lower),
        &[],
    )
    .unwrap();
    assert_challenge(reply, "DPoP", "invalid_dpop_proof");
}

/// JWT-SVIDs: an issuer of a SPIFFE trust domain (`spiffe_trust_domain`) whose tokens name a
/// `Workload` by its SPIFFE ID; a `sub` outside the trust domain, or no workload path, is 401.
#[test]
fn jwt_svids_of_a_trust_domain_name_its_workloads() {
    const SPIRE: &str = "https://spire.example.org";
    const PLANNER: &str = "spiffe://example.org/ns/agents/sa/planner";
    let mut h = gateway(|c| {
        let mut svids = c["issuers"][1].clone();
        for (k, v) in [
            ("issuer", json!(SPIRE)),
            ("principal", json!({"type": "Workload", "claim": "sub"})),
            ("identity_namespace", json!("spiffe://example.org")),
            ("spiffe_trust_domain", json!("example.org")),
        ] {
            svids[k] = v;
        }
        for k in ["delegation", "single_use_claim"] {
            svids.as_object_mut().unwrap().remove(k);
        }
        c["issuers"].as_array_mut().unwrap().push(svids);
        c["policies"]["svid.cedar"] = json!(format!(
            r#"@id("planner-svid")
permit (principal == Workload::"spiffe://example.org|{PLANNER}",
        action == Action::"GET", resource == Route::"popinfo");"#
        ));
    });
    let mut svid = |sub: &str| {
        let t = mint("ES256", &json!({"iss": SPIRE, "sub": sub})).unwrap();
        send(&mut h, "/popinfo", &format!("Bearer {t}"), None, &[]).unwrap()
    };
    assert!(svid(PLANNER).is_none());
    let other = svid("spiffe://example.org/ns/agents/sa/executor").expect("refused");
    assert_eq!(other.status, 403, "{}", other.body_text());
    for sub in [
        "spiffe://other.org/ns/agents/sa/planner",
        "spiffe://example.org",
        "spiffe://EXAMPLE.org/ns/agents/sa/planner",
        "planner",
    ] {
        let reply = assert_challenge(svid(sub), "Bearer", "invalid_token");
        assert!(
            reply.body_text().contains("SPIFFE"),
            "{sub}: {}",
            reply.body_text()
        );
    }
}
