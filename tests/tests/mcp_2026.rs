//! MCP revision 2026-07-28 through the `.wasm` in the harness (issue 14): mirrored headers
//! checked against the body, list answers made private, and human approval through
//! `input_required` (a URL-mode elicitation, the page's approval posted to the filter, the
//! client's retry allowed once).

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tessera_harness::Harness;
use tessera_tests::{approval_token, bearer, harness_with, post_mcp, AGENTS};

const V: &str = "2026-07-28";
const PAGE: &str = "https://approve.example.com/approve";
const RECEIVER: &str = "/.well-known/tessera/approvals";

fn harness() -> Result<Harness> {
    harness_with(|c| c["approval"]["page"] = json!(PAGE))
}

/// A 2026-07-28 request: `_meta` with the version, client info and capabilities (URL
/// elicitation when `url`).
fn modern(id: u64, method: &str, mut params: Value, url: bool) -> Value {
    let caps = if url {
        json!({"elicitation": {"url": {}}})
    } else {
        json!({})
    };
    params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": V,
                             "io.modelcontextprotocol/clientCapabilities": caps,
                             "io.modelcontextprotocol/clientInfo": {"name": "probe", "version": "9"}});
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

fn transfer(id: u64, state: Option<&str>) -> Value {
    let mut params = json!({"name": "transfer_funds",
                            "arguments": {"amount": 500, "to_account": "EXT-42"}});
    if let Some(s) = state {
        params["requestState"] = json!(s);
        params["inputResponses"] = json!({"tessera_approval": {"action": "accept"}});
    }
    modern(id, "tools/call", params, true)
}

/// POSTs a 2026-07-28 message with its mirrored headers (`name`: `Mcp-Name`): the context,
/// and the filter's reply (status, JSON) when it answered itself.
fn send(h: &mut Harness, body: &Value, name: Option<&str>) -> Result<(u32, Option<(u32, Value)>)> {
    let method = body["method"].as_str().unwrap_or_default().to_string();
    let mut headers = vec![("mcp-protocol-version", V), ("mcp-method", method.as_str())];
    if let Some(n) = name {
        headers.push(("mcp-name", n));
    }
    let (ctx, status) = post_mcp(h, &payer()?, &headers, body)?;
    let reply = status.map(|s| {
        let json = h
            .local_reply(ctx)
            .and_then(|r| serde_json::from_slice(&r.body).ok())
            .unwrap_or(Value::Null);
        (s, json)
    });
    Ok((ctx, reply))
}

fn payer() -> Result<String> {
    bearer(json!({"iss": AGENTS, "sub": "agent-pay", "scope": "payments:write"}))
}

/// The page posts an approval to the filter's receiver: the status of the filter's answer.
fn post_approval(h: &mut Harness, approval: &str) -> Result<u32> {
    let ctx = h.new_http()?;
    let len = approval.len().to_string();
    h.request_headers(
        ctx,
        &[
            (":method", "POST"),
            (":path", RECEIVER),
            (":authority", "api.example.com"),
            ("content-type", "application/jwt"),
            ("content-length", &len),
        ],
        false,
    )?;
    h.request_body(ctx, approval.as_bytes(), true)?;
    let status = h
        .local_reply(ctx)
        .map(|r| r.status)
        .context("answered by the filter")?;
    h.done(ctx)?;
    Ok(status)
}

/// Asks for the transfer that needs approval: the `requestState` and the call's digest of the
/// `input_required` answer.
fn ask(h: &mut Harness) -> Result<(String, String)> {
    let (_, reply) = send(h, &transfer(1, None), Some("transfer_funds"))?;
    let result = reply.context("asked")?.1["result"].clone();
    let field = |v: &Value, what: &str| v.as_str().map(str::to_string).context(what.to_string());
    Ok((
        field(&result["requestState"], "state")?,
        field(&result["_meta"]["tessera.dev/approval"]["digest"], "digest")?,
    ))
}

