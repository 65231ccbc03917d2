//! Keys from an identity provider (issue 12), through the `.wasm` in the harness: the agents
//! issuer's keys come from `remote_jwks` (a JWKS, or OIDC discovery first) fetched through a
//! cluster; the test answers the fetches. Tokens are minted with jsonwebtoken and the demo keys.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tessera_harness::{Action, Harness, HttpCall};
use tessera_tests::{bearer, harness_with, mint, repo_root, AGENTS, IDP};

/// The demo JWKS with only the keys named, as a document.
fn jwks(kids: &[&str]) -> Result<String> {
    Ok(tessera_tests::signed::jwks_with(kids)?.to_string())
}

/// The test configuration with the agents issuer's keys fetched (`remote` merged into its
/// `remote_jwks`).
fn harness(remote: Value) -> Result<Harness> {
    harness_with(|c| {
        let agents = &mut c["issuers"][1];
        agents.as_object_mut().map(|o| o.remove("jwks"));
        let mut r = json!({"cluster": "idp", "path": "/jwks", "authority": "idp.test",
                           "refresh_s": 60, "max_stale_s": 120, "refetch_interval_s": 30});
        tessera_tests::merge_claims(&mut r, &remote);
        agents["remote_jwks"] = r;
    })
}

/// [`harness`] with defaults whose first fetch the provider answered with the P-256 key.
fn harness_with_p256() -> Result<Harness> {
    let mut h = harness(json!({}))?;
    let first = the_call(&h, "/jwks")?;
    answer(&mut h, &first, 200, &jwks(&["demo-p256"])?)?;
    Ok(h)
}

fn es256() -> Result<String> {
    bearer(json!({"iss": AGENTS, "sub": "agent-7", "scope": "orders:read"}))
}

fn eddsa() -> Result<String> {
    Ok(format!(
        "Bearer {}",
        mint(
            "EdDSA",
            &json!({"iss": AGENTS, "sub": "agent-7", "scope": "orders:read"})
        )?
    ))
}

/// A GET of an order: the context, and the reply's status (`None`: forwarded).
fn get(h: &mut Harness, auth: &str) -> Result<(u32, Option<u32>)> {
    tessera_tests::request(h, "GET", "/orders/1", Some(auth), &[])
}

/// The only unanswered call, which must go to the idp cluster for `path`.
fn the_call(h: &Harness, path: &str) -> Result<HttpCall> {
    let calls = h.http_calls();
    anyhow::ensure!(calls.len() == 1, "one call expected: {calls:?}");
    let call = calls[0].clone();
    assert_eq!(call.upstream, "idp");
    assert_eq!(call.header(":path"), Some(path));
    assert_eq!(call.header(":authority"), Some("idp.test"));
    assert_eq!(call.header(":method"), Some("GET"));
    Ok(call)
}

fn answer(h: &mut Harness, call: &HttpCall, status: u32, body: &str) -> Result<()> {
    h.respond_to_call(
        call.token,
        status,
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
}

#[test]
fn an_issuer_without_keys_yet_gets_503_and_others_are_unaffected() -> Result<()> {
    let mut h = harness(json!({}))?;
    let call = the_call(&h, "/jwks")?;
    let (ctx, status) = get(&mut h, &es256()?)?;
    assert_eq!(status, Some(503), "before the first keys");
    let body = h.local_reply(ctx).context("reply")?.body_text();
    assert!(body.contains("keys"), "{body}");
    // The people's issuer has inline keys: it works all along.
    let alice = bearer(json!({"iss": IDP, "sub": "alice", "groups": ["staff"]}))?;
    assert_eq!(get(&mut h, &alice)?.1, None);
    answer(&mut h, &call, 200, &jwks(&["demo-p256"])?)?;
    assert_eq!(get(&mut h, &es256()?)?.1, None, "keys in: forwarded");
    Ok(())
}

#[test]
fn a_new_kid_waits_for_one_refetch_and_is_accepted_after_rotation() -> Result<()> {
    let mut h = harness_with_p256()?;
    // The provider rotates in an Ed25519 key; a token signed with it arrives first.
    let ctx = h.new_http()?;
    let auth = eddsa()?;
    let headers = [
        (":method", "GET"),
        (":path", "/orders/1"),
        (":authority", "api.example.com"),
        ("authorization", auth.as_str()),
    ];
    assert_eq!(h.request_headers(ctx, &headers, true)?, Action::Pause);
    assert!(h.local_reply(ctx).is_none(), "it waits, nothing sent");
    let refetch = the_call(&h, "/jwks")?;
    assert_eq!(refetch.context_id, ctx, "the request's own call");
    answer(
        &mut h,
        &refetch,
        200,
        &jwks(&["demo-p256", "demo-ed25519"])?,
    )?;
    assert!(h.request_resumed(ctx), "forwarded once the keys are in");
    assert!(h.local_reply(ctx).is_none());
    // A flood of made-up kids right after: no second fetch, each refused at once.
    for i in 0..20 {
        let (ctx, status) = get(&mut h, &forged_kid(&format!("made-up-{i}"))?)?;
        assert_eq!(status, Some(401), "request {i}");
        let www = h.local_reply(ctx).context("reply")?;
        assert!(www.header("www-authenticate").unwrap_or("").contains("kid"));
    }
    assert!(h.http_calls().is_empty(), "{:?}", h.http_calls());
    Ok(())
}

/// An ES256 token of the agents issuer whose header names `kid`.
fn forged_kid(kid: &str) -> Result<String> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let pem = std::fs::read(repo_root().join("tests/keys/p256.pem"))?;
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    let now = tessera_tests::now_s();
    let claims = json!({"iss": AGENTS, "sub": "agent-7", "aud": "orders-api", "scope": "orders:read",
                        "iat": now, "exp": now + 300});
    Ok(format!(
        "Bearer {}",
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_pem(&pem)?)?
    ))
}

