//! Single-use tokens, human approval and expiring shared-data entries, through the release `.wasm`
//! in the harness: state that spans requests (the proxy's shared data), the clock and the tick.

use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use tessera_core::approval::once_key;
use tessera_harness::Harness;
use tessera_tests::{
    mint, now_s, post_mcp, test_config, wasm_path, AGENTS, APPROVALS, APPROVAL_AUDIENCE, IDP,
};

fn harness() -> Result<Harness> {
    harness_with(test_config()?)
}

fn harness_with(config: Value) -> Result<Harness> {
    let mut h = Harness::load(wasm_path()).context("load the module (cargo xtask wasm)")?;
    assert!(
        h.configure(&config.to_string())?,
        "configure: {:?}",
        h.logs()
    );
    Ok(h)
}

fn bearer(claims: Value) -> Result<String> {
    Ok(format!("Bearer {}", mint("ES256", &claims)?))
}

fn approval(digest: &str, claims: Value) -> Result<String> {
    tessera_tests::approval_token(digest, &claims)
}

/// One GET/POST on an HTTP route: (context, local reply status if any).
fn http(
    h: &mut Harness,
    method: &str,
    path: &str,
    auth: &str,
    extra: &[(&str, &str)],
) -> Result<(u32, Option<u32>)> {
    tessera_tests::request(h, method, path, Some(auth), extra)
}

fn reply_json(h: &Harness, ctx: u32) -> Value {
    h.local_reply(ctx)
        .and_then(|r| serde_json::from_slice(&r.body).ok())
        .unwrap_or(Value::Null)
}

fn www_authenticate(h: &Harness, ctx: u32) -> String {
    h.local_reply(ctx)
        .and_then(|r| r.header("www-authenticate").map(str::to_string))
        .unwrap_or_default()
}

fn transfer(id: u64, amount: i64, to: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": "transfer_funds", "arguments": {"amount": amount, "to_account": to}}})
}

// ---- single-use tokens ----------------------------------------------------------------------

#[test]
fn a_single_use_token_is_accepted_once_then_401_even_from_the_token_cache() -> Result<()> {
    let mut h = harness()?;
    let auth = bearer(
        json!({"iss": AGENTS, "sub": "agent-7", "scope": "orders:read",
                             "single_use": true, "jti": "once-1"}),
    )?;
    let (ctx, status) = http(&mut h, "GET", "/orders/1", &auth, &[])?;
    assert_eq!(
        status,
        None,
        "first use is forwarded: {:?}",
        h.local_reply(ctx)
    );
    h.done(ctx)?;
    // The second request finds the verification in the token cache; the jti record still refuses.
    for _ in 0..2 {
        let (ctx, status) = http(&mut h, "GET", "/orders/1", &auth, &[])?;
        assert_eq!(status, Some(401));
        assert_eq!(
            www_authenticate(&h, ctx),
            "Bearer error=\"invalid_token\", error_description=\"token already used\", \
             resource_metadata=\"https://api.example.com/.well-known/oauth-protected-resource/mcp\""
        );
        assert_eq!(reply_json(&h, ctx)["error"], "invalid_token");
        h.done(ctx)?;
    }
    assert_eq!(h.metric("tessera.decisions.allow"), Some(1));
    assert_eq!(h.metric("tessera.decisions.unauthenticated"), Some(2));
    Ok(())
}

#[test]
fn a_single_use_token_is_not_consumed_by_a_denied_request() -> Result<()> {
    let mut h = harness()?;
    // Only orders:read: a POST is denied, which leaves the token for the GET it was meant for.
    let auth = bearer(
        json!({"iss": AGENTS, "sub": "agent-7", "scope": "orders:read",
                             "single_use": true, "jti": "once-2"}),
    )?;
    let (_, status) = http(&mut h, "POST", "/orders", &auth, &[])?;
    assert_eq!(status, Some(403));
    let (_, status) = http(&mut h, "GET", "/orders/1", &auth, &[])?;
    assert_eq!(status, None);
    let (_, status) = http(&mut h, "GET", "/orders/1", &auth, &[])?;
    assert_eq!(status, Some(401));
    Ok(())
}

