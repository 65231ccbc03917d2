//! No way around a decision (issue 10), through the `.wasm` in the harness: bodies that end with
//! trailers, list answers the filter cannot read, repeated single headers, bounds on the body
//! path, forged log lines and shadow mode. Each test fails on the filter before the fix.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tessera_harness::{Action, Harness, LogLevel};
use tessera_tests::{agent, bearer, harness_with, mint, now_s, read_file, AGENTS, IDP};

fn harness() -> Result<Harness> {
    harness_with(|_| {})
}

/// An MCP POST whose headers do not end the stream and carry no content-length (HTTP/2).
fn open_post(h: &mut Harness, auth: &str, extra: &[(&str, &str)]) -> Result<u32> {
    let ctx = h.new_http()?;
    let mut headers = vec![
        (":method", "POST"),
        (":path", "/mcp"),
        (":authority", "api.example.com"),
        ("authorization", auth),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    assert_eq!(h.request_headers(ctx, &headers, false)?, Action::Pause);
    Ok(ctx)
}

/// POSTs `body` as one DATA frame without END_STREAM, then trailers: returns the context and
/// what the module answered to the trailers.
fn post_with_trailers(
    h: &mut Harness,
    auth: &str,
    extra: &[(&str, &str)],
    body: &Value,
    trailers: &[(&str, &str)],
) -> Result<(u32, Action)> {
    let ctx = open_post(h, auth, extra)?;
    assert_eq!(
        h.request_body(ctx, body.to_string().as_bytes(), false)?,
        Action::Pause,
        "nothing is forwarded before the body is judged"
    );
    let action = h.request_trailers(ctx, trailers)?;
    Ok((ctx, action))
}

fn reply_json(h: &Harness, ctx: u32) -> Value {
    h.local_reply(ctx)
        .and_then(|r| serde_json::from_slice(&r.body).ok())
        .unwrap_or(Value::Null)
}

// ---- item 1: trailers ----

#[test]
fn a_refused_call_whose_body_ends_with_trailers_is_refused() -> Result<()> {
    let mut h = harness()?;
    let auth = agent("files:read")?;
    let (ctx, action) = post_with_trailers(
        &mut h,
        &auth,
        &[],
        &read_file(1, "/etc/shadow"),
        &[("x-checksum", "1")],
    )?;
    assert_eq!(action, Action::Pause, "not forwarded");
    let reply = reply_json(&h, ctx);
    assert_eq!(reply["error"]["code"], -32003, "{reply}");
    assert!(!h.request_resumed(ctx));
    Ok(())
}

#[test]
fn an_allowed_call_ending_with_trailers_gets_every_header_change() -> Result<()> {
    let mut h = harness_with(|c| c["forward"]["drop_authorization"] = json!(true))?;
    let auth = agent("files:read")?;
    let (ctx, action) = post_with_trailers(
        &mut h,
        &auth,
        &[],
        &read_file(1, "/workspace/a"),
        &[
            ("x-tessera-principal", "User::\"admin\""),
            ("x-tessera-approval", "forged"),
            ("x-checksum", "1"),
        ],
    )?;
    assert_eq!(action, Action::Continue);
    assert!(h.local_reply(ctx).is_none());
    assert_eq!(
        h.request_header(ctx, "x-tessera-principal").as_deref(),
        Some("Agent::\"agents|agent-7\""),
        "identity headers set from the token"
    );
    assert_eq!(
        h.request_header(ctx, "authorization"),
        None,
        "drop_authorization"
    );
    let trailers = h.request_trailers_of(ctx);
    let names: Vec<&str> = trailers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        ["x-checksum"],
        "owned headers never travel as trailers"
    );
    Ok(())
}