#[test]
fn a_key_removed_at_refresh_refuses_its_tokens_even_cached_ones() -> Result<()> {
    let mut h = harness(json!({}))?;
    let first = the_call(&h, "/jwks")?;
    answer(&mut h, &first, 200, &jwks(&["demo-p256", "demo-ed25519"])?)?;
    let token = es256()?;
    assert_eq!(get(&mut h, &token)?.1, None, "verified and cached");
    h.advance(Duration::from_secs(61));
    h.tick()?;
    let refresh = the_call(&h, "/jwks")?;
    answer(&mut h, &refresh, 200, &jwks(&["demo-ed25519"])?)?;
    // Its kid is unknown now: the keys are fetched once more, in case they rotated again.
    let (ctx, status) = get(&mut h, &token)?;
    assert_eq!(status, None, "waits for the refetch");
    let refetch = the_call(&h, "/jwks")?;
    answer(&mut h, &refetch, 200, &jwks(&["demo-ed25519"])?)?;
    assert_eq!(
        h.local_reply(ctx).map(|r| r.status),
        Some(401),
        "its key is gone"
    );
    assert!(!h.request_resumed(ctx));
    assert_eq!(get(&mut h, &token)?.1, Some(401), "and at once from now on");
    assert_eq!(get(&mut h, &eddsa()?)?.1, None, "the remaining key works");
    Ok(())
}

#[test]
fn a_provider_down_keeps_the_last_keys_for_max_stale_then_503_then_recovers() -> Result<()> {
    let mut h = harness(json!({"refresh_s": 10, "max_stale_s": 30}))?;
    let first = the_call(&h, "/jwks")?;
    answer(&mut h, &first, 200, &jwks(&["demo-p256"])?)?;
    let token = es256()?;
    let t0 = h.now();
    // Refreshes fail (no answer, then 500): the last good keys serve until 10 + 30 s.
    for (at, fail) in [(11, 0), (17, 500), (23, 0), (29, 500), (35, 0)] {
        h.set_time(t0 + Duration::from_secs(at));
        h.tick()?;
        let call = the_call(&h, "/jwks")?;
        if fail == 0 {
            h.fail_call(call.token)?;
        } else {
            answer(&mut h, &call, fail, "oops")?;
        }
        assert_eq!(get(&mut h, &token)?.1, None, "at {at} s: last good keys");
    }
    h.set_time(t0 + Duration::from_secs(41));
    assert_eq!(get(&mut h, &token)?.1, Some(503), "stale: fail closed");
    h.tick()?;
    let call = the_call(&h, "/jwks")?;
    answer(&mut h, &call, 200, &jwks(&["demo-p256"])?)?;
    assert_eq!(get(&mut h, &token)?.1, None, "recovered");
    Ok(())
}

#[test]
fn documents_that_are_not_usable_keys_are_not_taken() -> Result<()> {
    let big = json!({"keys": [], "padding": "x".repeat(70 * 1024)}).to_string();
    let oct = json!({"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]})
        .to_string();
    let too_many = json!({"keys": vec![json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}); 33]})
        .to_string();
    for (what, doc) in [
        ("oversize", big),
        ("only an oct key", oct),
        ("33 keys", too_many),
        ("not JSON", "<html>".into()),
    ] {
        let mut h = harness(json!({}))?;
        let call = the_call(&h, "/jwks")?;
        answer(&mut h, &call, 200, &doc)?;
        assert_eq!(get(&mut h, &es256()?)?.1, Some(503), "{what}");
        assert!(
            h.logs().iter().any(|l| l.message.contains("keys of")),
            "{what}: logged"
        );
    }
    Ok(())
}

