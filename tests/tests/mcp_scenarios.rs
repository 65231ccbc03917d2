//! MCP scenarios through the `.wasm` in the harness that a single decision case cannot show:
//! session binding across requests, RFC 9728 metadata served by the filter, list answers filtered
//! in SSE streams cut at awkward places and in JSON replies, responses to other requests left
//! alone, batches forwarded whole or answered per message, and the 403 scope step-up.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tessera_harness::{Action, Harness};
use tessera_tests::{mint, test_config, wasm_path, AGENTS, IDP};

fn harness() -> Result<Harness> {
    let mut h = Harness::load(wasm_path()).context("load the module (cargo xtask wasm)")?;
    assert!(
        h.configure(&test_config()?.to_string())?,
        "configure: {:?}",
        h.logs()
    );
    Ok(h)
}

fn token(iss: &str, sub: &str, scope: &str) -> Result<String> {
    Ok(format!(
        "Bearer {}",
        mint("ES256", &json!({"iss": iss, "sub": sub, "scope": scope}))?
    ))
}

/// POSTs one JSON-RPC message to /mcp, in `session` if given; returns the context, and the local
/// reply status if any.
fn post(
    h: &mut Harness,
    auth: &str,
    session: Option<&str>,
    body: &Value,
) -> Result<(u32, Option<u32>)> {
    let extra: Vec<(&str, &str)> = session.map(|s| ("mcp-session-id", s)).into_iter().collect();
    tessera_tests::post_mcp(h, auth, &extra, body)
}

#[test]
fn an_mcp_session_is_bound_to_the_principal_that_created_it() -> Result<()> {
    let mut h = harness()?;
    let alice = token(IDP, "alice", "")?;
    let mallory = token(AGENTS, "mallory", "files:read")?;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}});
    let (ctx, status) = post(&mut h, &alice, None, &init)?;
    assert_eq!(status, None, "initialize is forwarded");
    // The server answers with a new session id: the filter binds it to alice.
    h.response_headers(
        ctx,
        &[
            (":status", "200"),
            ("mcp-session-id", "s-123"),
            ("content-type", "application/json"),
        ],
        false,
    )?;
    h.done(ctx)?;

    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "read_file", "arguments": {"path": "/workspace/a"}}});
    let (ctx, status) = post(&mut h, &alice, Some("s-123"), &call)?;
    assert_eq!(status, None, "alice continues her own session");
    h.done(ctx)?;

    let (ctx, status) = post(&mut h, &mallory, Some("s-123"), &call)?;
    assert_eq!(
        status,
        Some(403),
        "another principal presenting alice's session is refused"
    );
    let body = h
        .local_reply(ctx)
        .map(|r| r.body_text())
        .unwrap_or_default();
    assert!(body.contains("another identity"), "{body}");
    h.done(ctx)?;

    let (_, status) = post(&mut h, &alice, Some("never-created"), &call)?;
    assert_eq!(
        status,
        Some(404),
        "an unknown session id gets 404 so the client re-initializes"
    );
    Ok(())
}

#[test]
fn the_filter_serves_rfc9728_metadata_and_points_401s_to_it() -> Result<()> {
    let mut h = harness()?;
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let ctx = h.new_http()?;
        h.request_headers(
            ctx,
            &[
                (":method", "GET"),
                (":path", path),
                (":authority", "api.example.com"),
            ],
            true,
        )?;
        let reply = h
            .local_reply(ctx)
            .context("metadata is answered by the filter")?;
        assert_eq!(reply.status, 200, "{path}");
        let doc: Value = serde_json::from_slice(&reply.body)?;
        assert_eq!(doc["resource"], "https://api.example.com/mcp");
        assert_eq!(doc["authorization_servers"], json!([IDP]));
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
        h.done(ctx)?;
    }
    let ctx = h.new_http()?;
    h.request_headers(
        ctx,
        &[
            (":method", "POST"),
            (":path", "/mcp"),
            (":authority", "api.example.com"),
        ],
        false,
    )?;
    let reply = h.local_reply(ctx).context("401 without a token")?;
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer resource_metadata=\"https://api.example.com/.well-known/oauth-protected-resource/mcp\"")
    );
    Ok(())
}

// ---- List filtering (tools/list, resources/list, prompts/list) and batches ----