#[test]
fn a_call_needing_approval_asks_the_person_through_input_required_then_runs_once() -> Result<()> {
    let mut h = harness()?;
    let (ctx, reply) = send(&mut h, &transfer(1, None), Some("transfer_funds"))?;
    let (status, reply) = reply.context("answered by the filter")?;
    h.done(ctx)?;
    assert_eq!(status, 200, "{reply}");
    let result = &reply["result"];
    assert_eq!(result["resultType"], "input_required", "{reply}");
    let elicit = &result["inputRequests"]["tessera_approval"];
    assert_eq!(elicit["method"], "elicitation/create");
    assert_eq!(elicit["params"]["mode"], "url");
    let digest = result["_meta"]["tessera.dev/approval"]["digest"]
        .as_str()
        .context("digest")?
        .to_string();
    assert_eq!(
        elicit["params"]["url"],
        json!(format!("{PAGE}?digest={digest}"))
    );
    let state = result["requestState"]
        .as_str()
        .context("state")?
        .to_string();
    assert!(state.ends_with(&digest), "{state}");

    // The retry before anyone approved: asked again, nothing forwarded.
    let (ctx, reply) = send(&mut h, &transfer(2, Some(&state)), Some("transfer_funds"))?;
    assert_eq!(
        reply.map(|r| r.1["result"]["resultType"].clone()),
        Some(json!("input_required"))
    );
    h.done(ctx)?;

    // The page posts the approval; the retry (a new id, our state) is forwarded, without the
    // state and the answers, which the server never issued.
    let approval = approval_token(&digest, &json!({"jti": "page-1"}))?;
    assert_eq!(post_approval(&mut h, &approval)?, 202);
    let (ctx, reply) = send(&mut h, &transfer(3, Some(&state)), Some("transfer_funds"))?;
    assert_eq!(reply, None, "approved: forwarded");
    let forwarded: Value = serde_json::from_slice(&h.request_body_of(ctx))?;
    assert_eq!(forwarded["params"].get("requestState"), None, "{forwarded}");
    assert_eq!(
        forwarded["params"].get("inputResponses"),
        None,
        "{forwarded}"
    );
    assert_eq!(
        forwarded["params"]["arguments"],
        json!({"amount": 500, "to_account": "EXT-42"})
    );
    assert_eq!(
        h.request_header(ctx, "content-length"),
        Some(h.request_body_of(ctx).len().to_string())
    );
    h.done(ctx)?;

    // Once: the same retry again is not forwarded; the person is asked again (the approval is
    // used), and a declined answer is refused.
    let (ctx, reply) = send(&mut h, &transfer(4, Some(&state)), Some("transfer_funds"))?;
    assert_eq!(
        reply.map(|r| r.1["result"]["resultType"].clone()),
        Some(json!("input_required"))
    );
    h.done(ctx)?;
    let mut declined = transfer(5, Some(&state));
    declined["params"]["inputResponses"]["tessera_approval"]["action"] = json!("decline");
    let (ctx, reply) = send(&mut h, &declined, Some("transfer_funds"))?;
    let (_, reply) = reply.context("refused")?;
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("declined"), "{reply}");
    h.done(ctx)?;
    // A new approval from the page: the call runs once more.
    let again = approval_token(&digest, &json!({"jti": "page-2"}))?;
    assert_eq!(post_approval(&mut h, &again)?, 202);
    let (ctx, reply) = send(&mut h, &transfer(6, Some(&state)), Some("transfer_funds"))?;
    assert_eq!(reply, None, "approved again: forwarded");
    h.done(ctx)?;
    Ok(())
}