#[test]
fn discovery_leads_to_the_jwks_and_a_document_for_another_issuer_is_refused() -> Result<()> {
    let mut h = harness(json!({"discovery": true, "path": null}))?;
    let call = the_call(&h, "/.well-known/openid-configuration")?;
    let doc = json!({"issuer": AGENTS, "jwks_uri": "https://idp.test/keys?v=2"}).to_string();
    answer(&mut h, &call, 200, &doc)?;
    let jwks_call = the_call(&h, "/keys?v=2")?;
    answer(&mut h, &jwks_call, 200, &jwks(&["demo-p256"])?)?;
    assert_eq!(get(&mut h, &es256()?)?.1, None);

    let mut h = harness(json!({"discovery": true, "path": null}))?;
    let call = the_call(&h, "/.well-known/openid-configuration")?;
    let doc =
        json!({"issuer": "https://evil.test", "jwks_uri": "https://idp.test/keys"}).to_string();
    answer(&mut h, &call, 200, &doc)?;
    assert!(
        h.http_calls().is_empty(),
        "no JWKS fetched for another issuer"
    );
    assert_eq!(get(&mut h, &es256()?)?.1, Some(503));
    Ok(())
}

#[test]
fn remote_jwks_configuration_errors_name_the_field() -> Result<()> {
    for (remote, field) in [
        (json!({"cluster": ""}), "issuers[1].remote_jwks.cluster"),
        (json!({"path": null}), "issuers[1].remote_jwks.path"),
        (json!({"path": "jwks"}), "issuers[1].remote_jwks.path"),
        (json!({"refresh_s": 0}), "issuers[1].remote_jwks.refresh_s"),
    ] {
        let mut h = tessera_harness::Harness::load(tessera_tests::wasm_path())?;
        let mut c = tessera_tests::test_config()?;
        let agents = &mut c["issuers"][1];
        agents.as_object_mut().map(|o| o.remove("jwks"));
        let mut r = json!({"cluster": "idp", "path": "/jwks"});
        tessera_tests::merge_claims(&mut r, &remote);
        agents["remote_jwks"] = r;
        assert!(!h.configure(&c.to_string())?, "{remote}");
        assert!(
            h.logs().iter().any(|l| l.message.contains(field)),
            "{field}: {:?}",
            h.logs()
        );
    }
    Ok(())
}