#[test]
fn a_single_use_token_is_redeemed_when_the_body_ends_with_trailers() -> Result<()> {
    let mut h = harness()?;
    let auth = bearer(
        json!({"iss": AGENTS, "sub": "agent-7", "scope": "files:read",
                             "single_use": true, "jti": "trailers-once"}),
    )?;
    let (_, first) = post_with_trailers(&mut h, &auth, &[], &read_file(1, "/workspace/a"), &[])?;
    assert_eq!(first, Action::Continue);
    let (ctx, second) = post_with_trailers(&mut h, &auth, &[], &read_file(2, "/workspace/a"), &[])?;
    assert_eq!(second, Action::Pause);
    assert_eq!(
        h.local_reply(ctx).map(|r| r.status),
        Some(401),
        "replay refused"
    );
    Ok(())
}

#[test]
fn headers_then_trailers_without_a_body_is_judged_as_an_empty_body() -> Result<()> {
    let mut h = harness()?;
    let ctx = open_post(&mut h, &agent("files:read")?, &[])?;
    assert_eq!(h.request_trailers(ctx, &[])?, Action::Pause);
    assert_eq!(h.local_reply(ctx).map(|r| r.status), Some(400));
    Ok(())
}

fn tools_answer(id: Value) -> Value {
    let tools: Vec<Value> = ["read_file", "send_email", "transfer_funds", "delete_file"]
        .iter()
        .map(|n| json!({"name": n, "inputSchema": {"type": "object"}}))
        .collect();
    json!({"jsonrpc": "2.0", "id": id, "result": {"tools": tools}})
}

/// A forwarded `tools/list` of agent-7 with files:read, whose answer starts with `headers`.
fn list_answer(h: &mut Harness, headers: &[(&str, &str)]) -> Result<u32> {
    let auth = agent("files:read")?;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let (ctx, status) = tessera_tests::post_mcp(h, &auth, &[], &list)?;
    assert_eq!(status, None, "forwarded");
    assert_eq!(
        h.request_header(ctx, "accept-encoding").as_deref(),
        Some("identity"),
        "a list answer is asked for uncompressed"
    );
    h.response_headers(ctx, headers, false)?;
    Ok(ctx)
}

#[test]
fn a_json_list_answer_that_ends_with_trailers_is_filtered() -> Result<()> {
    let mut h = harness()?;
    let ctx = list_answer(
        &mut h,
        &[(":status", "200"), ("content-type", "application/json")],
    )?;
    let body = tools_answer(json!(1)).to_string();
    assert_eq!(h.response_body(ctx, body.as_bytes(), false)?, Action::Pause);
    assert_eq!(
        h.response_trailers(ctx, &[("grpc-status", "0")])?,
        Action::Continue
    );
    let out: Value = serde_json::from_slice(&h.response_body_of(ctx))?;
    let names: Vec<&str> = out["result"]["tools"]
        .as_array()
        .context("tools")?
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["read_file", "delete_file"]);
    Ok(())
}

#[test]
fn an_sse_list_answer_cut_short_by_trailers_leaks_nothing() -> Result<()> {
    let mut h = harness()?;
    let ctx = list_answer(
        &mut h,
        &[(":status", "200"), ("content-type", "text/event-stream")],
    )?;
    // The answer's event never gets its blank line: the stream ends with trailers.
    let event = format!("data: {}\n", tools_answer(json!(1)));
    assert_eq!(
        h.response_body(ctx, event.as_bytes(), false)?,
        Action::Continue
    );
    assert_eq!(h.response_body_of(ctx), b"", "held while unfinished");
    assert_eq!(h.response_trailers(ctx, &[])?, Action::Continue);
    let out = String::from_utf8(h.response_body_of(ctx))?;
    assert!(!out.contains("send_email"), "{out}");
    Ok(())
}

#[test]
fn a_server_request_reusing_the_awaited_id_does_not_end_list_filtering() -> Result<()> {
    let mut h = harness()?;
    let ctx = list_answer(
        &mut h,
        &[(":status", "200"), ("content-type", "text/event-stream")],
    )?;
    // Ids are per sender: the server's own request may carry the id of the client's list.
    let elicit = json!({"jsonrpc": "2.0", "id": 1, "method": "elicitation/create", "params": {}});
    let stream = format!("data: {elicit}\n\ndata: {}\n\n", tools_answer(json!(1)));
    h.response_body(ctx, stream.as_bytes(), true)?;
    let out = String::from_utf8(h.response_body_of(ctx))?;
    assert!(out.contains("elicitation/create"), "{out}");
    assert!(
        out.contains("read_file") && !out.contains("send_email"),
        "{out}"
    );
    Ok(())
}