#[test]
fn a_jti_another_worker_recorded_is_refused() -> Result<()> {
    let mut h = harness()?;
    let auth = bearer(
        json!({"iss": AGENTS, "sub": "agent-7", "scope": "orders:read",
                             "single_use": true, "jti": "once-3"}),
    )?;
    // First use on one worker records the jti. Another worker (a second VM over the same shared
    // data) is a second harness holding that record: its own token cache is empty, so it verifies
    // the token afresh, and still refuses it.
    let (_, status) = http(&mut h, "GET", "/orders/1", &auth, &[])?;
    assert_eq!(status, None);
    let mut other = harness()?;
    let key = once_key("token", AGENTS, "once-3");
    let recorded = h
        .shared_data(&key)
        .context("the jti is recorded in shared data")?;
    other.set_shared_data(&key, recorded);
    let (_, status) = http(&mut other, "GET", "/orders/1", &auth, &[])?;
    assert_eq!(status, Some(401), "the other worker sees the record");
    Ok(())
}

#[test]
fn a_single_use_token_on_an_mcp_route_is_used_up_when_its_body_is_forwarded() -> Result<()> {
    let mut h = harness()?;
    let auth = bearer(
        json!({"iss": AGENTS, "sub": "agent-7", "scope": "files:read",
                             "single_use": true, "jti": "once-mcp"}),
    )?;
    let secret = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "read_file", "arguments": {"path": "/etc/secret"}}});
    let (_, status) = post_mcp(&mut h, &auth, &[], &secret)?;
    assert_eq!(
        status,
        Some(200),
        "refused call: a JSON-RPC error, the token not used up"
    );
    let read = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "read_file", "arguments": {"path": "/workspace/a"}}});
    let (ctx, status) = post_mcp(&mut h, &auth, &[], &read)?;
    assert_eq!(status, None, "{:?}", reply_json(&h, ctx));
    let (ctx, status) = post_mcp(&mut h, &auth, &[], &read)?;
    assert_eq!(status, Some(401));
    assert!(www_authenticate(&h, ctx).contains("token already used"));
    Ok(())
}

#[test]
fn a_single_use_token_without_jti_or_with_a_non_boolean_claim_gets_401() -> Result<()> {
    let mut h = harness()?;
    let no_jti = bearer(
        json!({"iss": AGENTS, "sub": "agent-7", "scope": "orders:read",
                               "single_use": true}),
    )?;
    let (ctx, status) = http(&mut h, "GET", "/orders/1", &no_jti, &[])?;
    assert_eq!(status, Some(401));
    assert!(
        www_authenticate(&h, ctx).contains("a single-use token needs a jti"),
        "{}",
        www_authenticate(&h, ctx)
    );
    let odd = bearer(
        json!({"iss": AGENTS, "sub": "agent-7", "scope": "orders:read",
                            "single_use": "yes", "jti": "j"}),
    )?;
    let (ctx, status) = http(&mut h, "GET", "/orders/1", &odd, &[])?;
    assert_eq!(status, Some(401));
    assert!(www_authenticate(&h, ctx).contains("single_use"));
    // Without the claim (or false) a token with a jti is reusable as before.
    let plain = bearer(
        json!({"iss": AGENTS, "sub": "agent-7", "scope": "orders:read",
                              "single_use": false, "jti": "j2"}),
    )?;
    for _ in 0..2 {
        assert_eq!(http(&mut h, "GET", "/orders/1", &plain, &[])?.1, None);
    }
    Ok(())
}