/// The headers of an MCP POST signed with a key the issuer's JWKS lacks yet: its context and the
/// refetch it waits for.
fn open_mcp_post(h: &mut Harness) -> Result<(u32, HttpCall)> {
    let ctx = h.new_http()?;
    let auth = format!(
        "Bearer {}",
        mint(
            "EdDSA",
            &json!({"iss": AGENTS, "sub": "agent-7", "scope": "files:read"})
        )?
    );
    let headers = [
        (":method", "POST"),
        (":path", "/mcp"),
        (":authority", "api.example.com"),
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    assert_eq!(h.request_headers(ctx, &headers, false)?, Action::Pause);
    Ok((ctx, the_call(h, "/jwks")?))
}

/// An MCP POST whose token needs a key refetch: the body that arrives meanwhile is held (never
/// passed on) and judged once the keys are in.
fn mcp_post_waiting_for_keys(
    h: &mut Harness,
    body: &Value,
    trailers: bool,
) -> Result<(u32, HttpCall)> {
    let (ctx, refetch) = open_mcp_post(h)?;
    let text = body.to_string();
    if trailers {
        assert_eq!(h.request_body(ctx, text.as_bytes(), false)?, Action::Pause);
        assert_eq!(h.request_trailers(ctx, &[("x-end", "1")])?, Action::Pause);
    } else {
        assert_eq!(h.request_body(ctx, text.as_bytes(), true)?, Action::Pause);
    }
    assert!(!h.request_resumed(ctx) && h.local_reply(ctx).is_none());
    Ok((ctx, refetch))
}

#[test]
fn an_mcp_body_that_came_while_the_request_waited_is_judged_when_the_keys_arrive() -> Result<()> {
    for trailers in [false, true] {
        // A call the policies refuse: refused, though the body came before the keys.
        let mut h = harness_with_p256()?;
        let secret = tessera_tests::read_file(1, "/etc/passwd");
        let (ctx, refetch) = mcp_post_waiting_for_keys(&mut h, &secret, trailers)?;
        answer(
            &mut h,
            &refetch,
            200,
            &jwks(&["demo-p256", "demo-ed25519"])?,
        )?;
        let reply = h.local_reply(ctx).context("refused")?;
        assert!(
            reply.body_text().contains("-32003"),
            "{}",
            reply.body_text()
        );
        assert!(!h.request_resumed(ctx), "trailers {trailers}");

        // An allowed call: forwarded.
        let mut h = harness_with_p256()?;
        let fine = tessera_tests::read_file(2, "/workspace/README.md");
        let (ctx, refetch) = mcp_post_waiting_for_keys(&mut h, &fine, trailers)?;
        answer(
            &mut h,
            &refetch,
            200,
            &jwks(&["demo-p256", "demo-ed25519"])?,
        )?;
        assert!(h.local_reply(ctx).is_none(), "trailers {trailers}");
        assert!(h.request_resumed(ctx), "trailers {trailers}");
    }
    Ok(())
}

#[test]
fn an_mcp_body_still_to_come_when_the_keys_arrive_is_judged_at_its_end() -> Result<()> {
    let mut h = harness_with_p256()?;
    let (ctx, refetch) = open_mcp_post(&mut h)?;
    let body = tessera_tests::read_file(1, "/etc/passwd").to_string();
    let (head, tail) = body.split_at(10);
    assert_eq!(h.request_body(ctx, head.as_bytes(), false)?, Action::Pause);
    answer(
        &mut h,
        &refetch,
        200,
        &jwks(&["demo-p256", "demo-ed25519"])?,
    )?;
    assert!(
        !h.request_resumed(ctx),
        "not resumed with half a body: the proxy would pass it on"
    );
    assert_eq!(h.request_body(ctx, tail.as_bytes(), true)?, Action::Pause);
    let reply = h
        .local_reply(ctx)
        .context("refused at the end of the body")?;
    assert!(
        reply.body_text().contains("-32003"),
        "{}",
        reply.body_text()
    );
    Ok(())
}

#[test]
fn a_client_leaving_during_a_refetch_does_not_use_up_the_rotation() -> Result<()> {
    let mut h = harness_with_p256()?;
    // A made-up kid starts a refetch, and its client goes away before the answer.
    let ctx = h.new_http()?;
    let forged = forged_kid("made-up")?;
    let headers = [
        (":method", "GET"),
        (":path", "/orders/1"),
        (":authority", "api.example.com"),
        ("authorization", forged.as_str()),
    ];
    assert_eq!(h.request_headers(ctx, &headers, true)?, Action::Pause);
    h.done(ctx)?;
    // The provider rotates in a new key: the next tick fetches the keys in the client's place.
    h.tick()?;
    let root_fetch = h
        .http_calls()
        .iter()
        .find(|c| c.context_id != ctx)
        .cloned()
        .context("the tick fetches the keys the leaving client did not wait for")?;
    answer(
        &mut h,
        &root_fetch,
        200,
        &jwks(&["demo-p256", "demo-ed25519"])?,
    )?;
    assert_eq!(get(&mut h, &eddsa()?)?.1, None, "the rotated key's token");
    Ok(())
}

#[test]
fn keys_sharing_one_kid_are_none_of_them_used() -> Result<()> {
    let mut h = harness(json!({}))?;
    let first = the_call(&h, "/jwks")?;
    let all: Value = serde_json::from_str(&jwks(&["demo-p256", "demo-p384", "demo-ed25519"])?)?;
    let keys = all["keys"].as_array().context("keys")?;
    let mut doc = json!({"keys": []});
    for k in keys {
        let mut k = k.clone();
        if k["kid"] != "demo-ed25519" {
            // p384 first, p256 second and third: all named `demo-p256`.
            k["kid"] = json!("demo-p256");
        }
        doc["keys"].as_array_mut().context("keys")?.push(k);
    }
    let p256 = doc["keys"]
        .as_array()
        .and_then(|k| k.iter().find(|k| k["crv"] == "P-256").cloned())
        .context("p256")?;
    doc["keys"].as_array_mut().context("keys")?.push(p256);
    answer(&mut h, &first, 200, &doc.to_string())?;
    let (ctx, status) = get(&mut h, &es256()?)?;
    assert_eq!(status, None, "waits for a refetch: no key has its kid");
    let refetch = the_call(&h, "/jwks")?;
    answer(&mut h, &refetch, 200, &doc.to_string())?;
    assert_eq!(h.local_reply(ctx).map(|r| r.status), Some(401));
    assert_eq!(get(&mut h, &eddsa()?)?.1, None, "the other key is used");
    Ok(())
}