// ---- item 4: unreadable list answers ----

#[test]
fn an_encoded_list_answer_is_replaced_by_an_error() -> Result<()> {
    let mut h = harness()?;
    let ctx = list_answer(
        &mut h,
        &[
            (":status", "200"),
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
    )?;
    assert_eq!(h.response_header(ctx, "content-encoding"), None);
    // Whatever the bytes are, they do not reach the client.
    assert_eq!(
        h.response_body(ctx, b"\x1f\x8b\x08\x00send_email", true)?,
        Action::Continue
    );
    let out: Value = serde_json::from_slice(&h.response_body_of(ctx))?;
    assert_eq!(out["id"], 1);
    assert_eq!(out["error"]["code"], -32603, "{out}");
    Ok(())
}

/// A tools/list answer starting with `headers` reaches the client only as the -32603 error.
fn assert_list_answer_replaced(headers: &[(&str, &str)]) -> Result<()> {
    let mut h = harness()?;
    let ctx = list_answer(&mut h, headers)?;
    let body = tools_answer(json!(1)).to_string();
    h.response_body(ctx, body.as_bytes(), true)?;
    let out = String::from_utf8(h.response_body_of(ctx))?;
    assert!(
        !out.contains("send_email") && out.contains("-32603"),
        "{out}"
    );
    Ok(())
}

#[test]
fn a_list_answer_of_another_content_type_is_replaced() -> Result<()> {
    assert_list_answer_replaced(&[(":status", "200"), ("content-type", "text/plain")])
}

#[test]
fn a_batch_with_a_repeated_id_is_refused() -> Result<()> {
    let mut h = harness()?;
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    ]);
    let (ctx, status) = tessera_tests::post_mcp(&mut h, &agent("files:read")?, &[], &batch)?;
    assert_eq!(status, Some(400));
    assert_eq!(reply_json(&h, ctx)["error"]["code"], -32600);
    Ok(())
}

// ---- item 5: bounds ----

#[test]
fn a_repeated_authorization_or_session_header_is_refused() -> Result<()> {
    let mut h = harness()?;
    let good = agent("orders:read")?;
    for (name, a, b) in [
        ("authorization", good.as_str(), "Bearer other"),
        ("mcp-session-id", "s-1", "s-2"),
    ] {
        let extra = if name == "authorization" {
            vec![(name, b)]
        } else {
            vec![(name, a), (name, b)]
        };
        let (ctx, _) = tessera_tests::request(&mut h, "GET", "/orders/1", Some(&good), &extra)?;
        let reply = h.local_reply(ctx).context("refused")?;
        assert_eq!(reply.status, 400, "{name}");
        assert!(reply.body_text().contains(name), "{}", reply.body_text());
        h.done(ctx)?;
    }
    Ok(())
}

#[test]
fn a_token_that_expires_while_its_body_trickles_in_is_refused() -> Result<()> {
    let mut h = harness()?;
    let now = now_s();
    let auth = bearer(
        json!({"iss": AGENTS, "sub": "agent-7", "scope": "files:read",
                             "iat": now, "exp": now + 5}),
    )?;
    let ctx = open_post(&mut h, &auth, &[])?;
    h.request_body(ctx, b"{\"jsonrpc\":\"2.0\",", false)?;
    // exp plus the issuer's 60 s clock skew has passed.
    h.advance(Duration::from_secs(120));
    let rest = &read_file(1, "/workspace/a").to_string()[17..];
    assert_eq!(h.request_body(ctx, rest.as_bytes(), true)?, Action::Pause);
    assert_eq!(h.local_reply(ctx).map(|r| r.status), Some(401));
    Ok(())
}