#[test]
fn an_approval_is_for_its_call_only_and_the_receiver_takes_only_valid_approvals() -> Result<()> {
    let mut h = harness()?;
    let (state, digest) = ask(&mut h)?;
    // An approval of another call, posted: the retry is still asked for approval.
    assert_eq!(
        post_approval(&mut h, &approval_token("another-call", &json!({}))?)?,
        202
    );
    let (_, reply) = send(&mut h, &transfer(2, Some(&state)), Some("transfer_funds"))?;
    assert_eq!(
        reply.map(|r| r.1["result"]["resultType"].clone()),
        Some(json!("input_required"))
    );
    // Our state on another call (other arguments): that call's own digest decides.
    assert_eq!(
        post_approval(&mut h, &approval_token(&digest, &json!({"jti": "p-2"}))?)?,
        202
    );
    let mut other = transfer(3, Some(&state));
    other["params"]["arguments"]["amount"] = json!(900);
    let (_, reply) = send(&mut h, &other, Some("transfer_funds"))?;
    assert_eq!(
        reply.map(|r| r.1["result"]["resultType"].clone()),
        Some(json!("input_required"))
    );
    // Not an approval, a forged one, and a GET: refused by the receiver.
    assert_eq!(post_approval(&mut h, "not a jwt")?, 400);
    let forged = approval_token(&digest, &json!({"iss": "https://evil.example"}))?;
    assert_eq!(post_approval(&mut h, &forged)?, 400);
    let (ctx, status) = tessera_tests::request(&mut h, "GET", RECEIVER, None, &[])?;
    assert_eq!(status, Some(405));
    h.done(ctx)?;
    Ok(())
}

#[test]
fn older_clients_and_clients_without_url_elicitation_get_approval_required() -> Result<()> {
    let mut h = harness()?;
    // No URL elicitation declared: the approval_required error, as before.
    let mut call = transfer(1, None);
    call["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"] = json!({});
    let (_, reply) = send(&mut h, &call, Some("transfer_funds"))?;
    let (_, reply) = reply.context("refused")?;
    assert_eq!(reply["error"]["code"], -32005, "{reply}");
    // A 2025-11-25 call: the same.
    let legacy = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "transfer_funds", "arguments": {"amount": 500, "to_account": "EXT-42"}}});
    let (ctx, status) = post_mcp(&mut h, &payer()?, &[], &legacy)?;
    assert_eq!(status, Some(200));
    let reply: Value = serde_json::from_slice(&h.local_reply(ctx).context("reply")?.body)?;
    assert_eq!(reply["error"]["code"], -32005, "{reply}");
    Ok(())
}

#[test]
fn mirrored_headers_that_do_not_match_the_body_are_refused_before_the_server() -> Result<()> {
    let mut h = harness()?;
    let read = modern(
        1,
        "tools/call",
        json!({"name": "read_file", "arguments": {"path": "/workspace/a"}}),
        false,
    );
    let agent = bearer(json!({"iss": AGENTS, "sub": "agent-7", "scope": "files:read"}))?;
    let cases: [(&[(&str, &str)], i64); 4] = [
        // Mcp-Name says another tool than the body calls.
        (
            &[
                ("mcp-protocol-version", V),
                ("mcp-method", "tools/call"),
                ("mcp-name", "delete_file"),
            ],
            -32020,
        ),
        // No Mcp-Method.
        (
            &[("mcp-protocol-version", V), ("mcp-name", "read_file")],
            -32020,
        ),
        // An older version header over a 2026-07-28 body.
        (
            &[
                ("mcp-protocol-version", "2025-11-25"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "read_file"),
            ],
            -32020,
        ),
        // Two copies of Mcp-Name: one for the router, one for the server.
        (
            &[
                ("mcp-protocol-version", V),
                ("mcp-method", "tools/call"),
                ("mcp-name", "read_file"),
                ("mcp-name", "delete_file"),
            ],
            0,
        ),
    ];
    for (headers, code) in cases {
        let (ctx, status) = post_mcp(&mut h, &agent, headers, &read)?;
        assert_eq!(status, Some(400), "{headers:?}");
        if code != 0 {
            let reply: Value = serde_json::from_slice(&h.local_reply(ctx).context("reply")?.body)?;
            assert_eq!(
                (reply["error"]["code"].as_i64(), &reply["id"]),
                (Some(code), &json!(1)),
                "{reply}"
            );
        }
        h.done(ctx)?;
    }
    // Matching headers (the name base64-encoded, as clients may send it): forwarded.
    let headers = [
        ("mcp-protocol-version", V),
        ("mcp-method", "tools/call"),
        ("mcp-name", "=?base64?cmVhZF9maWxl?="),
    ];
    let (_, status) = post_mcp(&mut h, &agent, &headers, &read)?;
    assert_eq!(status, None);
    // An unknown version: -32022 with what is supported.
    let mut future = read.clone();
    future["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2099-01-01");
    let headers = [
        ("mcp-protocol-version", "2099-01-01"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "read_file"),
    ];
    let (ctx, status) = post_mcp(&mut h, &agent, &headers, &future)?;
    assert_eq!(status, Some(400));
    let reply: Value = serde_json::from_slice(&h.local_reply(ctx).context("reply")?.body)?;
    assert_eq!(reply["error"]["code"], -32022);
    assert_eq!(
        reply["error"]["data"],
        json!({"supported": [V], "requested": "2099-01-01"})
    );
    Ok(())
}

