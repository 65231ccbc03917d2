//! One spelling per meaning (issue 10, review findings): what a policy compares is the form the
//! upstream acts on, however the client spells it — request paths and hosts, MCP resource URIs,
//! and typed tool arguments (`path`, `email`, `url`). Each test fails on the filter before the fix.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tessera_harness::Harness;
use tessera_tests::{agent, harness_with, test_config, wasm_path};

/// The JSON-RPC error code the filter answered an MCP POST of `body` with (`None`: forwarded).
fn mcp_error(h: &mut Harness, auth: &str, body: &Value) -> Result<Option<i64>> {
    let (ctx, status) = tessera_tests::post_mcp(h, auth, &[], body)?;
    let code = status.map(|_| {
        h.local_reply(ctx)
            .and_then(|r| serde_json::from_slice::<Value>(&r.body).ok())
            .and_then(|v| v["error"]["code"].as_i64())
            .unwrap_or(0)
    });
    h.done(ctx)?;
    Ok(code)
}

#[test]
fn a_resource_uri_climbing_out_of_the_workspace_is_never_read() -> Result<()> {
    let mut h = harness_with(|_| {})?;
    let auth = agent("files:read")?;
    let read = |uri: &str| json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": uri}});
    assert_eq!(
        mcp_error(&mut h, &auth, &read("file:///workspace/notes.md"))?,
        None
    );
    for same in [
        "FILE:///workspace/%6Eotes.md",
        "file://localhost/workspace/notes.md",
    ] {
        assert_eq!(
            mcp_error(&mut h, &auth, &read(same))?,
            None,
            "{same}: the same resource in another spelling"
        );
    }
    for uri in [
        "file:///workspace/../etc/passwd",
        "file:///workspace/%2e%2e/etc/passwd",
        "file:///workspace/.%2E/etc/passwd",
        "file:///workspace/a%2f..%2f..%2fetc%2fpasswd",
        "file:///workspace/..\\etc\\passwd",
        "file:///workspace/?/../../etc/passwd",
        "file:///workspace/#/../../etc/passwd",
        "file:/workspace/../etc/passwd",
    ] {
        assert_eq!(
            mcp_error(&mut h, &auth, &read(uri))?,
            Some(-32602),
            "{uri} is refused before Cedar"
        );
    }
    for outside in ["file:///etc/passwd", "file://evil@localhost/etc/passwd"] {
        assert_eq!(
            mcp_error(&mut h, &auth, &read(outside))?,
            Some(-32003),
            "{outside}: outside the workspace, no permit"
        );
    }
    Ok(())
}

/// The status and `error` of a POST of `path` by an agent that may write orders.
fn post_order(h: &mut Harness, path: &str, authority: &str) -> Result<(u32, String)> {
    let auth = agent("orders:write")?;
    let ctx = h.new_http()?;
    h.request_headers(
        ctx,
        &[
            (":method", "POST"),
            (":path", path),
            (":authority", authority),
            ("authorization", &auth),
        ],
        true,
    )?;
    let reply = h.local_reply(ctx);
    let out = match reply {
        None => (200, String::new()),
        Some(r) => {
            let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            (r.status, body["error"].as_str().unwrap_or("").to_string())
        }
    };
    h.done(ctx)?;
    Ok(out)
}

#[test]
fn every_spelling_of_a_refund_path_needs_the_approval() -> Result<()> {
    let mut h = harness_with(|_| {})?;
    for path in [
        "/orders/1/refund",
        "/orders/1/refund/",
        "/orders/1/refund?x=1",
        "/orders/1/%72efund",
    ] {
        assert_eq!(
            post_order(&mut h, path, "api.example.com")?,
            (403, "approval_required".to_string()),
            "{path}"
        );
    }
    assert_eq!(
        post_order(&mut h, "/orders/1", "api.example.com")?.0,
        200,
        "an ordinary write is allowed"
    );
    // A case-sensitive upstream (the default) serves /REFUND as another resource; one that
    // ignores case says so on its route, and then policies see the path lower-cased.
    assert_eq!(
        post_order(&mut h, "/orders/1/REFUND", "api.example.com")?.0,
        200
    );
    let mut h = harness_with(|c| c["routes"][1]["case_sensitive"] = json!(false))?;
    for path in ["/orders/1/REFUND", "/Orders/1/Refund/"] {
        assert_eq!(
            post_order(&mut h, path, "api.example.com")?,
            (403, "approval_required".to_string()),
            "{path}"
        );
    }
    Ok(())
}