/// POSTs a raw body to /mcp and returns the context; asserts that it was forwarded.
fn forwarded(h: &mut Harness, auth: &str, body: &str) -> Result<u32> {
    let (ctx, on_body, _) = tessera_tests::post_mcp_raw(h, auth, &[], body)?;
    assert_eq!(on_body, Action::Continue);
    assert!(h.local_reply(ctx).is_none(), "{:?}", h.local_reply(ctx));
    assert_eq!(
        h.request_body_of(ctx),
        body.as_bytes(),
        "forwarded byte for byte"
    );
    Ok(ctx)
}

fn sse_headers(h: &mut Harness, ctx: u32, content_type: &str) -> Result<()> {
    let action = h.response_headers(
        ctx,
        &[
            (":status", "200"),
            ("content-type", content_type),
            ("content-length", "4096"),
        ],
        false,
    )?;
    assert_eq!(action, Action::Continue);
    Ok(())
}

/// Delivers `stream` cut at `cuts`; returns what left the filter after each chunk (every
/// callback must continue: streaming is never paused).
fn deliver(h: &mut Harness, ctx: u32, stream: &[u8], cuts: &[usize]) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut at = 0;
    let ends: Vec<usize> = cuts.iter().copied().chain([stream.len()]).collect();
    for (i, &end) in ends.iter().enumerate() {
        let last = i + 1 == ends.len();
        assert_eq!(
            h.response_body(ctx, &stream[at..end], last)?,
            Action::Continue
        );
        out.push(h.response_body_of(ctx));
        at = end;
    }
    Ok(out)
}

fn tools_answer(id: Value) -> Value {
    let tools: Vec<Value> = ["read_file", "send_email", "transfer_funds", "delete_file"]
        .iter()
        .map(|n| json!({"name": n, "description": format!("the {n} tool"), "inputSchema": {"type": "object"}}))
        .collect();
    json!({"jsonrpc": "2.0", "id": id, "result": {"tools": tools}})
}