#[test]
fn a_single_use_record_lives_until_exp_plus_skew_then_the_tick_clears_it() -> Result<()> {
    let mut h = harness()?;
    assert!(h.tick_period().is_some(), "the filter sweeps on a timer");
    let now = now_s();
    let auth = bearer(
        json!({"iss": AGENTS, "sub": "agent-7", "scope": "orders:read",
                             "single_use": true, "jti": "once-4", "iat": now, "exp": now + 30}),
    )?;
    assert_eq!(http(&mut h, "GET", "/orders/1", &auth, &[])?.1, None);
    let key = once_key("token", AGENTS, "once-4");
    h.tick()?;
    assert!(
        !h.shared_data(&key).unwrap_or_default().is_empty(),
        "kept while the token could verify"
    );
    // exp + clock skew (60 s) has passed: the token no longer verifies, the record can go.
    h.advance(Duration::from_secs(30 + 60 + 1));
    h.tick()?;
    assert_eq!(
        h.shared_data(&key),
        Some(vec![]),
        "cleared (the ABI has no delete)"
    );
    Ok(())
}

// ---- MCP session expiry -----------------------------------------------------------------------

/// A token that outlives the clock advances of a session test (max_ttl_s is 3600).
fn long_lived(iss: &str, sub: &str) -> Result<String> {
    bearer(json!({"iss": iss, "sub": sub, "exp": now_s() + 3600}))
}

fn init_session(h: &mut Harness, auth: &str, session: &str) -> Result<()> {
    assert_eq!(tessera_tests::initialize_session(h, auth, session)?, "200");
    Ok(())
}

#[test]
fn an_idle_mcp_session_expires_and_the_tick_clears_its_binding() -> Result<()> {
    let mut config = test_config()?;
    config["limits"] = json!({"session_idle_s": 600, "session_ttl_s": 3600});
    let mut h = harness_with(config)?;
    let alice = long_lived(IDP, "alice")?;
    let ping = json!({"jsonrpc": "2.0", "id": 2, "method": "ping"});
    init_session(&mut h, &alice, "s-idle")?;
    let key = &tessera_core::session::session_key("tools", "s-idle");
    assert!(h.shared_data(key).is_some_and(|v| !v.is_empty()));

    // Used within the idle period: still bound, and the use keeps it alive.
    h.advance(Duration::from_secs(500));
    assert_eq!(
        post_mcp(&mut h, &alice, &[("mcp-session-id", "s-idle")], &ping)?.1,
        None
    );
    h.advance(Duration::from_secs(500));
    h.tick()?;
    assert_eq!(
        post_mcp(&mut h, &alice, &[("mcp-session-id", "s-idle")], &ping)?.1,
        None,
        "1000 s after creation but 500 s after its last use"
    );

    // Idle for longer than session_idle_s: unknown (404), and the tick frees its value.
    h.advance(Duration::from_secs(601));
    let (ctx, status) = post_mcp(&mut h, &alice, &[("mcp-session-id", "s-idle")], &ping)?;
    assert_eq!(status, Some(404), "{:?}", reply_json(&h, ctx));
    h.tick()?;
    assert_eq!(h.shared_data(key), Some(vec![]));
    Ok(())
}

#[test]
fn an_mcp_session_in_use_still_ends_at_its_absolute_lifetime() -> Result<()> {
    let mut config = test_config()?;
    config["limits"] = json!({"session_idle_s": 400, "session_ttl_s": 1000});
    let mut h = harness_with(config)?;
    let alice = long_lived(IDP, "alice")?;
    let ping = json!({"jsonrpc": "2.0", "id": 2, "method": "ping"});
    init_session(&mut h, &alice, "s-abs")?;
    for _ in 0..3 {
        h.advance(Duration::from_secs(300));
        assert_eq!(
            post_mcp(&mut h, &alice, &[("mcp-session-id", "s-abs")], &ping)?.1,
            None
        );
    }
    h.advance(Duration::from_secs(101));
    assert_eq!(
        post_mcp(&mut h, &alice, &[("mcp-session-id", "s-abs")], &ping)?.1,
        Some(404),
        "1001 s after creation"
    );
    // A new initialize may bind the same id again (to whoever creates it now).
    let bob = long_lived(IDP, "bob")?;
    init_session(&mut h, &bob, "s-abs")?;
    assert_eq!(
        post_mcp(&mut h, &bob, &[("mcp-session-id", "s-abs")], &ping)?.1,
        None
    );
    assert_eq!(
        post_mcp(&mut h, &alice, &[("mcp-session-id", "s-abs")], &ping)?.1,
        Some(403)
    );
    Ok(())
}

