//! The whole request path natively, hook by hook, as the plugin drives it:
//! `tessera_core::exchange::Exchange` over the in-memory `Store`, and the `Outcome` each hook
//! returns (the `.wasm` executes the same outcomes; `mcp_scenarios.rs`, `sessions.rs` and
//! `hardening.rs` run these flows through the module).

use anyhow::{anyhow, Result};
use serde_json::{json, Value};
use tessera_core::exchange::{self, Exchange};
use tessera_core::outcome::{Counter, Next, Outcome};
use tessera_core::store::MemoryStore;
use tessera_core::Engine;
use tessera_tests::{agent, bearer, now_s, read_file, test_config, AGENTS};

fn engine() -> Result<Engine> {
    Engine::from_json(test_config()?.to_string().as_bytes()).map_err(|e| anyhow!("{e}"))
}

fn headers(list: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect()
}

/// Request headers of an MCP POST with `auth` and `extra`.
fn mcp_post(auth: &str, body: &str, extra: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    let len = body.len().to_string();
    let mut h = headers(&[
        (":method", b"POST"),
        (":path", b"/mcp"),
        (":authority", b"api.example.com"),
        ("authorization", auth.as_bytes()),
        ("content-type", b"application/json"),
        ("content-length", len.as_bytes()),
    ]);
    h.extend(headers(extra));
    h
}

/// One MCP POST through a new exchange: the outcome of its body.
fn post(
    e: &Engine,
    store: &MemoryStore,
    x: &mut Exchange,
    auth: &str,
    body: &Value,
    extra: &[(&str, &[u8])],
) -> Outcome {
    let body = body.to_string();
    let head = x.on_request_headers(
        e,
        store,
        &mcp_post(auth, &body, extra),
        "r-1".into(),
        false,
        now_s(),
    );
    assert_eq!(head.next, Next::WaitForBody, "the body is judged first");
    x.on_request_body(e, store, body.len(), true, now_s(), &mut |_| {
        body.clone().into_bytes()
    })
}

/// A GET of `path` with `extra` headers through a new exchange: the outcome of its headers.
fn get(e: &Engine, store: &MemoryStore, path: &str, extra: &[(&str, &[u8])]) -> Outcome {
    let mut h = headers(&[
        (":method", b"GET"),
        (":path", path.as_bytes()),
        (":authority", b"api.example.com"),
    ]);
    h.extend(headers(extra));
    Exchange::new(false).on_request_headers(e, store, &h, "r-1".into(), true, now_s())
}

fn status(o: &Outcome) -> Option<u32> {
    match &o.next {
        Next::Reply(r) => Some(r.status),
        _ => None,
    }
}

fn set(o: &Outcome, name: &str) -> Option<Option<String>> {
    o.headers
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

#[test]
fn client_copies_of_owned_headers_go_before_the_filter_sets_its_own() -> Result<()> {
    let e = engine()?;
    let store = MemoryStore::new();
    let auth = agent("orders:read")?;
    let o = get(
        &e,
        &store,
        "/orders/1",
        &[
            ("authorization", auth.as_bytes()),
            ("x-tessera-principal", b"Agent::\"root\""),
        ],
    );
    assert_eq!(o.next, Next::Forward);
    let removed = o
        .headers
        .iter()
        .position(|(k, v)| k == "x-tessera-principal" && v.is_none());
    let added = o
        .headers
        .iter()
        .position(|(k, v)| k == "x-tessera-principal" && v.is_some());
    assert!(
        removed.is_some() && added.is_some() && removed < added,
        "{:?}",
        o.headers
    );
    assert_eq!(o.counters, vec![(Counter::Allow, 1)]);
    Ok(())
}

#[test]
fn a_header_the_filter_reads_that_is_not_utf8_is_refused() -> Result<()> {
    let e = engine()?;
    let o = get(
        &e,
        &MemoryStore::new(),
        "/orders/1",
        &[("authorization", b"Bearer \xff\xfe")],
    );
    assert_eq!(status(&o), Some(400));
    assert_eq!(o.counters, vec![(Counter::Deny, 1)]);
    Ok(())
}

#[test]
fn an_over_size_body_is_refused_before_it_is_read() -> Result<()> {
    let e = engine()?;
    let store = MemoryStore::new();
    let mut x = Exchange::new(false);
    let auth = agent("files:read")?;
    let size = e.max_body_bytes() + 1;
    let head = x.on_request_headers(
        &e,
        &store,
        &mcp_post(&auth, "", &[]),
        "r".into(),
        false,
        now_s(),
    );
    assert_eq!(head.next, Next::WaitForBody);
    let o = x.on_request_body(&e, &store, size, false, now_s(), &mut |_| {
        panic!("an over-size body is not read")
    });
    assert_eq!(status(&o), Some(413));
    Ok(())
}

#[test]
fn a_session_created_in_one_exchange_is_refused_to_another_identity_in_the_next() -> Result<()> {
    let e = engine()?;
    let store = MemoryStore::new();
    let alice = agent("files:read")?;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}});
    let mut x = Exchange::new(false);
    let o = post(&e, &store, &mut x, &alice, &init, &[]);
    assert_eq!(o.next, Next::Forward);
    let answer = |name: &str| match name {
        ":status" => Some(b"200".to_vec()),
        "mcp-session-id" => Some(b"s-1".to_vec()),
        _ => None,
    };
    let o = x.on_response_headers(&e, &store, &answer, false, now_s());
    assert!(
        o.headers.is_empty(),
        "bound, answer untouched: {:?}",
        o.headers
    );

    let call = read_file(2, "/workspace/a.txt");
    let mallory = bearer(json!({"iss": AGENTS, "sub": "mallory", "scope": "files:read"}))?;
    let in_session = |auth: &str, session: &[u8]| {
        let o = post(
            &e,
            &store,
            &mut Exchange::new(false),
            auth,
            &call,
            &[("mcp-session-id", session)],
        );
        (status(&o), o.next == Next::Forward)
    };
    assert_eq!(
        in_session(&mallory, b"s-1"),
        (Some(403), false),
        "another identity"
    );
    assert_eq!(in_session(&alice, b"s-1"), (None, true), "its creator");
    assert_eq!(
        in_session(&alice, b"s-2"),
        (Some(404), false),
        "never created"
    );
    Ok(())
}