fn tool_names(answer: &Value) -> Vec<String> {
    answer["result"]["tools"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn an_sse_tools_list_is_filtered_across_awkward_chunks_and_other_events_pass() -> Result<()> {
    let mut h = harness()?;
    let agent = token(AGENTS, "agent-7", "files:read")?;
    let ctx = forwarded(
        &mut h,
        &agent,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string(),
    )?;
    sse_headers(&mut h, ctx, "text/event-stream")?;
    assert_eq!(
        h.response_header(ctx, "content-length"),
        None,
        "the body changes length"
    );
    let progress = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n\n";
    let answer = format!(
        "event: message\r\nid: ev-1\r\ndata: {}\r\n\r\n",
        tools_answer(json!(1))
    );
    let after =
        ": keepalive\n\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\n\n";
    let stream = format!("{progress}{answer}{after}");
    let a = progress.len();
    // Cuts: inside `data:` of the first event, between its two final newlines, inside the
    // answer's JSON, between CR and LF of the answer's blank line, inside the keepalive.
    let cuts = [7, a - 1, a + 40, a + answer.len() - 1, a + answer.len() + 3];
    let out = deliver(&mut h, ctx, stream.as_bytes(), &cuts)?;
    assert_eq!(out[0], b"", "nothing complete yet");
    assert_eq!(out[1], b"", "the first event still lacks its blank line");
    assert_eq!(
        out[2],
        progress.as_bytes(),
        "a complete event goes on at once, byte for byte"
    );
    assert_eq!(
        out[3], b"",
        "the answer is not complete yet (CR may be CRLF)"
    );
    // The answer is complete: it goes out rewritten, and with every list request answered the
    // start of the next event is no longer held.
    let rewritten = String::from_utf8(out[4].clone())?;
    let data = rewritten
        .strip_prefix("event: message\r\nid: ev-1\r\ndata: ")
        .and_then(|r| r.strip_suffix(&format!("\r\n\r\n{}", &after[..3])))
        .with_context(|| format!("rewritten event: {rewritten:?}"))?;
    let filtered: Value = serde_json::from_str(data)?;
    // delete_file is held back only by an `@scope` forbid: listed, so that a step-up can follow.
    assert_eq!(tool_names(&filtered), ["read_file", "delete_file"]);
    assert_eq!(filtered["id"], 1);
    assert_eq!(
        filtered["result"]["tools"][0]["description"], "the read_file tool",
        "the items shown are unchanged"
    );
    // Once the answer has gone by, the rest passes as it comes.
    assert_eq!(out[5], &after.as_bytes()[3..]);
    assert_eq!(h.metric("tessera.mcp.list_items_hidden"), Some(2));
    assert!(
        h.find_log("methods=[tools/list] shown=2 hidden=2")
            .is_some(),
        "{:?}",
        h.logs()
    );
    Ok(())
}

#[test]
fn each_caller_sees_the_tools_it_may_use_counting_a_step_up() -> Result<()> {
    let mut h = harness()?;
    let mut names = |auth: &str| -> Result<Vec<String>> {
        let ctx = forwarded(
            &mut h,
            auth,
            &json!({"jsonrpc": "2.0", "id": "l", "method": "tools/list"}).to_string(),
        )?;
        sse_headers(&mut h, ctx, "text/event-stream; charset=utf-8")?;
        let stream = format!("data: {}\n\n", tools_answer(json!("l")));
        let out = deliver(&mut h, ctx, stream.as_bytes(), &[])?.concat();
        let text = String::from_utf8(out)?;
        let data = text
            .strip_prefix("data: ")
            .and_then(|t| t.strip_suffix("\n\n"))
            .unwrap_or_default();
        h.done(ctx)?;
        Ok(tool_names(&serde_json::from_str(data)?))
    };
    // delete_file needs files:write (an `@scope` forbid): it is listed without it, so that the
    // client can call it, get the step-up challenge and come back with the scope.
    assert_eq!(
        names(&token(IDP, "alice", "")?)?,
        ["read_file", "send_email", "transfer_funds", "delete_file"]
    );
    assert_eq!(
        names(&token(IDP, "alice", "files:write")?)?,
        ["read_file", "send_email", "transfer_funds", "delete_file"]
    );
    assert_eq!(
        names(&token(
            AGENTS,
            "agent-7",
            "email:send payments:write files:write"
        )?)?,
        ["send_email", "transfer_funds", "delete_file"]
    );
    // An agent without scopes: nothing permits it read_file, send_email or transfer_funds.
    assert_eq!(names(&token(AGENTS, "agent-7", "")?)?, ["delete_file"]);
    Ok(())
}

#[test]
fn sse_for_a_non_list_request_passes_through_untouched() -> Result<()> {
    let mut h = harness()?;
    let agent = token(AGENTS, "agent-7", "files:read")?;
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "read_file", "arguments": {"path": "/workspace/a"}}});
    let ctx = forwarded(&mut h, &agent, &call.to_string())?;
    sse_headers(&mut h, ctx, "text/event-stream")?;
    assert_eq!(
        h.response_header(ctx, "content-length").as_deref(),
        Some("4096"),
        "headers of a non-list response are not touched"
    );
    // Even an answer that looks like a tool list, with the same id: it answers a tools/call.
    let stream = format!(
        "data: {}\n\n: ping\n\ndata: partial",
        tools_answer(json!(1))
    );
    let cuts = [5, 30, stream.len() - 3];
    let out = deliver(&mut h, ctx, stream.as_bytes(), &cuts)?;
    let mut at = 0;
    for (chunk, end) in out.iter().zip(cuts.iter().copied().chain([stream.len()])) {
        assert_eq!(
            chunk,
            &stream.as_bytes()[at..end],
            "each chunk goes on as it came"
        );
        at = end;
    }
    assert_eq!(h.metric("tessera.mcp.list_items_hidden").unwrap_or(0), 0);
    Ok(())
}

#[test]
fn a_json_list_reply_is_buffered_filtered_and_loses_its_content_length() -> Result<()> {
    json_list_reply_filtered(harness()?)
}

/// Envoy reports the peer's address and TLS state: the listing sees them in `context.request`
/// (`source_ip` an `ipaddr`), and filters exactly as without them.
#[test]
fn a_list_reply_is_filtered_the_same_when_the_connection_is_known() -> Result<()> {
    let mut h = harness()?;
    h.set_property("source.address", "127.0.0.1:40000");
    h.set_property("connection.mtls", [0u8]);
    json_list_reply_filtered(h)
}