#[test]
fn a_filtered_list_answer_is_private_to_its_caller() -> Result<()> {
    let mut h = harness()?;
    let agent = bearer(json!({"iss": AGENTS, "sub": "agent-7", "scope": "files:read"}))?;
    let list = modern(5, "tools/list", json!({}), false);
    let headers = [("mcp-protocol-version", V), ("mcp-method", "tools/list")];
    let (ctx, status) = post_mcp(&mut h, &agent, &headers, &list)?;
    assert_eq!(status, None);
    let answer = json!({"jsonrpc": "2.0", "id": 5, "result": {
        "resultType": "complete", "ttlMs": 60000, "cacheScope": "public",
        "tools": [{"name": "read_file", "inputSchema": {"type": "object"}},
                  {"name": "transfer_funds", "inputSchema": {"type": "object"}}]}})
    .to_string();
    let len = answer.len().to_string();
    h.response_headers(
        ctx,
        &[
            (":status", "200"),
            ("content-type", "application/json"),
            ("content-length", &len),
        ],
        false,
    )?;
    h.response_body(ctx, answer.as_bytes(), true)?;
    let seen: Value = serde_json::from_slice(&h.response_body_of(ctx))?;
    assert_eq!(seen["result"]["cacheScope"], "private", "{seen}");
    let names: Vec<&str> = seen["result"]["tools"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["read_file"], "the agent may not pay");
    Ok(())
}

// ---- attacker review of the 2026-07-28 changes: each finding, with a test ----

/// The test configuration plus a `@scope` forbid on workspace secrets (a step-up lifts it).
fn with_secret_scope() -> Result<Harness> {
    harness_with(|c| {
        c["approval"]["page"] = json!(PAGE);
        c["policies"]["secrets.cedar"] = json!(
            "@id(\"secrets-need-scope\")\n@scope(\"secret:read\")\n\
             forbid (principal, action in [Action::\"resources/read\", Action::\"resources/subscribe\"], resource)\n\
             when { context.mcp has uri && context.mcp.uri like \"file:///workspace/secret*\" }\n\
             unless { context.token.scopes.contains(\"secret:read\") };\n"
        );
    })
}

fn listen(id: u64, uris: &[&str]) -> Value {
    modern(
        id,
        "subscriptions/listen",
        json!({"notifications": {"resourceSubscriptions": uris}}),
        false,
    )
}

#[test]
fn a_listen_subscribing_to_a_resource_the_caller_may_not_subscribe_to_is_refused() -> Result<()> {
    let mut h = with_secret_scope()?;
    let user = bearer(json!({"iss": tessera_tests::IDP, "sub": "alice", "groups": ["staff"]}))?;
    let headers = [
        ("mcp-protocol-version", V),
        ("mcp-method", "subscriptions/listen"),
    ];
    // Allowed; refused by policy (-32003); refused for a scope the token lacks (the 403 step-up
    // an MCP client steps up on, as a read would get).
    for (uris, expected) in [
        (&["file:///workspace/guide.md"][..], None),
        (
            &["file:///workspace/guide.md", "file:///private/salaries.csv"][..],
            Some((200, "-32003")),
        ),
        (
            &["file:///workspace/secret.txt"][..],
            Some((403, "insufficient_scope")),
        ),
    ] {
        let (ctx, status) = post_mcp(&mut h, &user, &headers, &listen(1, uris))?;
        assert_eq!(status, expected.map(|e| e.0), "{uris:?}");
        if let Some((_, what)) = expected {
            let body = String::from_utf8(h.local_reply(ctx).context("reply")?.body.clone())?;
            assert!(body.contains(what), "{body}");
        }
        h.done(ctx)?;
    }
    Ok(())
}