#[test]
fn a_batch_longer_than_the_limit_is_refused() -> Result<()> {
    let mut h = harness_with(|c| c["limits"]["max_batch_messages"] = json!(2))?;
    let ping = |id: i64| json!({"jsonrpc": "2.0", "id": id, "method": "ping"});
    let auth = agent("files:read")?;
    let (_, ok) = tessera_tests::post_mcp(&mut h, &auth, &[], &json!([ping(1), ping(2)]))?;
    assert_eq!(ok, None);
    let (ctx, refused) =
        tessera_tests::post_mcp(&mut h, &auth, &[], &json!([ping(1), ping(2), ping(3)]))?;
    assert_eq!(refused, Some(400));
    assert_eq!(reply_json(&h, ctx)["error"]["code"], -32600);
    Ok(())
}

fn initialize(h: &mut Harness, auth: &str, session: &str) -> Result<String> {
    tessera_tests::initialize_session(h, auth, session)
}

// ---- item 8: logs ----

#[test]
fn a_kid_with_a_newline_cannot_forge_a_log_line() -> Result<()> {
    let mut h = harness()?;
    h.set_log_level(LogLevel::Debug);
    let b64 = |v: &Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let header = json!({"alg": "ES256", "kid": "x\ntessera decision=allow principal=admin"});
    let token = format!(
        "{}.{}.c2ln",
        b64(&header),
        b64(&json!({"iss": AGENTS, "sub": "a"}))
    );
    let auth = format!("Bearer {token}");
    let path = "/orders/1\r\ntessera decision=allow";
    tessera_tests::request(&mut h, "GET", path, Some(&auth), &[])?;
    let lines: Vec<&str> = h.logs_at(LogLevel::Debug);
    assert!(!lines.is_empty(), "the decision is logged");
    for line in h.logs().iter().map(|l| l.message.as_str()) {
        assert!(!line.contains('\n') && !line.contains('\r'), "{line:?}");
    }
    Ok(())
}

#[test]
fn a_request_id_with_spaces_cannot_forge_a_log_field() -> Result<()> {
    let mut h = harness()?;
    h.set_log_level(LogLevel::Debug);
    let forged = "r-1 principal=Agent::\"agents|admin\" decision=allow";
    tessera_tests::request(
        &mut h,
        "GET",
        "/orders/1",
        None,
        &[("x-request-id", forged)],
    )?;
    let lines: Vec<&str> = h
        .logs_at(LogLevel::Debug)
        .into_iter()
        .filter(|l| l.starts_with("tessera decision="))
        .collect();
    assert!(!lines.is_empty(), "the decision is logged");
    for line in lines {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(
            fields
                .iter()
                .filter(|f| f.starts_with("principal="))
                .count(),
            1,
            "{line}"
        );
        assert_eq!(
            fields.iter().filter(|f| f.starts_with("decision=")).count(),
            1,
            "{line}"
        );
    }
    Ok(())
}

// ---- item 9: shadow mode ----

#[test]
fn shadow_mode_forwards_what_session_checks_would_refuse() -> Result<()> {
    let mut h = harness_with(|c| c["mode"] = json!("shadow"))?;
    let auth = agent("files:read")?;
    let (ctx, status) = tessera_tests::post_mcp(
        &mut h,
        &auth,
        &[("mcp-session-id", "never-created")],
        &read_file(1, "/workspace/a"),
    )?;
    assert_eq!(status, None, "forwarded in shadow mode");
    assert!(h.local_reply(ctx).is_none());
    assert_eq!(
        h.metric("tessera.decisions.deny"),
        Some(1),
        "counted as enforce would"
    );
    Ok(())
}

// ---- items 2 and 3: identity is scoped by issuer; approvals bind the whole identity ----

fn legacy(sub: &str, extra: Value) -> Result<String> {
    let mut claims = json!({"iss": tessera_tests::LEGACY, "sub": sub, "scope": "files:read"});
    tessera_tests::merge_claims(&mut claims, &extra);
    Ok(format!("Bearer {}", mint("HS256", &claims)?))
}