#[test]
fn session_lifetimes_of_zero_are_a_configuration_error() -> Result<()> {
    let mut config = test_config()?;
    config["limits"] = json!({"session_idle_s": 0});
    let mut h = Harness::load(wasm_path())?;
    assert!(!h.configure(&config.to_string())?);
    assert!(
        h.find_log("limits.session_idle_s").is_some(),
        "{:?}",
        h.logs()
    );
    Ok(())
}

// ---- human approval: MCP ----------------------------------------------------------------------

fn payer() -> Result<String> {
    bearer(json!({"iss": AGENTS, "sub": "agent-pay", "scope": "payments:write"}))
}

/// Asks for a transfer that needs approval; returns the JSON-RPC error's `data.approval`.
fn ask(h: &mut Harness, auth: &str, call: &Value) -> Result<Value> {
    let (ctx, status) = post_mcp(h, auth, &[], call)?;
    assert_eq!(status, Some(200), "a JSON-RPC error answers the call");
    let reply = reply_json(h, ctx);
    assert_eq!(reply["id"], call["id"], "{reply}");
    assert_eq!(reply["error"]["code"], -32005, "{reply}");
    assert_eq!(
        reply["error"]["data"]["policies"],
        json!(["external-transfers-need-approval"])
    );
    h.done(ctx)?;
    Ok(reply["error"]["data"]["approval"].clone())
}

/// The digest is RFC 8785 (JCS), which writes numbers as IEEE doubles: 2^53 and 2^53 + 1 would
/// share a digest, so an approval of one would approve the other. Such a call is not approvable:
/// its denial stands.
#[test]
fn a_call_with_an_integer_jcs_cannot_write_exactly_is_denied_without_an_approval_offer(
) -> Result<()> {
    // Without the hard limit of 1000, so that only the approval forbid holds the call.
    let mut config = test_config()?;
    let mcp = config["policies"]["mcp.cedar"]
        .as_str()
        .context("mcp.cedar")?
        .replace(
            "when { context.mcp.arguments.amount > 1000 };",
            "when { false };",
        );
    config["policies"]["mcp.cedar"] = json!(mcp);
    let mut h = harness_with(config)?;
    let exact = transfer(8, (1 << 53) - 1, "EXT-42");
    ask(&mut h, &payer()?, &exact)?;
    let call = transfer(9, 1 << 53, "EXT-42");
    let (ctx, status) = post_mcp(&mut h, &payer()?, &[], &call)?;
    assert_eq!(status, Some(200), "a JSON-RPC error answers the call");
    let reply = reply_json(&h, ctx);
    assert_eq!(
        reply["error"]["code"], -32003,
        "forbidden, not approvable: {reply}"
    );
    assert_eq!(reply["error"]["data"]["approval"], Value::Null, "{reply}");
    Ok(())
}