#[test]
fn a_list_answer_is_filtered_and_what_it_hid_is_counted() -> Result<()> {
    let e = engine()?;
    let store = MemoryStore::new();
    let mut x = Exchange::new(true);
    let auth = agent("files:read")?;
    let list = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"});
    let o = post(&e, &store, &mut x, &auth, &list, &[]);
    assert_eq!(o.next, Next::Forward);
    assert_eq!(set(&o, "accept-encoding"), Some(Some("identity".into())));
    let answer = |name: &str| match name {
        ":status" => Some(b"200".to_vec()),
        "content-type" => Some(b"application/json".to_vec()),
        _ => None,
    };
    let o = x.on_response_headers(&e, &store, &answer, false, now_s());
    assert_eq!(
        set(&o, "content-length"),
        Some(None),
        "the body changes length"
    );
    let tools = json!({"jsonrpc": "2.0", "id": 3, "result": {"tools": [
        {"name": "read_file", "inputSchema": {"type": "object"}},
        {"name": "format_disk", "inputSchema": {"type": "object"}}
    ]}})
    .to_string();
    let o = x.on_response_body(&e, false, now_s(), &mut || {
        panic!("not read before the end")
    });
    assert_eq!(o.next, Next::WaitForBody, "a JSON answer is judged whole");
    let o = x.on_response_body(&e, true, now_s(), &mut || tools.clone().into_bytes());
    let body: Value = serde_json::from_slice(o.body.as_deref().ok_or_else(|| anyhow!("kept"))?)?;
    let names: Vec<_> = body["result"]["tools"]
        .as_array()
        .ok_or_else(|| anyhow!("no tools: {body}"))?
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["read_file"]);
    assert_eq!(o.counters, vec![(Counter::ListItemsHidden, 1)]);
    assert_eq!(o.logs.len(), 1, "the list line");
    Ok(())
}

#[test]
fn a_single_use_token_is_forwarded_once_across_exchanges() -> Result<()> {
    let e = engine()?;
    let store = MemoryStore::new();
    let token = bearer(
        json!({"iss": AGENTS, "sub": "agent-7", "scope": "orders:read",
                              "single_use": true, "jti": "x-once-1"}),
    )?;
    let run = || {
        get(
            &e,
            &store,
            "/orders/1",
            &[("authorization", token.as_bytes())],
        )
    };
    assert_eq!(run().next, Next::Forward);
    let replay = run();
    assert_eq!(status(&replay), Some(401));
    assert_eq!(replay.counters, vec![(Counter::Unauthenticated, 1)]);
    assert!(
        replay.headers.iter().all(|(_, v)| v.is_none()),
        "a refused request gets no identity headers: {:?}",
        replay.headers
    );
    Ok(())
}

#[test]
fn request_ids_come_from_the_proxy_or_are_made() {
    let fresh = || "made".to_string();
    assert_eq!(
        exchange::request_id(&headers(&[("x-request-id", b"abc")]), &fresh),
        "abc"
    );
    assert_eq!(
        exchange::request_id(&headers(&[("x-request-id", b"")]), &fresh),
        "made"
    );
    assert_eq!(exchange::request_id(&[], &fresh), "made");
    let o = exchange::unavailable("r");
    assert_eq!(status(&o), Some(503));
    assert_eq!(o.counters, vec![(Counter::Unavailable, 1)]);
}