/// The principal header the filter forwards for a GET /orders/1 with `auth`.
fn forwarded_principal(h: &mut Harness, auth: &str) -> Result<Option<String>> {
    let (ctx, _) = tessera_tests::request(h, "GET", "/orders/1", Some(auth), &[])?;
    let p = h.request_header(ctx, "x-tessera-principal");
    h.done(ctx)?;
    Ok(p)
}

#[test]
fn the_same_subject_from_two_issuers_is_two_principals_with_two_sessions() -> Result<()> {
    let mut h = harness()?;
    let ours = agent("files:read orders:read")?;
    let theirs = legacy("agent-7", json!({"scope": "files:read orders:read"}))?;
    assert_eq!(
        forwarded_principal(&mut h, &ours)?.as_deref(),
        Some("Agent::\"agents|agent-7\"")
    );
    assert_eq!(
        forwarded_principal(&mut h, &theirs)?.as_deref(),
        Some("Agent::\"legacy|agent-7\"")
    );
    assert_eq!(initialize(&mut h, &ours, "s-agents")?, "200");
    let (_, status) = tessera_tests::post_mcp(
        &mut h,
        &theirs,
        &[("mcp-session-id", "s-agents")],
        &read_file(2, "/workspace/a"),
    )?;
    assert_eq!(
        status,
        Some(403),
        "the other issuer's agent-7 does not own the session"
    );
    Ok(())
}

#[test]
fn issuers_that_share_a_namespace_share_identities() -> Result<()> {
    let mut h = harness_with(|c| c["issuers"][2]["identity_namespace"] = json!("agents"))?;
    let ours = agent("files:read")?;
    let theirs = legacy("agent-7", json!({}))?;
    assert_eq!(initialize(&mut h, &ours, "s-shared")?, "200");
    let (_, status) = tessera_tests::post_mcp(
        &mut h,
        &theirs,
        &[("mcp-session-id", "s-shared")],
        &read_file(2, "/workspace/a"),
    )?;
    assert_eq!(status, None, "one identity namespace: one principal");
    Ok(())
}

#[test]
fn act_is_honoured_only_from_issuers_configured_for_delegation() -> Result<()> {
    let mut h = harness()?;
    let t = legacy("legacy-bot", json!({"act": {"sub": "planner"}}))?;
    let (ctx, _) = tessera_tests::request(&mut h, "GET", "/orders/1", Some(&t), &[])?;
    let reply = h.local_reply(ctx).context("refused")?;
    assert_eq!(reply.status, 401);
    assert!(
        reply
            .header("www-authenticate")
            .is_some_and(|w| w.contains("delegation")),
        "{:?}",
        reply.header("www-authenticate")
    );
    Ok(())
}

fn approval_jwt(digest: &str) -> Result<String> {
    let jti = format!("hardening-{digest}");
    tessera_tests::approval_token(digest, &json!({"sub": "approver@example.com", "jti": jti}))
}