#[test]
fn an_mcp_call_needing_approval_is_allowed_once_with_an_approval_of_exactly_that_call() -> Result<()>
{
    let mut h = harness()?;
    let auth = payer()?;
    let call = transfer(7, 500, "EXT-42");
    let asked = ask(&mut h, &auth, &call)?;
    let digest = asked["digest"].as_str().context("digest")?.to_string();
    assert_eq!(asked["header"], "x-tessera-approval");
    assert_eq!(asked["issuer"], APPROVALS);
    assert_eq!(
        asked["request"],
        json!({"principal": "Agent::\"agents|agent-pay\"", "action": "call:transfer_funds",
               "resource": "Tool::\"transfer_funds\"", "route": "tools",
               "arguments": {"amount": 500, "to_account": "EXT-42"},
               "issuer": AGENTS, "on_behalf_of": "agents|agent-pay", "actors": [], "task": null})
    );
    // The digest is SHA-256 of the RFC 8785 (JCS) form of `request`.
    let canonical = r#"{"action":"call:transfer_funds","actors":[],"arguments":{"amount":500,"to_account":"EXT-42"},"issuer":"https://agents.demo.tessera.dev","on_behalf_of":"agents|agent-pay","principal":"Agent::\"agents|agent-pay\"","resource":"Tool::\"transfer_funds\"","route":"tools","task":null}"#;
    assert_eq!(
        digest,
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(tessera_core::cache::digest(canonical))
    );

    let approved = approval(&digest, json!({}))?;
    let header = [("x-tessera-approval", approved.as_str())];
    let (ctx, status) = post_mcp(&mut h, &auth, &header, &call)?;
    assert_eq!(
        status,
        None,
        "approved: forwarded {:?}",
        reply_json(&h, ctx)
    );
    assert_eq!(h.request_body_of(ctx), call.to_string().into_bytes());
    assert_eq!(
        h.request_header(ctx, "x-tessera-approval"),
        None,
        "the approval is not forwarded"
    );
    h.done(ctx)?;

    // The same approval again: used.
    let (ctx, status) = post_mcp(&mut h, &auth, &header, &call)?;
    assert_eq!(status, Some(200));
    let reply = reply_json(&h, ctx);
    assert_eq!(reply["error"]["code"], -32005, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("approval already used")),
        "{reply}"
    );
    Ok(())
}

#[test]
fn an_approval_does_not_cover_other_arguments_another_principal_or_a_forged_signature() -> Result<()>
{
    let mut h = harness()?;
    let auth = payer()?;
    let asked = ask(&mut h, &auth, &transfer(1, 500, "EXT-42"))?;
    let digest = asked["digest"].as_str().context("digest")?.to_string();
    let approved = approval(&digest, json!({}))?;
    let header = [("x-tessera-approval", approved.as_str())];

    // Other arguments: approval still required, and the presented approval is not consumed.
    let (ctx, _) = post_mcp(&mut h, &auth, &header, &transfer(2, 900, "EXT-42"))?;
    let reply = reply_json(&h, ctx);
    assert_eq!(reply["error"]["code"], -32005, "{reply}");
    assert!(reply["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("another request")));
    h.done(ctx)?;

    // Another principal with the same arguments.
    let other = bearer(json!({"iss": AGENTS, "sub": "agent-other", "scope": "payments:write"}))?;
    let (ctx, _) = post_mcp(&mut h, &other, &header, &transfer(3, 500, "EXT-42"))?;
    assert_eq!(reply_json(&h, ctx)["error"]["code"], -32005);
    h.done(ctx)?;

    // A token of the approver's shape signed by a bearer issuer's key is not an approval.
    let forged = mint(
        "EdDSA",
        &json!({"iss": APPROVALS, "aud": APPROVAL_AUDIENCE,
        "sub": "mallory", "jti": "f1", "approval_digest": digest}),
    )?;
    let (ctx, _) = post_mcp(
        &mut h,
        &auth,
        &[("x-tessera-approval", &forged)],
        &transfer(4, 500, "EXT-42"),
    )?;
    let reply = reply_json(&h, ctx);
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("approval rejected")),
        "{reply}"
    );
    h.done(ctx)?;

    // An approval that lives longer than max_ttl_s, or has no jti, is rejected.
    for bad in [json!({"exp": now_s() + 3000}), json!({"jti": null})] {
        let a = approval(&digest, bad)?;
        let (ctx, _) = post_mcp(
            &mut h,
            &auth,
            &[("x-tessera-approval", &a)],
            &transfer(5, 500, "EXT-42"),
        )?;
        assert_eq!(reply_json(&h, ctx)["error"]["code"], -32005);
        h.done(ctx)?;
    }

    // The original approval was never consumed by those attempts: it still works, once.
    let (_, status) = post_mcp(&mut h, &auth, &header, &transfer(1, 500, "EXT-42"))?;
    assert_eq!(status, None);
    Ok(())
}