fn json_list_reply_filtered(mut h: Harness) -> Result<()> {
    let agent = token(AGENTS, "agent-7", "")?;
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "resources/list"},
        {"jsonrpc": "2.0", "id": 2, "method": "prompts/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}
    ]);
    let ctx = forwarded(&mut h, &agent, &batch.to_string())?;
    let reply = json!([
        {"jsonrpc": "2.0", "id": 1, "result": {"resources": [
            {"uri": "file:///workspace/guide.md", "name": "guide"},
            {"uri": "file:///private/salaries.csv", "name": "salaries"}]}},
        {"jsonrpc": "2.0", "id": 2, "result": {"prompts": [{"name": "summarize"}, {"name": "draft_email"}]}},
        tools_answer(json!(3))
    ])
    .to_string();
    let len = reply.len().to_string();
    h.response_headers(
        ctx,
        &[
            (":status", "200"),
            ("content-type", "application/json"),
            ("content-length", len.as_str()),
        ],
        false,
    )?;
    assert_eq!(h.response_header(ctx, "content-length"), None);
    let (first, rest) = reply.as_bytes().split_at(reply.len() / 2);
    assert_eq!(
        h.response_body(ctx, first, false)?,
        Action::Pause,
        "a JSON document is judged whole"
    );
    assert_eq!(h.response_body(ctx, rest, true)?, Action::Continue);
    let out: Value = serde_json::from_slice(&h.response_body_of(ctx))?;
    assert_eq!(
        out[0]["result"]["resources"],
        json!([{"uri": "file:///workspace/guide.md", "name": "guide"}])
    );
    assert_eq!(out[1]["result"]["prompts"], json!([{"name": "summarize"}]));
    assert_eq!(
        tool_names(&out[2]),
        ["delete_file"],
        "an agent without scopes may call no tool, but may step up for delete_file"
    );
    assert_eq!(h.metric("tessera.mcp.list_items_hidden"), Some(5));
    Ok(())
}

#[test]
fn a_batch_with_every_message_allowed_is_forwarded_unchanged() -> Result<()> {
    let mut h = harness()?;
    let agent = token(AGENTS, "agent-7", "files:read")?;
    // Spacing and key order as a client wrote them: the filter forwards the bytes, not a re-encoding.
    let body = r#"[ {"id":1,"jsonrpc":"2.0","method":"ping"},
        {"jsonrpc":"2.0","method":"tools/call","id":2,"params":{"name":"read_file","arguments":{"path":"/workspace/x"}}},
        {"jsonrpc":"2.0","method":"notifications/initialized"} ]"#;
    let ctx = forwarded(&mut h, &agent, body)?;
    assert_eq!(
        h.request_header(ctx, "x-tessera-principal").as_deref(),
        Some("Agent::\"agents|agent-7\"")
    );
    Ok(())
}

#[test]
fn a_batch_with_one_refused_message_gets_per_message_errors_and_nothing_is_forwarded() -> Result<()>
{
    let mut h = harness()?;
    let agent = token(AGENTS, "agent-7", "files:read")?;
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "read_file", "arguments": {"path": "/etc/shadow"}}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "method": "notifications/initialized"}
    ]);
    let ctx = h.new_http()?;
    let body = batch.to_string();
    let len = body.len().to_string();
    h.request_headers(
        ctx,
        &[
            (":method", "POST"),
            (":path", "/mcp"),
            (":authority", "api.example.com"),
            ("authorization", agent.as_str()),
            ("content-type", "application/json"),
            ("content-length", len.as_str()),
        ],
        false,
    )?;
    assert_eq!(h.request_body(ctx, body.as_bytes(), true)?, Action::Pause);
    let reply = h.local_reply(ctx).context("the filter answers the batch")?;
    assert!(!h.request_resumed(ctx), "nothing reaches the server");
    assert_eq!(reply.status, 200);
    let answers: Value = serde_json::from_slice(&reply.body)?;
    let codes: Vec<(Value, Value)> = answers
        .as_array()
        .context("a batch answer")?
        .iter()
        .map(|a| (a["id"].clone(), a["error"]["code"].clone()))
        .collect();
    assert_eq!(
        codes,
        vec![(json!(1), json!(-32003)), (json!(2), json!(-32004))],
        "the notification gets no answer"
    );
    assert_eq!(
        answers[0]["error"]["data"]["policies"],
        json!(["no-reading-secrets"])
    );
    Ok(())
}

#[test]
fn a_call_refused_for_a_missing_scope_is_a_403_challenge_not_a_json_rpc_error() -> Result<()> {
    let mut h = harness()?;
    let alice = token(IDP, "alice", "files:read")?;
    let call = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "delete_file", "arguments": {"path": "/workspace/a"}}});
    let (ctx, status) = post(&mut h, &alice, None, &call)?;
    assert_eq!(status, Some(403));
    let reply = h.local_reply(ctx).context("challenge")?;
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer error=\"insufficient_scope\", scope=\"files:write\", error_description=\"the token lacks a scope this request needs\", resource_metadata=\"https://api.example.com/.well-known/oauth-protected-resource/mcp\"")
    );
    let body: Value = serde_json::from_slice(&reply.body)?;
    assert_eq!(body["error"], "insufficient_scope");
    assert_eq!(body["policies"], json!(["delete-needs-files-write"]));
    Ok(())
}