#[test]
fn an_approval_for_alice_through_an_executor_does_not_unlock_the_call_for_bob() -> Result<()> {
    let mut h = harness()?;
    let person = |sub: &str| {
        bearer(
            json!({"iss": IDP, "sub": sub, "groups": ["finance"], "act": {"sub": "executor"},
                      "scope": "payments:write", "task_id": "t-1"}),
        )
    };
    let transfer = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "transfer_funds", "arguments": {"amount": 500, "to_account": "EXT-42"}}});
    let (ctx, _) = tessera_tests::post_mcp(&mut h, &person("alice")?, &[], &transfer)?;
    let asked = reply_json(&h, ctx)["error"]["data"]["approval"].clone();
    h.done(ctx)?;
    let request = &asked["request"];
    assert_eq!(request["principal"], "Agent::\"corp|executor\"");
    assert_eq!(
        request["on_behalf_of"], "corp|alice",
        "the approver sees on whose behalf"
    );
    assert_eq!(request["issuer"], IDP);
    assert_eq!(request["actors"], json!(["executor"]));
    assert_eq!(request["task"], "t-1");
    let approval = approval_jwt(asked["digest"].as_str().context("digest")?)?;
    let header = [("x-tessera-approval", approval.as_str())];
    // The same call by the same executor, for bob: not approved.
    let (ctx, _) = tessera_tests::post_mcp(&mut h, &person("bob")?, &header, &transfer)?;
    let refused = reply_json(&h, ctx);
    assert_eq!(refused["error"]["code"], -32005, "{refused}");
    assert!(refused["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("another request")));
    h.done(ctx)?;
    // For alice it is.
    let (_, status) = tessera_tests::post_mcp(&mut h, &person("alice")?, &header, &transfer)?;
    assert_eq!(status, None);
    Ok(())
}

// ---- item 6: canonical paths and typed arguments ----

/// A config whose catch-all route is public: a path that escaped `/admin` would be let through.
fn with_public_catch_all(c: &mut Value) {
    if let Some(routes) = c["routes"].as_array_mut() {
        routes.push(json!({"name": "public", "prefix": "/", "auth": "none"}));
    }
}

#[test]
fn no_spelling_of_admin_reaches_the_public_catch_all() -> Result<()> {
    let mut h = harness_with(with_public_catch_all)?;
    for (path, want) in [
        ("/admin;x", 400),
        ("/ADMIN", 401),
        ("/%61dmin", 401),
        ("//admin", 400),
        ("/admin/", 401),
        ("/Admin/users", 401),
        ("/public/..%2fadmin", 400),
        ("/elsewhere", 200),
    ] {
        let (ctx, status) = tessera_tests::request(&mut h, "GET", path, None, &[])?;
        let status = status.unwrap_or(200);
        assert_eq!(status, want, "{path}");
        h.done(ctx)?;
    }
    Ok(())
}

#[test]
fn typed_arguments_are_compared_in_canonical_form() -> Result<()> {
    let mut h = harness()?;
    let reader = agent("files:read email:send")?;
    let (ctx, _) = tessera_tests::post_mcp(&mut h, &reader, &[], &read_file(1, "//etc/./shadow"))?;
    let r = reply_json(&h, ctx);
    assert_eq!(r["error"]["code"], -32003, "no-reading-secrets holds: {r}");
    h.done(ctx)?;
    let email = |to: &str| {
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "send_email",
               "arguments": {"to": to, "subject": "s", "body": "b"}}})
    };
    let (ctx, _) = tessera_tests::post_mcp(
        &mut h,
        &reader,
        &[],
        &email("eve@evil.com, bob@example.com"),
    )?;
    let r = reply_json(&h, ctx);
    assert_eq!(
        r["error"]["code"], -32602,
        "not one address: refused before Cedar: {r}"
    );
    h.done(ctx)?;
    let (_, status) = tessera_tests::post_mcp(&mut h, &reader, &[], &email("bob@EXAMPLE.com"))?;
    assert_eq!(status, None, "the canonical address is inside the company");
    Ok(())
}

#[test]
fn list_answers_replayed_on_the_servers_stream_are_filtered() -> Result<()> {
    let mut h = harness()?;
    let auth = agent("files:read")?;
    assert_eq!(initialize(&mut h, &auth, "s-get")?, "200");
    let resume = [("mcp-session-id", "s-get"), ("last-event-id", "ev-1")];
    let (ctx, _) = tessera_tests::request(&mut h, "GET", "/mcp", Some(&auth), &resume)?;
    assert!(h.local_reply(ctx).is_none(), "{:?}", h.local_reply(ctx));
    h.response_headers(
        ctx,
        &[(":status", "200"), ("content-type", "text/event-stream")],
        false,
    )?;
    let replay = format!("id: ev-1\ndata: {}\n\n", tools_answer(json!(1)));
    h.response_body(ctx, replay.as_bytes(), false)?;
    let out = String::from_utf8(h.response_body_of(ctx))?;
    assert!(
        out.contains("read_file") && !out.contains("send_email"),
        "{out}"
    );
    Ok(())
}