#[test]
fn approval_cannot_lift_a_hard_forbid_or_a_missing_permit() -> Result<()> {
    let mut h = harness()?;
    let auth = payer()?;
    // 5000 to an external account: also over the hard limit; a plain refusal naming both.
    let (ctx, _) = post_mcp(&mut h, &auth, &[], &transfer(1, 5000, "EXT-42"))?;
    let reply = reply_json(&h, ctx);
    assert_eq!(reply["error"]["code"], -32003, "{reply}");
    assert_eq!(
        reply["error"]["data"]["policies"],
        json!([
            "external-transfers-need-approval",
            "large-transfers-forbidden"
        ])
    );
    h.done(ctx)?;
    // No payments scope: no permit, so an approval could not allow it either.
    let no_scope = bearer(json!({"iss": AGENTS, "sub": "agent-pay", "scope": "files:read"}))?;
    let (ctx, _) = post_mcp(&mut h, &no_scope, &[], &transfer(2, 500, "EXT-42"))?;
    assert_eq!(reply_json(&h, ctx)["error"]["code"], -32003);
    Ok(())
}

// ---- human approval: HTTP ---------------------------------------------------------------------

#[test]
fn an_http_request_needing_approval_gets_403_approval_required_then_is_allowed_once() -> Result<()>
{
    let mut h = harness()?;
    let auth = bearer(json!({"iss": AGENTS, "sub": "agent-9", "scope": "orders:write"}))?;
    let (ctx, status) = http(&mut h, "POST", "/orders/42/refund", &auth, &[])?;
    assert_eq!(status, Some(403));
    let body = reply_json(&h, ctx);
    assert_eq!(body["error"], "approval_required", "{body}");
    assert_eq!(body["policies"], json!(["agent-refunds-need-approval"]));
    assert_eq!(
        body["approval"]["request"],
        json!({"principal": "Agent::\"agents|agent-9\"", "action": "POST",
               "resource": "Route::\"orders\"", "route": "orders", "path": "/orders/42/refund",
               "issuer": AGENTS, "on_behalf_of": "agents|agent-9", "actors": [], "task": null})
    );
    let digest = body["approval"]["digest"]
        .as_str()
        .context("digest")?
        .to_string();
    h.done(ctx)?;

    let approved = approval(&digest, json!({"sub": "bob@example.com"}))?;
    let header = [("x-tessera-approval", approved.as_str())];
    // Another order's refund: not this approval.
    let (ctx, status) = http(&mut h, "POST", "/orders/43/refund", &auth, &header)?;
    assert_eq!(status, Some(403));
    assert_eq!(
        reply_json(&h, ctx)["reason"],
        "the approval is for another request"
    );
    h.done(ctx)?;
    let (ctx, status) = http(&mut h, "POST", "/orders/42/refund", &auth, &header)?;
    assert_eq!(status, None, "{:?}", reply_json(&h, ctx));
    assert_eq!(
        h.request_header(ctx, "x-tessera-principal").as_deref(),
        Some("Agent::\"agents|agent-9\"")
    );
    h.done(ctx)?;
    let (ctx, status) = http(&mut h, "POST", "/orders/42/refund", &auth, &header)?;
    assert_eq!(status, Some(403));
    let body = reply_json(&h, ctx);
    assert_eq!(
        (body["error"].as_str(), body["reason"].as_str()),
        (Some("approval_required"), Some("approval already used"))
    );
    Ok(())
}