#[test]
fn a_host_policy_holds_for_every_spelling_of_the_host() -> Result<()> {
    let mut h = harness_with(|c| {
        c["policies"]["zz.cedar"] = json!(
            "@id(\"no-writes-on-admin-host\") forbid (principal, action, resource) \
             when { context.request.host == \"admin.example.com\" };"
        );
    })?;
    for authority in [
        "admin.example.com",
        "admin.example.com:443",
        "ADMIN.Example.com.",
        "admin.example.com.:8443",
    ] {
        let (status, _) = post_order(&mut h, "/orders/1", authority)?;
        assert_eq!(status, 403, "{authority}");
    }
    assert_eq!(post_order(&mut h, "/orders/1", "api.example.com")?.0, 200);
    Ok(())
}

#[test]
fn a_policy_comparing_the_path_with_a_spelling_no_request_gives_is_a_config_error() -> Result<()> {
    let mut h = Harness::load(wasm_path()).context("load the module")?;
    let mut c = test_config()?;
    c["policies"]["zz.cedar"] = json!(
        "@id(\"no-admin\") forbid (principal, action, resource) when { context.request.path == \"/Admin/\" };"
    );
    assert!(!h.configure(&c.to_string())?, "refused");
    let logs: Vec<String> = h.logs().iter().map(|l| l.message.clone()).collect();
    assert!(
        logs.iter().any(|l| l.contains("zz.cedar")
            && l.contains("no-admin")
            && l.contains("no request gives")),
        "{logs:?}"
    );
    Ok(())
}

#[test]
fn a_host_with_a_trailing_dot_is_the_same_host() -> Result<()> {
    let mut h = harness_with(|c| {
        if let Some(routes) = c["routes"].as_array_mut() {
            routes.insert(
                0,
                json!({"name": "admin-site", "prefix": "/", "host": "admin.example.com"}),
            );
            routes.push(json!({"name": "public", "prefix": "/", "auth": "none"}));
        }
    })?;
    for (authority, want) in [
        ("admin.example.com", Some(401)),
        ("admin.example.com.", Some(401)),
        ("ADMIN.example.com.:443", Some(401)),
        ("www.example.com", None),
    ] {
        let ctx = h.new_http()?;
        h.request_headers(
            ctx,
            &[
                (":method", "GET"),
                (":path", "/elsewhere"),
                (":authority", authority),
            ],
            true,
        )?;
        let status = h.local_reply(ctx).map(|r| r.status);
        assert_eq!(status, want, "{authority}");
        h.done(ctx)?;
    }
    Ok(())
}

fn call(tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
           "params": {"name": tool, "arguments": arguments}})
}

#[test]
fn typed_arguments_two_parsers_could_read_differently_are_refused() -> Result<()> {
    let mut h = harness_with(|c| {
        c["argument_formats"]["fetch_url"] = json!({"url": "url"});
    })?;
    let auth = agent("files:read email:send")?;
    for (tool, args) in [
        ("read_file", json!({"path": "etc/passwd"})),
        ("read_file", json!({"path": "/workspace/../etc/shadow"})),
        (
            "send_email",
            json!({"to": "bob%evil.com@example.com", "subject": "s", "body": "b"}),
        ),
        (
            "send_email",
            json!({"to": "evil.com!bob@example.com", "subject": "s", "body": "b"}),
        ),
        (
            "fetch_url",
            json!({"url": "https://docs.example.com\\@evil.com/x"}),
        ),
        ("fetch_url", json!({"url": "https:evil.com/x"})),
        ("fetch_url", json!({"url": "https://docs%2eexample.com/x"})),
    ] {
        assert_eq!(
            mcp_error(&mut h, &auth, &call(tool, args.clone()))?,
            Some(-32602),
            "{tool} {args}"
        );
    }
    // The canonical address: the local part lower-cased, the domain in its ASCII form.
    let to = "Bob@EXAMPLE\u{3002}com";
    assert_eq!(
        mcp_error(
            &mut h,
            &auth,
            &call("send_email", json!({"to": to, "subject": "s", "body": "b"}))
        )?,
        None,
        "inside the company"
    );
    Ok(())
}