#[test]
fn a_list_answer_with_another_success_status_is_replaced() -> Result<()> {
    assert_list_answer_replaced(&[(":status", "206"), ("content-type", "application/json")])
}

/// Argument types are remembered by shape (`authz::PerRequest::Shaped`): a call whose arguments
/// fitted the tool's schema once lets later calls of the same shape skip the check, and nothing
/// else. Arguments of another type, an undeclared member, a member missing, or a nested value of
/// another type are refused before and after calls that fitted, with the same token and another.
#[test]
fn argument_types_are_checked_whatever_fitted_before() -> Result<()> {
    let mut h = harness()?;
    let payer = agent("payments:write")?;
    let other = bearer(json!({"iss": AGENTS, "sub": "agent-8", "scope": "payments:write"}))?;
    let call = |id: i64, arguments: Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": "transfer_funds", "arguments": arguments}})
    };
    let fits = || json!({"amount": 50, "to_account": "ACC-1"});
    let misfits = [
        json!({"amount": "50", "to_account": "ACC-1"}),
        json!({"amount": 50, "to_account": 7}),
        json!({"amount": 50, "to_account": "ACC-1", "extra": "x"}),
        json!({"amount": 50}),
        json!({"amount": 50, "to_account": "ACC-1", "memo": ["a"]}),
        json!({"amount": 50, "to_account": "ACC-1", "memo": {"text": "a"}}),
        json!({"amount": [50], "to_account": "ACC-1"}),
    ];
    let mut id = 0;
    for round in 0..2 {
        for auth in [&payer, &other] {
            for args in &misfits {
                id += 1;
                let (ctx, _) = tessera_tests::post_mcp(&mut h, auth, &[], &call(id, args.clone()))?;
                let r = reply_json(&h, ctx);
                assert_eq!(r["error"]["code"], -32602, "round {round}, {args}: {r}");
                h.done(ctx)?;
            }
            for args in [
                fits(),
                json!({"amount": 7, "to_account": "ACC-2", "memo": "rent"}),
            ] {
                id += 1;
                let (ctx, status) = tessera_tests::post_mcp(&mut h, auth, &[], &call(id, args))?;
                assert_eq!(status, None, "round {round}: {:?}", h.local_reply(ctx));
                h.done(ctx)?;
            }
        }
    }
    Ok(())
}

/// What is learned of one token's fit to the schema is shared only with tokens of the same shape
/// (`authz::TokenMemo`): a token whose claim has another type than the schema declares is refused
/// even after tokens of the same issuer whose claims fitted, and before and after it such tokens
/// still pass.
#[test]
fn claim_types_are_checked_for_every_token_shape() -> Result<()> {
    let mut h = harness()?;
    let user = |sub: &str, email: Value| bearer(json!({"iss": IDP, "sub": sub, "email": email}));
    for (sub, email, allowed) in [
        ("alice", json!("alice@example.com"), true),
        ("mallory", json!(123), false),
        ("bob", json!("bob@example.com"), true),
        ("trent", json!(["trent@example.com"]), false),
        ("oscar", json!({"address": "oscar@example.com"}), false),
        ("mallory-2", json!(7), false),
        ("carol", json!("carol@example.com"), true),
    ] {
        let auth = user(sub, email.clone())?;
        let (ctx, status) = tessera_tests::request(&mut h, "GET", "/orders/42", Some(&auth), &[])?;
        assert_eq!(
            status.is_none(),
            allowed,
            "{sub} with email {email}: {:?}",
            h.local_reply(ctx).map(|r| r.body_text())
        );
        h.done(ctx)?;
    }
    Ok(())
}