#[test]
fn a_body_arriving_while_the_approval_request_is_announced_is_held_not_forwarded() -> Result<()> {
    let mut config = test_config()?;
    config["approval"]["webhook"] = json!({"cluster": "approvals", "path": "/hooks/approval"});
    let mut h = harness_with(config)?;
    let auth = bearer(json!({"iss": AGENTS, "sub": "agent-9", "scope": "orders:write"}))?;
    let ctx = h.new_http()?;
    let action = h.request_headers(
        ctx,
        &[
            (":method", "POST"),
            (":path", "/orders/42/refund"),
            (":authority", "api.example.com"),
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("content-length", "2"),
        ],
        false,
    )?;
    assert_eq!(
        action,
        tessera_harness::Action::Pause,
        "waits for the announcement"
    );
    // The body comes while the announcement is out: held, the request is not let through.
    let action = h.request_body(ctx, b"{}", true)?;
    assert_eq!(
        action,
        tessera_harness::Action::Pause,
        "the body must not pass"
    );
    h.request_trailers(ctx, &[("x-late", "1")])?;
    assert!(!h.request_resumed(ctx));
    let call = h.http_calls().first().cloned().context("announcement")?;
    h.respond_to_call(call.token, 204, &[], b"")?;
    assert_eq!(h.local_reply(ctx).map(|r| r.status), Some(403));
    assert!(!h.request_resumed(ctx), "the refused request was resumed");
    Ok(())
}

#[test]
fn an_approval_request_is_announced_to_the_webhook_cluster() -> Result<()> {
    let mut config = test_config()?;
    config["approval"]["webhook"] = json!({"cluster": "approvals", "path": "/hooks/approval"});
    let mut h = harness_with(config)?;
    let auth = payer()?;
    let (ctx, status) = post_mcp(&mut h, &auth, &[], &transfer(9, 500, "EXT-42"))?;
    // The reply waits for the announcement: a page the client is sent to knows the request.
    assert_eq!(status, None, "answered before the approvers were told");
    let calls = h.http_calls().to_vec();
    assert_eq!(calls.len(), 1, "one announcement");
    let call = &calls[0];
    assert_eq!(call.upstream, "approvals");
    assert_eq!(
        (
            call.header(":method"),
            call.header(":path"),
            call.header(":authority")
        ),
        (Some("POST"), Some("/hooks/approval"), Some("approvals"))
    );
    let sent: Value = serde_json::from_slice(&call.body)?;
    assert_eq!(sent["event"], "approval_required");
    assert_eq!(
        sent["policies"],
        json!(["external-transfers-need-approval"])
    );
    h.respond_to_call(call.token, 204, &[], b"")?;
    assert_eq!(h.local_reply(ctx).map(|r| r.status), Some(200));
    assert_eq!(
        reply_json(&h, ctx)["error"]["data"]["approval"]["digest"],
        sent["approval"]["digest"]
    );
    assert!(!h.request_resumed(ctx), "the refused request was resumed");
    h.done(ctx)?;
    // The webhook failing: the client still gets its answer, and nothing is resumed.
    let (ctx, status) = post_mcp(&mut h, &auth, &[], &transfer(11, 500, "EXT-43"))?;
    assert_eq!(status, None);
    let call = h.http_calls().first().cloned().context("announcement")?;
    h.fail_call(call.token)?;
    assert_eq!(h.local_reply(ctx).map(|r| r.status), Some(200));
    assert!(
        !h.request_resumed(ctx),
        "a webhook answer resumed the request"
    );
    h.done(ctx)?;
    // A plain denial announces nothing.
    let (_, status) = post_mcp(&mut h, &auth, &[], &transfer(10, 5000, "EXT-42"))?;
    assert_eq!(status, Some(200));
    assert!(h.http_calls().is_empty());
    Ok(())
}