#[test]
fn a_stream_never_announces_a_change_the_caller_could_read_only_after_a_step_up() -> Result<()> {
    let mut h = with_secret_scope()?;
    let user = bearer(json!({"iss": tessera_tests::IDP, "sub": "alice", "groups": ["staff"]}))?;
    let headers = [
        ("mcp-protocol-version", V),
        ("mcp-method", "subscriptions/listen"),
    ];
    let (ctx, status) = post_mcp(
        &mut h,
        &user,
        &headers,
        &listen(1, &["file:///workspace/guide.md"]),
    )?;
    assert_eq!(status, None);
    h.response_headers(
        ctx,
        &[(":status", "200"), ("content-type", "text/event-stream")],
        false,
    )?;
    let event = |uri: &str| {
        format!(
            "data: {}\n\n",
            json!({"jsonrpc": "2.0", "method": "notifications/resources/updated",
                                        "params": {"uri": uri}})
        )
    };
    // The server names a sub-resource the caller may read only with the secret:read scope.
    let stream = event("file:///workspace/secret.txt") + &event("file:///workspace/guide.md");
    h.response_body(ctx, stream.as_bytes(), false)?;
    let seen = String::from_utf8(h.response_body_of(ctx))?;
    assert!(!seen.contains("secret.txt"), "{seen}");
    assert!(seen.contains("guide.md"), "{seen}");
    Ok(())
}

#[test]
fn a_mirrored_name_that_is_not_plain_ascii_must_come_base64_encoded() -> Result<()> {
    let mut h = harness()?;
    let agent = bearer(json!({"iss": AGENTS, "sub": "agent-7", "scope": "files:read"}))?;
    let call = modern(
        1,
        "tools/call",
        json!({"name": "café", "arguments": {}}),
        false,
    );
    let raw = [
        ("mcp-protocol-version", V),
        ("mcp-method", "tools/call"),
        ("mcp-name", "café"),
    ];
    let (ctx, status) = post_mcp(&mut h, &agent, &raw, &call)?;
    assert_eq!(status, Some(400));
    let reply: Value = serde_json::from_slice(&h.local_reply(ctx).context("reply")?.body)?;
    assert_eq!(reply["error"]["code"], -32020, "{reply}");
    Ok(())
}

#[test]
fn re_posting_an_older_approval_does_not_evict_a_fresh_one() -> Result<()> {
    let mut h = harness()?;
    let (state, digest) = ask(&mut h)?;
    let now = tessera_tests::now_s();
    // A first approval, used by the call.
    let older = approval_token(
        &digest,
        &json!({"jti": "older", "iat": now - 100, "exp": now + 20}),
    )?;
    assert_eq!(post_approval(&mut h, &older)?, 202);
    let (ctx, reply) = send(&mut h, &transfer(2, Some(&state)), Some("transfer_funds"))?;
    assert_eq!(reply, None);
    h.done(ctx)?;
    // The person approves the call again; someone re-posts the used first approval.
    let fresh = approval_token(
        &digest,
        &json!({"jti": "fresh", "iat": now, "exp": now + 200}),
    )?;
    assert_eq!(post_approval(&mut h, &fresh)?, 202);
    assert_eq!(post_approval(&mut h, &older)?, 202);
    let (ctx, reply) = send(&mut h, &transfer(3, Some(&state)), Some("transfer_funds"))?;
    assert_eq!(reply, None, "the fresh approval is still there");
    h.done(ctx)?;
    Ok(())
}