/// What was learned from an MCP call says nothing of an HTTP request whose method names the same
/// action: `ping` allowed in an MCP body must not let `PING /orders/42` through (a request of
/// another kind, without the `mcp` record, on a resource the action does not apply to), with the
/// same token or another of the same shape.
#[test]
fn an_mcp_method_allowed_in_a_body_does_not_open_an_http_method() -> Result<()> {
    let mut h = harness()?;
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    let first = agent("orders:read")?;
    let other = bearer(json!({"iss": AGENTS, "sub": "agent-9", "scope": "orders:read"}))?;
    for _ in 0..2 {
        let (ctx, status) = tessera_tests::post_mcp(&mut h, &first, &[], &ping)?;
        assert_eq!(status, None, "ping is allowed: {:?}", h.local_reply(ctx));
        h.done(ctx)?;
    }
    for auth in [&first, &other] {
        for method in ["ping", "initialize", "tools/list"] {
            for path in ["/orders/42", "/mcp"] {
                let (ctx, status) = tessera_tests::request(&mut h, method, path, Some(auth), &[])?;
                assert!(
                    status.is_some_and(|s| s >= 400),
                    "{method} {path} was let through: {status:?}"
                );
                h.done(ctx)?;
            }
        }
    }
    Ok(())
}

/// What is kept of a token between its requests (`authz::TokenParts`: its Cedar entities and
/// context attributes, evaluated once, from its second request that runs Cedar on) carries
/// nothing of a request: the same token, sent again and again, is judged on each request's own
/// path, arguments and per-call task (`context.task.detail`, built from the arguments).
#[test]
fn a_token_used_many_times_is_judged_on_each_request() -> Result<()> {
    let mut h = harness_with(|c| {
        c["issuers"][1]["task"] = json!({"detail_fields":
            {"max_amount": "Long", "allowed_recipient_domain": "String"}});
    })?;
    let auth = bearer(json!({
        "iss": AGENTS, "sub": "agent-7", "scope": "files:read email:send payments:write",
        "authorization_details": [
            {"type": "mcp_tool", "identifier": "read_file"},
            {"type": "mcp_tool", "identifier": "send_email",
             "allowed_recipient_domain": "example.com"},
            {"type": "mcp_tool", "identifier": "transfer_funds", "max_amount": 50}
        ]
    }))?;
    let email = |to: &str| json!({"to": to, "subject": "s", "body": "b"});
    let mut id = 0;
    for round in 0..4 {
        for (tool, arguments, allowed) in [
            ("read_file", json!({"path": "/srv/notes.txt"}), true),
            ("read_file", json!({"path": "/etc/passwd"}), false),
            ("send_email", email("bob@example.com"), true),
            ("send_email", email("eve@evil.example"), false),
            ("send_email", email("carol@example.com"), true),
            // Only the task's detail (`task-max-amount`) refuses 70.
            (
                "transfer_funds",
                json!({"amount": 40, "to_account": "ACC-1"}),
                true,
            ),
            (
                "transfer_funds",
                json!({"amount": 70, "to_account": "ACC-1"}),
                false,
            ),
            (
                "transfer_funds",
                json!({"amount": 50, "to_account": "ACC-1"}),
                true,
            ),
        ] {
            id += 1;
            let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                              "params": {"name": tool, "arguments": arguments}});
            let (ctx, status) = tessera_tests::post_mcp(&mut h, &auth, &[], &call)?;
            if allowed {
                assert_eq!(status, None, "round {round}, {tool} {arguments}");
            } else {
                let r = reply_json(&h, ctx);
                assert_eq!(
                    r["error"]["code"], -32003,
                    "round {round}, {tool} {arguments}: {r}"
                );
            }
            h.done(ctx)?;
        }
        // The token has no `orders:read`: refused on an orders route and on a path of no route,
        // however often it was allowed before.
        for (path, allowed) in [("/orders/42", false), ("/nowhere", false)] {
            let (ctx, status) = tessera_tests::request(&mut h, "GET", path, Some(&auth), &[])?;
            assert_eq!(status.is_none(), allowed, "round {round}, {path}");
            h.done(ctx)?;
        }
    }
    Ok(())
}
