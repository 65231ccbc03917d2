//! MCP scenarios through the `.wasm` in the harness that span more than one request: session
//! binding across requests, and RFC 9728 metadata served by the filter.

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

/// POSTs one JSON-RPC message to /mcp; returns the context, and the local reply status if any.
fn post(
    h: &mut Harness,
    auth: &str,
    session: Option<&str>,
    body: &Value,
) -> Result<(u32, Option<u32>)> {
    let ctx = h.new_http()?;
    let body = body.to_string();
    let len = body.len().to_string();
    let mut headers = vec![
        (":method", "POST"),
        (":path", "/mcp"),
        (":authority", "api.example.com"),
        ("authorization", auth),
        ("content-type", "application/json"),
        ("content-length", len.as_str()),
    ];
    if let Some(s) = session {
        headers.push(("mcp-session-id", s));
    }
    assert_eq!(
        h.request_headers(ctx, &headers, false)?,
        Action::Pause,
        "the body must be judged first"
    );
    h.request_body(ctx, body.as_bytes(), true)?;
    Ok((ctx, h.local_reply(ctx).map(|r| r.status)))
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
    assert!(body.contains("another principal"), "{body}");
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
